"""Messages as datasets give them, read into canonical messages.

A canonical message is {"role": "system" | "user" | "assistant" | "tool", "content": str}, plus,
only where the source gives them:
  "weight": 0     an assistant turn that is context, never a training target (OpenAI
                  fine-tuning's per-message weight; 1, the default, is not written)
  "tool_calls"    on an assistant turn: [{"type": "function", "function": {"name", "arguments"}}]
  "tool_call_id", "name"   on a tool turn (the result of a call)

Read here: OpenAI messages (content a string or a list of text parts), ShareGPT items (`from`/
`value`, including LLaMA-Factory's `function_call` and `observation` turns) and transcripts, one
string with speaker labels ("\\n\\nHuman: ... \\n\\nAssistant: ...", "### Human:", "USER: ...
ASSISTANT: ..."). A role is never guessed: an unknown speaker rejects the row.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pedigree.data.readers import RowError

ROLES = ("system", "user", "assistant", "tool")
OPENAI_ROLES = {role: role for role in ROLES}
# ShareGPT `from` values; `function_call` is an assistant turn calling a tool (its value the
# call as JSON), `observation` the tool's result (LLaMA-Factory's ShareGPT tool format).
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant",
    "function_call": "assistant",
    "tool": "tool", "observation": "tool", "function_response": "tool",
}
# Speaker labels of transcripts: at the start of a line (Anthropic HH: "\n\nHuman:"), after
# "###" anywhere (Guanaco: "...### Assistant:"), or, for the upper-case Vicuna labels, after
# white space or an end-of-sequence marker within a line ("... USER: hi ASSISTANT: hello</s>").
_SPEAKERS = {"human": "user", "user": "user", "assistant": "assistant", "system": "system"}
_LABEL = re.compile(
    r"(?:^|\n)[ \t]*(?P<line>Human|User|Assistant|System)[ \t]*:"
    r"|###[ \t]*(?P<hash>Human|User|Assistant|System)[ \t]*:"
    r"|(?:^|(?<=\s)|(?<=</s>))(?P<inline>USER|ASSISTANT|SYSTEM):")
_EOS_MARKS = ("</s>", "<|endoftext|>")  # a transcript's turn may end with its model's eos


def parse_messages(value: Any, field: str) -> list[dict[str, Any]]:
    """Messages in either style as canonical messages: OpenAI (role/content) or ShareGPT
    (from/value, roles by SHAREGPT_ROLES); the first message decides the style."""
    if not isinstance(value, list):
        raise RowError("wrong_type", f"field {field!r} must be a list of messages, "
                       f"not {type(value).__name__}")
    if not value:
        raise RowError("empty_content", f"field {field!r} is an empty list")
    read = _sharegpt_message if is_sharegpt(value) else _openai_message
    messages = [read(msg, f"{field}[{i}]") for i, msg in enumerate(value)]
    # An empty system turn (ShareGPT and Orca exports write one) says nothing: left out.
    return [m for m in messages if m["role"] != "system" or m["content"].strip()]


def is_sharegpt(value: Any) -> bool:
    """ShareGPT items name the speaker in `from` (a Parquet struct may have a null `role`)."""
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        return False
    return value[0].get("role") is None and value[0].get("from") is not None


def _role(msg: Any, where: str, key: str, table: dict[str, str]) -> str:
    if not isinstance(msg, dict):
        raise RowError("wrong_type", f"{where} must be an object with {key!r}, "
                       f"not {type(msg).__name__}")
    name = msg.get(key)
    role = table.get(name) if isinstance(name, str) else None
    if role is None:
        if name is None:
            raise RowError("missing_field", f"{where}.{key} is missing")
        raise RowError("unknown_role", f"{where}.{key}={name!r}; allowed: {', '.join(table)}")
    return role


def _openai_message(msg: Any, where: str) -> dict[str, Any]:
    role = _role(msg, where, "role", OPENAI_ROLES)
    out: dict[str, Any] = {"role": role}
    calls = msg.get("tool_calls") or None  # exports write [] for "no calls"
    if calls is not None:
        if role != "assistant":
            raise RowError("wrong_type", f"{where}.tool_calls on a {role} turn: only an "
                           "assistant turn calls tools")
        out["tool_calls"] = _tool_calls(calls, f"{where}.tool_calls")
    out["content"] = _content(msg.get("content"), f"{where}.content",
                              optional="tool_calls" in out or role == "system")
    if role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(msg.get(key), str) and msg[key]:
                out[key] = msg[key]
    _weight(msg, out, where)
    return out


def _sharegpt_message(msg: Any, where: str) -> dict[str, Any]:
    role = _role(msg, where, "from", SHAREGPT_ROLES)
    value = msg.get("value")
    if msg["from"] == "function_call":  # the value is the call: {"name", "arguments"} as JSON
        try:
            call = json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError as err:
            raise RowError("wrong_type", f"{where}.value: a function_call must be JSON "
                           f"({err.msg})") from None
        calls = call if isinstance(call, list) else [call]
        out = {"role": role, "content": "",
               "tool_calls": _tool_calls([{"type": "function", "function": c} for c in calls],
                                         f"{where}.value")}
    else:
        out = {"role": role, "content": _content(value, f"{where}.value",
                                                 optional=role == "system")}
    _weight(msg, out, where)
    return out


def _content(value: Any, where: str, optional: bool = False) -> str:
    """A string; or a list of text parts ([{"type": "text", "text": ...}], OpenAI), joined as
    they are (the API concatenates them). `optional`: may be empty (a turn that calls tools)."""
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise RowError("non_text_content", f"{where}[{i}] is not a text part "
                               f"({{'type': 'text', 'text': ...}}; got type {kind!r}): "
                               "only text is trained")
            texts.append(part["text"])
        value = "".join(texts)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise RowError("missing_field" if value is None else "wrong_type",
                       f"{where} must be a string" +
                       ("" if value is None else f", not {type(value).__name__}"))
    if not optional and (not value or value.isspace()):
        raise RowError("empty_content", f"{where} is empty")
    return value


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list) or not calls:
        raise RowError("wrong_type", f"{where} must be a non-empty list of calls")
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise RowError("wrong_type", f"{where}[{i}] must be {{'type': 'function', "
                           "'function': {'name': ..., 'arguments': ...}}")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):  # OpenAI sends them as a JSON string; templates want data
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as err:
                raise RowError("wrong_type", f"{where}[{i}].function.arguments: not JSON "
                               f"({err.msg})") from None
        entry: dict[str, Any] = {"type": "function",
                                 "function": {"name": name, "arguments": arguments}}
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        out.append(entry)
    return out


def _weight(msg: dict[str, Any], out: dict[str, Any], where: str) -> None:
    """An assistant turn's `weight`: 0 marks it context (kept as "weight": 0), 1 a target. Other
    turns are never targets, so their weight (SlimOrca gives every turn one) changes nothing."""
    weight = msg.get("weight")
    if out["role"] != "assistant" or weight is None or weight is True or weight == 1:
        return
    if weight is False or (isinstance(weight, int | float) and weight == 0):
        out["weight"] = 0
        return
    raise RowError("wrong_type", f"{where}.weight={weight!r}: an assistant turn's weight is 0 "
                   "(context) or 1 (target)")


def parse_transcript(text: str, field: str) -> list[dict[str, Any]]:
    """A conversation written as one string with speaker labels, as canonical messages. Text
    before the first label is a system turn (Vicuna's "A chat between ...").

    The first label fixes the transcript's style, and only labels of that style split it: the
    kind (at a line start, after "###", or Vicuna's upper case), the word for the user (Human
    or User), and, when the first label follows a blank line (Anthropic HH), a blank line
    before every label. So an answer that quotes "User: ..." on a line of its own stays one
    answer. The turns must then alternate user/assistant (after a system turn): anything else
    is rejected as `ambiguous_transcript` rather than guessed. RowError `no_speaker_labels`
    unless there is a user and an assistant label."""
    labels = _style_labels(text)
    roles = [_SPEAKERS[_word(m).lower()] for m in labels]
    if "user" not in roles or "assistant" not in roles:
        raise RowError("no_speaker_labels", f"field {field!r} is a string without the speaker "
                       "labels of a transcript (Human:/Assistant:, USER:/ASSISTANT:)")
    messages = []
    preamble = text[:labels[0].start()].strip()
    if preamble:
        messages.append({"role": "system", "content": preamble})
    ends = [m.start() for m in labels[1:]] + [len(text)]
    for role, label, end in zip(roles, labels, ends, strict=True):
        content = text[label.end():end].strip()
        for mark in _EOS_MARKS:
            content = content.removesuffix(mark).rstrip()
        if not content:
            raise RowError("empty_content", f"field {field!r}: an empty {role} turn at "
                           f"character {label.start()}")
        messages.append({"role": role, "content": content})
    turns = [m["role"] for m in messages[1 if messages[0]["role"] == "system" else 0:]]
    if turns != (["user", "assistant"] * len(turns))[:len(turns)]:
        raise RowError("ambiguous_transcript", f"field {field!r}: its speaker labels do not "
                       f"alternate user/assistant ({' '.join(turns[:8])}...): a label inside a "
                       "turn's text cannot be told from a new turn")
    return messages


def _word(label: re.Match) -> str:
    return label["line"] or label["hash"] or label["inline"]


def _style_labels(text: str) -> list[re.Match]:
    """The labels of `text` in the style of its first label (see parse_transcript)."""
    found = list(_LABEL.finditer(text))
    if not found:
        return []
    first = found[0]
    kind = next(k for k in ("line", "hash", "inline") if first[k])
    blank = kind == "line" and text[:first.start() + 1].endswith("\n\n")
    user_word = next((_word(m) for m in found if m[kind] and _SPEAKERS[_word(m).lower()] == "user"),
                     None)

    def same_style(m: re.Match) -> bool:
        word = m[kind]
        if not word or (_SPEAKERS[word.lower()] == "user" and word != user_word):
            return False
        return not blank or text[:m.start() + 1].endswith("\n\n")

    return [m for m in found if same_style(m)]


def looks_like_transcript(value: Any) -> bool:
    return isinstance(value, str) and _LABEL.search(value) is not None

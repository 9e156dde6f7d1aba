"""Normalising raw rows (as `readers` gives them) to the canonical schema.

Canonical SFT row:        {"id", "prompt": [messages], "completion": [messages], "source", "meta"}
Canonical preference row: {"id", "prompt": [messages], "chosen": [messages],
                           "rejected": [messages], "source", "meta"}

This is TRL's conversational prompt/completion and preference format. A row id is the sha256 of
the normalised row's content (not of its source or position), so the same example from two files
has the same id.

Formats (`normalise`), with the fields each reads; a field is present when it is not null:
  alpaca             instruction, input (optional), output, system (optional)
  prompt_completion  prompt, completion: strings or lists of messages
  messages           messages: [{"role", "content"}] (OpenAI style)
  sharegpt           conversations, or messages, whose items are [{"from", "value"}]
  preference         prompt, chosen, rejected: strings or lists of messages; or no prompt and
                     chosen/rejected full conversations sharing the prompt turns
A field that must be a list (messages, conversations; chosen/rejected without a prompt) may also
be a string holding that list as JSON: CSV has no lists. A string is never parsed where it is a
valid value as it is (prompt, completion, chosen, rejected with a prompt): an answer such as
"[1, 2, 3]" stays text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from pedigree.data.readers import RowError
from pedigree.errors import PedigreeError
from pedigree.lineage import canonical_json, sha256_bytes

ROLES = ("system", "user", "assistant")
FORMATS = ("alpaca", "prompt_completion", "messages", "sharegpt", "preference")
# The field names `columns` may map to (canonical name -> the source's field name).
CANONICAL_FIELDS = ("instruction", "input", "output", "system", "prompt", "completion",
                    "messages", "chosen", "rejected")
# ShareGPT `from` values. Only these: a tool or function turn has no place in the canonical
# schema, and guessing the role of an unknown speaker would train on mislabelled turns.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "bot": "assistant", "model": "assistant",
}
OPENAI_ROLES = {role: role for role in ROLES}
_FORMAT_FIELDS = ("alpaca (instruction, output), prompt_completion (prompt, completion), "
                  "messages (messages), sharegpt (conversations), preference (chosen, rejected)")


class ColumnsError(PedigreeError, ValueError):
    """A column mapping that cannot be right (a config or command line error, not a row's)."""


class Normalised(NamedTuple):
    kind: str  # "sft" or "preference"
    format: str  # the format the row was read as, one of FORMATS
    content: dict[str, Any]  # prompt/completion or prompt/chosen/rejected, as lists of messages


# ----------------------------------------------------------------------------- columns
def parse_columns(spec: str) -> dict[str, str]:
    """The command line's column mapping, "prompt=question,completion=answer" (canonical=source),
    as a dict; ColumnsError (a ValueError) for bad syntax or an unknown canonical name."""
    columns: dict[str, str] = {}
    for item in spec.split(","):
        canonical, sep, source = (part.strip() for part in item.partition("="))
        if not sep or not canonical or not source:
            raise ColumnsError(f"{item.strip()!r} is not canonical=source; "
                               "example: prompt=question,completion=answer")
        if canonical in columns:
            raise ColumnsError(f"{canonical!r} is mapped twice")
        columns[canonical] = source
    check_columns(columns)
    return columns


def check_columns(columns: Mapping[str, str]) -> None:
    """ColumnsError unless every key of `columns` is a canonical field name."""
    for canonical, source in columns.items():
        if canonical not in CANONICAL_FIELDS:
            hint = (f" (the canonical name comes first: {source}={canonical}?)"
                    if source in CANONICAL_FIELDS else "")
            raise ColumnsError(f"{canonical!r} is not a canonical field{hint}; "
                               f"allowed: {', '.join(CANONICAL_FIELDS)}")


def _apply_columns(row: dict[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
    """The row with each source field renamed to its canonical name. The source fields are
    removed, so that they cannot decide the detected format (e.g. `instruction` mapped to
    `prompt` must not make the row alpaca)."""
    mapped = {}
    for canonical, source in columns.items():
        if canonical not in CANONICAL_FIELDS:
            check_columns(columns)  # raises, naming the allowed fields
        if source not in row:
            raise RowError("missing_field", f"field {source!r} is missing (columns: "
                           f"{canonical}={source}); fields: {sorted(row)}")
        mapped[canonical] = row[source]
    sources = columns.values()
    out = {k: v for k, v in row.items() if k not in sources}
    out.update(mapped)
    return out


# ----------------------------------------------------------------------------- formats
def detect_format(row: dict[str, Any]) -> str:
    """The format of a row, one of FORMATS, from the fields it has (null fields do not count)."""
    get = row.get
    if get("messages") is not None:
        return "sharegpt" if _is_sharegpt(_maybe_json(get("messages"))) else "messages"
    if get("conversations") is not None:
        return "sharegpt"
    if get("chosen") is not None or get("rejected") is not None:
        return "preference"
    if get("instruction") is not None:
        return "alpaca"
    if get("prompt") is not None and get("completion") is not None:
        return "prompt_completion"
    raise RowError("unknown_format",
                   f"fields {sorted(row)} match no supported format; supported: {_FORMAT_FIELDS}")


def normalise(row: Any, fmt: str, columns: Mapping[str, str] | None = None) -> Normalised:
    """The canonical content of one row read as `fmt` (a name in FORMATS, or "auto" to detect it
    per row), after renaming its fields by `columns` (canonical name -> source field name).
    Raises RowError for a row that cannot be used."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"expected a JSON object, got {type(row).__name__}")
    if not columns:
        return _normalise(row, fmt)
    try:
        return _normalise(_apply_columns(row, columns), fmt)
    except RowError as err:
        if "(columns:" in err.detail:
            raise
        # Field names in the detail are canonical names: say which source fields they were.
        mapping = ", ".join(f"{c}={s}" for c, s in columns.items())
        raise RowError(err.reason, f"{err.detail} (columns: {mapping})") from None


def _normalise(row: dict[str, Any], fmt: str) -> Normalised:
    if fmt == "auto":
        fmt = detect_format(row)
    if fmt == "alpaca":
        return _alpaca(row)
    if fmt == "prompt_completion":
        return _prompt_completion(row)
    if fmt in ("messages", "sharegpt"):  # either style under either name; the result says which
        return _conversation(row)
    if fmt == "preference":
        return _preference(row)
    raise RowError("unknown_format", f"format {fmt!r}; supported: {FORMATS}")


def _alpaca(row: dict[str, Any]) -> Normalised:
    # The rule sample.py's `_user_prompt` repeats; changing it changes every alpaca row's id.
    instruction = _text(row, "instruction")
    input_text = _text(row, "input", required=False)
    output = _text(row, "output")
    system = _text(row, "system", required=False)
    user = f"{instruction}\n\n{input_text}" if input_text and not input_text.isspace() else instruction
    prompt = [{"role": "user", "content": user}]
    if system and not system.isspace():  # an empty system cell (CSV) means none
        prompt.insert(0, {"role": "system", "content": system})
    return Normalised("sft", "alpaca", {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": output}],
    })


def _prompt_completion(row: dict[str, Any]) -> Normalised:
    prompt = _as_messages(row.get("prompt"), "prompt", "user")
    completion = _as_messages(row.get("completion"), "completion", "assistant")
    _ends_with_answer(completion, "completion")
    return Normalised("sft", "prompt_completion", {"prompt": prompt, "completion": completion})


def _conversation(row: dict[str, Any]) -> Normalised:
    """OpenAI `messages` or ShareGPT `conversations`/`messages`: the last turn is the completion,
    the turns before it the prompt."""
    field = "messages" if row.get("messages") is not None else "conversations"
    value = row.get(field)
    if value is None:
        raise RowError("missing_field", "field 'messages' (or 'conversations') is missing")
    value = _json_list(value, field)
    messages = _messages(value, field)
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise RowError("no_final_assistant", f"{field}[{last}] is a {messages[last]['role']} "
                       "turn: the conversation must end with an assistant turn")
    _has_user_turn(messages[:last], f"{field}[:{last}]")
    fmt = "sharegpt" if field == "conversations" or _is_sharegpt(value) else "messages"
    return Normalised("sft", fmt, {"prompt": messages[:last], "completion": messages[last:]})


def _preference(row: dict[str, Any]) -> Normalised:
    if row.get("prompt") is None:
        return _implicit_preference(row)
    prompt = _as_messages(row.get("prompt"), "prompt", "user")
    chosen = _as_messages(row.get("chosen"), "chosen", "assistant")
    rejected = _as_messages(row.get("rejected"), "rejected", "assistant")
    _ends_with_answer(chosen, "chosen")
    _ends_with_answer(rejected, "rejected")
    if chosen == rejected:
        raise RowError("chosen_equals_rejected", "chosen and rejected are identical")
    return Normalised("preference", "preference",
                      {"prompt": prompt, "chosen": chosen, "rejected": rejected})


def _implicit_preference(row: dict[str, Any]) -> Normalised:
    """No prompt field: chosen and rejected are whole conversations, and the prompt is the turns
    they share from the start (as TRL's extract_prompt); the rest of each is its answer."""
    chosen, rejected = (_full_conversation(row, name) for name in ("chosen", "rejected"))
    if chosen == rejected:
        raise RowError("chosen_equals_rejected", "chosen and rejected are identical")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise RowError("no_prompt", "no 'prompt' field, and chosen and rejected share no first "
                       "turn to take as the prompt")
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if len(messages) == shared:
            raise RowError("empty_content", f"{name} has no turn after the {shared} turn(s) it "
                           "shares with the other answer (the prompt)")
        if messages[shared]["role"] != "assistant":
            raise RowError("no_prompt", f"{name}[{shared}] is a {messages[shared]['role']} turn: "
                           f"after the shared prompt ({shared} turns) each answer must start "
                           "with an assistant turn")
        _ends_with_answer(messages[shared:], name)
    _has_user_turn(chosen[:shared], f"chosen[:{shared}]")
    return Normalised("preference", "preference", {
        "prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]})


def _full_conversation(row: dict[str, Any], field: str) -> list[dict[str, str]]:
    value = row.get(field)
    if value is None:
        raise RowError("missing_field", f"field {field!r} is missing")
    if isinstance(value, str) and not value.lstrip().startswith("["):
        raise RowError("missing_field", "field 'prompt' is missing; without it, chosen and "
                       "rejected must be whole conversations (lists of messages)")
    return _messages(_json_list(value, field), field)


# ----------------------------------------------------------------------------- fields
def _text(row: dict[str, Any], field: str, *, required: bool = True) -> str:
    value = row.get(field)
    if value is None:
        if required:
            raise RowError("missing_field", f"field {field!r} is missing")
        return ""
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field {field!r} must be a string, not {type(value).__name__}")
    if required and (not value or value.isspace()):
        raise RowError("empty_content", f"field {field!r} is empty")
    return value


def _as_messages(value: Any, field: str, role: str) -> list[dict[str, str]]:
    """A string is one message of `role`; a list must be valid messages."""
    if isinstance(value, str):
        if not value or value.isspace():
            raise RowError("empty_content", f"field {field!r} is empty")
        return [{"role": role, "content": value}]
    if value is None:
        raise RowError("missing_field", f"field {field!r} is missing")
    return _messages(value, field)


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    """Messages in either style, as [{"role", "content"}]: OpenAI (role/content) or ShareGPT
    (from/value, roles by SHAREGPT_ROLES); the first message decides the style."""
    if not isinstance(value, list):
        raise RowError("wrong_type", f"field {field!r} must be a list of messages, "
                       f"not {type(value).__name__}")
    if not value:
        raise RowError("empty_content", f"field {field!r} is an empty list")
    if _is_sharegpt(value):
        role_key, content_key, table = "from", "value", SHAREGPT_ROLES
    else:
        role_key, content_key, table = "role", "content", OPENAI_ROLES
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RowError("wrong_type", f"{field}[{i}] must be an object with {role_key!r} and "
                           f"{content_key!r}, not {type(msg).__name__}")
        name = msg.get(role_key)
        role = table.get(name) if isinstance(name, str) else None
        if role is None:
            if name is None:
                raise RowError("missing_field", f"{field}[{i}].{role_key} is missing")
            raise RowError("unknown_role", f"{field}[{i}].{role_key}={name!r}; "
                           f"allowed: {', '.join(table)}")
        content = msg.get(content_key)
        if not isinstance(content, str):
            raise RowError("missing_field" if content is None else "wrong_type",
                           f"{field}[{i}].{content_key} must be a string"
                           + ("" if content is None else f", not {type(content).__name__}"))
        if not content or content.isspace():
            raise RowError("empty_content", f"{field}[{i}].{content_key} is empty")
        out.append({"role": role, "content": content})
    return out


def _is_sharegpt(value: Any) -> bool:
    """ShareGPT items name the speaker in `from` (a Parquet struct may have a null `role`)."""
    if not isinstance(value, list) or not value or not isinstance(value[0], dict):
        return False
    return value[0].get("role") is None and value[0].get("from") is not None


def _maybe_json(value: Any) -> Any:
    """A string holding a JSON list (a CSV cell) as the list; anything else as it is."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _json_list(value: Any, field: str) -> Any:
    """`value`, or the list a string holds as JSON, for a field that must be a list."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise RowError("wrong_type", f"field {field!r} must be a list of messages; it is a "
                       f"string that is not JSON ({err.msg})") from None
    if not isinstance(parsed, list):
        raise RowError("wrong_type", f"field {field!r} must be a list of messages; it is a "
                       f"string holding a JSON {type(parsed).__name__}")
    return parsed


def _ends_with_answer(messages: list[dict[str, str]], field: str) -> None:
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise RowError("no_final_assistant", f"{field}[{last}] is a {messages[last]['role']} "
                       "turn: an answer must end with an assistant turn")


def _has_user_turn(prompt: list[dict[str, str]], where: str) -> None:
    # A prompt of system turns alone (or none) asks nothing: the answer would be learnt as what
    # to say unprompted.
    if not any(m["role"] == "user" for m in prompt):
        raise RowError("no_prompt", f"no user turn before the answer ({where})")


def row_id(content: dict[str, Any]) -> str:
    """Content hash of the normalised row (prompt/completion or prompt/chosen/rejected)."""
    return sha256_bytes(canonical_json(content).encode())

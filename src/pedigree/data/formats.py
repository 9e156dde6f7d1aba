"""Normalising raw rows (as `readers` gives them) to the canonical schema.

Canonical SFT row:        {"id", "prompt": [messages], "completion": [messages], "source", "meta"}
Canonical preference row: {"id", "prompt": [messages], "chosen": [messages],
                           "rejected": [messages], "source", "meta"}
Canonical unpaired row:   {"id", "prompt": [messages], "completion": [messages], "label": bool,
                           "source", "meta"}  (KTO: label true is a desirable answer)
Canonical task row:       {"id", "prompt": [messages], "match": str, "reference": str (when
                           given), "schema": {...} (when given), "source", "meta"}  (GRPO)
Canonical text row:       {"id", "text": str, "source", "meta"}  (a plain document: continued
                           pretraining)

This is TRL's conversational prompt/completion, preference and unpaired preference format. A
row id is the sha256 of the normalised row's content (not of its source or position), so the
same example from two files has the same id.

Formats (`normalise_row`), with the fields each reads; a field is present when it is not null:
  alpaca             instruction, input (optional), output, system (optional)
  prompt_completion  prompt, completion: strings or lists of messages
  messages           messages: [{"role", "content"}] (OpenAI style)
  sharegpt           conversations, or messages, whose items are [{"from", "value"}]
  preference         prompt, chosen, rejected: strings or lists of messages; or no prompt and
                     chosen/rejected full conversations sharing the prompt turns
  unpaired           prompt, completion (as prompt_completion), label: true/false (also the
                     strings "true"/"false"/"1"/"0" and the integers 1/0: CSV has no booleans)
  task               prompt (string or messages), match (one of the eval scorers' matchers),
                     reference (a string; not needed for json_valid) and/or schema (a JSON
                     Schema), as data/eval/task.jsonl's rows and held to the same rules
  text               text: one plain document (never detected: a `.txt` source, one document
                     a line, is read so under auto; a JSONL source must say `format: text`)
A field that must be a list (messages, conversations; chosen/rejected without a prompt) may also
be a string holding that list as JSON: CSV has no lists. A string is never parsed where it is a
valid value as it is (prompt, completion, chosen, rejected with a prompt): an answer such as
"[1, 2, 3]" stays text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from pedigree import data_layouts as layouts
from pedigree.data.messages import (
    is_sharegpt,
    looks_like_transcript,
    parse_messages,
    parse_transcript,
)
from pedigree.data.readers import RowError
from pedigree.data_layouts import (  # noqa: F401 - also this module's interface
    CANONICAL_FIELDS,
    FORMATS,
    ColumnsError,
    check_columns,
    check_format,
    parse_columns,
)
from pedigree.evals.scorers import task_row_problem
from pedigree.lineage import canonical_json, sha256_bytes


class Normalised(NamedTuple):
    kind: str  # "sft", "preference", "unpaired", "task" or "text" (data_layouts.CURATED_FILES)
    format: str  # the layout the row was read as (layouts.LAYOUTS), or its format (FORMATS)
    # prompt/completion or prompt/chosen/rejected as lists of messages; prompt/completion and a
    # label; a prompt and its check (match, reference, schema); or a document's text
    content: dict[str, Any]


# ----------------------------------------------------------------------------- columns
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
    """The layout `format: auto` reads a row as (its name), from the fields it has."""
    layout = layouts.detect(row)
    if layout is None:
        raise RowError("unknown_format", f"fields {sorted(row)} match no supported layout "
                       f"({', '.join(layouts.BY_NAME)}; their fields are in the README's table)")
    if layout.name == "messages" and is_sharegpt(_maybe_json(row["messages"])):
        return "sharegpt"
    return layout.name


def normalise_row(row: Any, fmt: str, columns: Mapping[str, str] | None = None) -> Normalised:
    """The canonical content of one row read as `fmt` ("auto" to detect its layout per row, a
    layout's name, or a format of FORMATS), after renaming its fields by `columns` (canonical
    name -> source field name). Raises RowError for a row that cannot be used."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"expected a JSON object, got {type(row).__name__}")
    if not columns:
        return _normalise_row(row, fmt)
    try:
        return _normalise_row(_apply_columns(row, columns), fmt)
    except RowError as err:
        if "(columns:" in err.detail:
            raise
        # Field names in the detail are canonical names: say which source fields they were.
        mapping = ", ".join(f"{c}={s}" for c, s in columns.items())
        raise RowError(err.reason, f"{err.detail} (columns: {mapping})") from None


def _normalise_row(row: dict[str, Any], fmt: str) -> Normalised:
    name = fmt
    if fmt == "auto":
        name = detect_format(row)
    if name in layouts.BY_NAME:
        layout = layouts.BY_NAME[name]
        row, fmt = layouts.apply(row, layout), layout.format
    reader = _READERS.get(fmt)
    if reader is None:
        raise RowError("unknown_format", f"format {fmt!r}; supported: {FORMATS}")
    result = reader(row)
    # A layout that is a format by another name (dolly) is reported by its name; the format
    # readers say themselves which style they found (messages or sharegpt).
    return result if name == fmt else result._replace(format=name)


def _alpaca(row: dict[str, Any]) -> Normalised:
    # The rule sample.py's `_user_prompt` repeats; changing it changes every alpaca row's id.
    instruction = _text(row, "instruction")
    input_text = _text(row, "input", required=False)
    output = _text(row, "output")
    user = f"{instruction}\n\n{input_text}" if input_text and not input_text.isspace() else instruction
    return Normalised("sft", "alpaca", {
        "prompt": _with_system(row, [{"role": "user", "content": user}]),
        "completion": [{"role": "assistant", "content": output}],
    })


def _prompt_completion(row: dict[str, Any]) -> Normalised:
    prompt = _with_system(row, _as_messages(row.get("prompt"), "prompt", "user"))
    completion = _as_messages(row.get("completion"), "completion", "assistant")
    _ends_with_answer(completion, "completion")
    return Normalised("sft", "prompt_completion", {"prompt": prompt, "completion": completion})


_LABELS = {"true": True, "1": True, "false": False, "0": False}


def _unpaired(row: dict[str, Any]) -> Normalised:
    """KTO's unpaired preference: a prompt, one answer and whether it is desirable."""
    content = _prompt_completion(row).content
    label = row.get("label")
    if label is None:
        raise RowError("missing_field", "field 'label' is missing")
    if isinstance(label, str):
        label = _LABELS.get(label.strip().lower(), label)
    elif type(label) is int and label in (0, 1):  # not a float, and a bool is already one
        label = bool(label)
    if not isinstance(label, bool):
        raise RowError("wrong_type", "field 'label' must be true or false (or \"true\", "
                       f"\"false\", 1, 0), not {_shown(row['label'])}")
    return Normalised("unpaired", "unpaired", {**content, "label": label})


def _task(row: dict[str, Any]) -> Normalised:
    """A prompt and the check its answers are rewarded by (GRPO), in the fields of the eval's
    task rows, checked by the same rules (`scorers.task_row_problem`)."""
    prompt = _with_system(row, _as_messages(row.get("prompt"), "prompt", "user"))
    _has_user_turn(prompt, "prompt")
    if prompt[-1]["role"] == "assistant":
        raise RowError("no_prompt", f"prompt[{len(prompt) - 1}] is an assistant turn: a task's "
                       "prompt ends with what the answer responds to")
    if row.get("match") is None:
        raise RowError("missing_field", "field 'match' is missing")
    # An empty CSV cell means none; a schema in a CSV cell is JSON text (CSV has no objects).
    check = {k: row[k] for k in ("match", "reference", "schema")
             if row.get(k) is not None and not (k != "match" and _blank(row[k]))}
    if isinstance(check.get("schema"), str):
        try:
            check["schema"] = json.loads(check["schema"])
        except (ValueError, RecursionError):
            raise RowError("bad_task", "schema: a JSON Schema object is required; it is a "
                           "string that is not JSON") from None
    problem = task_row_problem(check)  # starts with the field's name
    if problem is not None:
        raise RowError("bad_task", problem if len(problem) <= 300 else problem[:297] + "...")
    return Normalised("task", "task", {"prompt": prompt, **check})


def _document(row: dict[str, Any]) -> Normalised:
    """`text`: one plain document, learnt whole (continued pretraining): no prompt, no answer."""
    return Normalised("text", "text", {"text": _text(row, "text")})


def _conversation(row: dict[str, Any]) -> Normalised:
    """OpenAI `messages` or ShareGPT `conversations`/`messages`."""
    field = "messages" if row.get("messages") is not None else "conversations"
    value = row.get(field)
    if value is None:
        raise RowError("missing_field", "field 'messages' (or 'conversations') is missing")
    value = _json_list(value, field)
    fmt = "sharegpt" if field == "conversations" or is_sharegpt(value) else "messages"
    return _split_conversation(parse_messages(value, field), field, fmt)


def _transcript(row: dict[str, Any]) -> Normalised:
    """`text`: a whole conversation as one string with speaker labels."""
    text = _text(row, "text")
    return _split_conversation(parse_transcript(text, "text"), "text", "transcript")


def _split_conversation(messages: list[dict[str, Any]], field: str, fmt: str) -> Normalised:
    """The last assistant turn that is a target (weight not 0) is the completion, the turns
    before it the prompt. Turns after it (weight-0 assistant turns and what they answer) are
    neither targets nor context for one, so they are left out; a row with no target is an
    error."""
    if messages[-1]["role"] != "assistant":
        raise RowError("no_final_assistant", f"{field}[{len(messages) - 1}] is a "
                       f"{messages[-1]['role']} turn: the conversation must end with an "
                       "assistant turn")
    targets = [i for i, m in enumerate(messages) if m["role"] == "assistant" and "weight" not in m]
    if not targets:
        raise RowError("no_target", f"{field}: every assistant turn has weight 0: nothing to learn")
    last = targets[-1]
    _has_user_turn(messages[:last], f"{field}[:{last}]")
    return Normalised("sft", fmt, {"prompt": messages[:last], "completion": messages[last:last + 1]})


def _preference(row: dict[str, Any]) -> Normalised:
    if row.get("prompt") is None:
        return _implicit_preference(row)
    prompt = _with_system(row, _as_messages(row.get("prompt"), "prompt", "user"))
    chosen = _answer(row, "chosen", prompt)
    rejected = _answer(row, "rejected", prompt)
    if chosen == rejected:
        raise RowError("chosen_equals_rejected", "chosen and rejected are identical")
    return Normalised("preference", "preference",
                      {"prompt": prompt, "chosen": chosen, "rejected": rejected})


def _answer(row: dict[str, Any], field: str, prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A preference answer given beside a prompt. A list that starts with the prompt's turns
    (UltraFeedback's chosen/rejected are whole conversations) is the rest of it."""
    messages = _as_messages(row.get(field), field, "assistant")
    if messages[0]["role"] != "assistant":
        user_turns = [m for m in prompt if m["role"] != "system"]
        for head in (prompt, user_turns):
            if messages[:len(head)] == head and len(messages) > len(head):
                messages = messages[len(head):]
                break
        else:
            raise RowError("no_prompt", f"{field} starts with a {messages[0]['role']} turn that "
                           "is not the row's prompt: an answer must be assistant turns, or the "
                           "prompt's turns followed by them")
    _ends_with_answer(messages, field)
    return messages


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
    prompt = _with_system(row, chosen[:shared])
    return Normalised("preference", "preference", {
        "prompt": prompt, "chosen": chosen[shared:], "rejected": rejected[shared:]})


def _full_conversation(row: dict[str, Any], field: str) -> list[dict[str, Any]]:
    value = row.get(field)
    if value is None:
        raise RowError("missing_field", f"field {field!r} is missing")
    if isinstance(value, str) and not value.lstrip().startswith("["):
        if looks_like_transcript(value):  # Anthropic HH: "\n\nHuman: ...\n\nAssistant: ..."
            return parse_transcript(value, field)
        raise RowError("missing_field", "field 'prompt' is missing; without it, chosen and "
                       "rejected must be whole conversations (lists of messages, or transcripts "
                       "with speaker labels)")
    return parse_messages(_json_list(value, field), field)


_READERS = {"alpaca": _alpaca, "prompt_completion": _prompt_completion,
            "messages": _conversation, "sharegpt": _conversation,  # either style, either name
            "preference": _preference, "unpaired": _unpaired, "task": _task,
            "transcript": _transcript, "text": _document}


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


def _with_system(row: dict[str, Any], prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt with the row's `system` field as its first turn, unless it has one already
    or the field is empty (an empty CSV cell means none)."""
    system = _text(row, "system", required=False)
    if not system or system.isspace() or prompt[0]["role"] == "system":
        return prompt
    return [{"role": "system", "content": system}, *prompt]


def _blank(value: Any) -> bool:
    return isinstance(value, str) and (not value or value.isspace())


def _shown(value: Any) -> str:
    """A value as an error detail shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _as_messages(value: Any, field: str, role: str) -> list[dict[str, Any]]:
    """A string is one message of `role`; a list must be valid messages."""
    if isinstance(value, str):
        if not value or value.isspace():
            raise RowError("empty_content", f"field {field!r} is empty")
        return [{"role": role, "content": value}]
    if value is None:
        raise RowError("missing_field", f"field {field!r} is missing")
    return parse_messages(value, field)


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


def _ends_with_answer(messages: list[dict[str, Any]], field: str) -> None:
    last = len(messages) - 1
    if messages[last]["role"] != "assistant":
        raise RowError("no_final_assistant", f"{field}[{last}] is a {messages[last]['role']} "
                       "turn: an answer must end with an assistant turn")


def _has_user_turn(prompt: list[dict[str, Any]], where: str) -> None:
    # A prompt of system turns alone (or none) asks nothing: the answer would be learnt as what
    # to say unprompted.
    if not any(m["role"] == "user" for m in prompt):
        raise RowError("no_prompt", f"no user turn before the answer ({where})")


def row_id(content: dict[str, Any]) -> str:
    """Content hash of the normalised row (its `Normalised.content`)."""
    return sha256_bytes(canonical_json(content).encode())

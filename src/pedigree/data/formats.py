"""Reading raw rows and normalising them to the canonical schema.

Canonical SFT row:        {"id", "prompt": [messages], "completion": [messages], "source", "meta"}
Canonical preference row: {"id", "prompt": [messages], "chosen": [messages],
                           "rejected": [messages], "source", "meta"}

This is TRL's conversational prompt/completion and preference format. A row id is the sha256 of
the normalised row's content (not of its source or position), so the same example from two files
has the same id.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pedigree.errors import PedigreeError
from pedigree.lineage import canonical_json, sha256_bytes

ROLES = ("system", "user", "assistant")
FORMATS = ("alpaca", "prompt_completion", "messages", "preference")
READABLE_SUFFIXES = (".jsonl", ".json")


class InputError(PedigreeError, ValueError):
    """A whole input file that cannot be read."""


class RowError(ValueError):
    """A row that cannot be used; `reason` is a short code counted in the curation report."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class RawRow:
    file: str  # path relative to the repository root
    line: int  # 1-based line in a JSONL file, or 1-based item in a JSON array
    text: str  # the row as it appeared in the file (for the rejects file: nothing is lost)
    value: Any = None  # parsed JSON, or None when the row failed to parse
    error: RowError | None = None


def read_rows(path: Path, rel: str) -> Iterator[RawRow]:
    """Rows of a JSONL file (blank lines are not rows) or a JSON array file."""
    data = path.read_bytes()
    if path.suffix == ".json":
        yield from _read_json_array(data, rel)
        return
    for number, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as err:
            shown = raw_line.decode("utf-8", errors="replace")
            yield RawRow(rel, number, shown, error=RowError("invalid_utf8", str(err)))
            continue
        try:
            yield RawRow(rel, number, text, value=json.loads(text))
        except json.JSONDecodeError as err:
            yield RawRow(rel, number, text, error=RowError("invalid_json", err.msg))


def _read_json_array(data: bytes, rel: str) -> Iterator[RawRow]:
    try:
        items = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(
            f"{rel}: not a readable JSON array ({err}); use JSONL for partial data"
        ) from None
    if not isinstance(items, list):
        raise InputError(f"{rel}: a .json file must hold an array of rows")
    for number, item in enumerate(items, start=1):
        yield RawRow(rel, number, json.dumps(item, ensure_ascii=False), value=item)


def detect_format(row: dict[str, Any]) -> str:
    if "messages" in row:
        return "messages"
    if "chosen" in row or "rejected" in row:
        return "preference"
    if "instruction" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    raise RowError("unknown_format", f"fields {sorted(row)} match no supported format")


def _text(row: dict[str, Any], field: str, *, required: bool = True) -> str:
    if field not in row or row[field] is None:
        if required:
            raise RowError("missing_field", f"field {field!r} is missing")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise RowError("wrong_type", f"field {field!r} must be a string, not {type(value).__name__}")
    if required and not value.strip():
        raise RowError("empty_content", f"field {field!r} is empty")
    return value


def _messages(value: Any, field: str) -> list[dict[str, str]]:
    """A string becomes one user/assistant message later; a list must be valid messages."""
    if not isinstance(value, list) or not value:
        raise RowError("wrong_type", f"field {field!r} must be a non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RowError("wrong_type", f"{field}[{i}] must be an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise RowError("unknown_role", f"{field}[{i}].role={role!r}; allowed: {ROLES}")
        if not isinstance(content, str):
            raise RowError("missing_field" if content is None else "wrong_type",
                           f"{field}[{i}].content must be a string")
        if not content.strip():
            raise RowError("empty_content", f"{field}[{i}].content is empty")
        out.append({"role": role, "content": content})
    return out


def _as_messages(value: Any, field: str, role: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        if not value.strip():
            raise RowError("empty_content", f"field {field!r} is empty")
        return [{"role": role, "content": value}]
    if value is None:
        raise RowError("missing_field", f"field {field!r} is missing")
    return _messages(value, field)


def normalise(row: Any, fmt: str) -> tuple[str, dict[str, Any]]:
    """(kind, canonical row without id/source/meta); kind is "sft" or "preference"."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"expected a JSON object, got {type(row).__name__}")
    fmt = detect_format(row) if fmt == "auto" else fmt
    if fmt == "alpaca":
        instruction = _text(row, "instruction")
        input_text = _text(row, "input", required=False)
        prompt = f"{instruction}\n\n{input_text}" if input_text.strip() else instruction
        return "sft", {
            "prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": _text(row, "output")}],
        }
    if fmt == "prompt_completion":
        return "sft", {
            "prompt": _as_messages(row.get("prompt"), "prompt", "user"),
            "completion": _as_messages(row.get("completion"), "completion", "assistant"),
        }
    if fmt == "messages":
        messages = _messages(row.get("messages"), "messages")
        if messages[-1]["role"] != "assistant":
            raise RowError("no_final_assistant", "the conversation must end with an assistant turn")
        if len(messages) < 2:
            raise RowError("no_prompt", "the conversation has no turn before the answer")
        return "sft", {"prompt": messages[:-1], "completion": messages[-1:]}
    if fmt == "preference":
        pair = {
            "prompt": _as_messages(row.get("prompt"), "prompt", "user"),
            "chosen": _as_messages(row.get("chosen"), "chosen", "assistant"),
            "rejected": _as_messages(row.get("rejected"), "rejected", "assistant"),
        }
        if pair["chosen"] == pair["rejected"]:
            raise RowError("chosen_equals_rejected", "chosen and rejected are identical")
        return "preference", pair
    raise RowError("unknown_format", f"format {fmt!r}; supported: {FORMATS}")


def row_id(content: dict[str, Any]) -> str:
    """Content hash of the normalised row (prompt/completion or prompt/chosen/rejected)."""
    return sha256_bytes(canonical_json(content).encode())

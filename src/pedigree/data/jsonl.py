"""JSON Lines files, written with sorted keys so equal rows are equal bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# A UTF-16 surrogate alone (JSON's "\ud800"): not text, and it cannot be encoded as UTF-8.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(row: dict[str, Any]) -> str:
    """One line, UTF-8 text as is; a row holding a lone surrogate (from an input's escape)
    keeps it as its JSON escape instead of failing the whole write."""
    text = json.dumps(row, ensure_ascii=False, sort_keys=True)
    if not text.isascii() and LONE_SURROGATE.search(text):
        return json.dumps(row, sort_keys=True)
    return text


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(dumps(row) + "\n" for row in rows)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

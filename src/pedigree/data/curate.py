"""Curation: every raw row is validated, normalised, filtered and deduplicated, or quarantined.

Every input row ends in exactly one place: the curated SFT or preference file, or `rejects.jsonl`
with the file, line, reason, detail and the row as it was. The report's counts reconcile:
`input_rows == kept_rows + sum(dropped.values())`.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pedigree.config import CurateConfig
from pedigree.data.formats import READABLE_SUFFIXES, RawRow, RowError, normalise, read_rows, row_id
from pedigree.errors import MissingInputError

_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """The key exact duplicates are found on: Unicode NFKC, case-folded, white space collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text)).strip().casefold()


def _prompt_key(messages: list[dict[str, str]]) -> str:
    return normalise_text(" ".join(m["content"] for m in messages if m["role"] != "system"))


def _row_key(kind: str, content: dict[str, Any]) -> str:
    parts = [kind] + [
        normalise_text(" ".join(f"{m['role']}: {m['content']}" for m in content[k]))
        for k in sorted(content)
    ]
    return "\x1f".join(parts)


@dataclass
class CurationResult:
    sft: list[dict[str, Any]] = field(default_factory=list)
    preference: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    per_source: dict[str, Counter] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        dropped = Counter(r["reason"] for r in self.rejects)
        kept = len(self.sft) + len(self.preference)
        return {
            "input_rows": kept + len(self.rejects),
            "kept_rows": kept,
            "kept_sft_rows": len(self.sft),
            "kept_preference_rows": len(self.preference),
            "dropped": dict(sorted(dropped.items())),
            "sources": {src: dict(sorted(c.items())) for src, c in sorted(self.per_source.items())},
        }


def raw_files(raw_dir: Path) -> list[Path]:
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file() and p.suffix in READABLE_SUFFIXES)
    if not files:
        raise MissingInputError(f"{raw_dir}: no {'/'.join(READABLE_SUFFIXES)} files to curate")
    return files


def eval_prompt_keys(eval_dir: Path) -> set[str]:
    """Normalised prompts of every eval set: training on them would inflate the evals."""
    keys = set()
    for path in sorted(eval_dir.glob("*.jsonl")):
        for row in read_rows(path, path.as_posix()):
            if isinstance(row.value, dict) and isinstance(row.value.get("prompt"), str):
                keys.add(normalise_text(row.value["prompt"]))
    return keys


def curate(
    files: list[Path], cfg: CurateConfig, fmt: str = "auto", eval_keys: set[str] | None = None
) -> CurationResult:
    result = CurationResult()
    seen: dict[str, str] = {}  # duplicate key -> id of the first row kept with it
    placeholders = {normalise_text(p) for p in cfg.placeholder_outputs}
    eval_keys = eval_keys or set()
    for path in files:
        source = path.as_posix()
        counts = result.per_source.setdefault(source, Counter())
        for raw in read_rows(path, source):
            counts["input_rows"] += 1
            outcome = _curate_row(raw, fmt, cfg, placeholders, eval_keys, seen)
            if isinstance(outcome, dict):
                counts["rejected"] += 1
                result.rejects.append(outcome)
                continue
            kind, row = outcome
            counts[f"kept_{kind}"] += 1
            (result.sft if kind == "sft" else result.preference).append(row)
    return result


def _reject(raw: RawRow, reason: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"file": raw.file, "line": raw.line, "reason": reason, "detail": detail, **extra,
            "raw": raw.text}


def _curate_row(
    raw: RawRow,
    fmt: str,
    cfg: CurateConfig,
    placeholders: set[str],
    eval_keys: set[str],
    seen: dict[str, str],
) -> tuple[str, dict[str, Any]] | dict[str, Any]:
    """(kind, canonical row) when kept, else the reject record."""
    if raw.error:
        return _reject(raw, raw.error.reason, raw.error.detail)
    try:
        kind, content = normalise(raw.value, fmt)
    except RowError as err:
        return _reject(raw, err.reason, err.detail)
    answers = content["completion"] if kind == "sft" else content["chosen"]
    if normalise_text(answers[-1]["content"]) in placeholders:
        return _reject(raw, "placeholder_output", f"answer is {answers[-1]['content']!r}")
    n_chars = sum(len(m["content"]) for msgs in content.values() for m in msgs)
    if n_chars > cfg.max_chars:
        return _reject(raw, "too_long", f"{n_chars} characters > curate.max_chars={cfg.max_chars}")
    if cfg.decontaminate and _prompt_key(content["prompt"]) in eval_keys:
        return _reject(raw, "eval_contamination", "the prompt appears in an eval set")
    rid = row_id(content)
    key = _row_key(kind, content)
    if key in seen:
        return _reject(raw, "exact_duplicate", "same normalised text as a kept row",
                       duplicate_of=seen[key])
    seen[key] = rid
    meta = {"file": raw.file, "line": raw.line}
    if isinstance(raw.value.get("task"), str):
        meta["task"] = raw.value["task"]
    return kind, {"id": rid, **content, "source": Path(raw.file).name, "meta": meta}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]

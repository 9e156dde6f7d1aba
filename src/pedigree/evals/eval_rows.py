"""Reading the eval stage's own JSONL files (eval sets, the judge's calibration pairs, the
training split the prompted baselines draw from): one reader, errors naming file, line and field.
No torch here: the judge's module reads through it too."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pedigree.evals.scorers import EvalSetError


def read_rows(path: Path, required: tuple[str, ...],
              check: Callable[[dict[str, Any], str], None] | None = None) -> list[dict[str, Any]]:
    """JSONL rows, each checked for `required` string fields (and by `check`, given the row and
    its "file:line"); errors name file, line, field."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise EvalSetError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise EvalSetError(f"{path}:{number}: expected a JSON object")
            for field in required:
                if not isinstance(row.get(field), str) or not row[field]:
                    raise EvalSetError(f"{path}:{number}: {field}: a non-empty string is required")
            if check is not None:
                check(row, f"{path}:{number}")
            rows.append(row)
    ids = [r["id"] for r in rows if "id" in r]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise EvalSetError(f"{path}: id {dup!r} appears more than once")
    return rows

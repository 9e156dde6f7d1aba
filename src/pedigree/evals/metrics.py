"""Scoring generated answers against references.

`exact` compares the stripped strings; `numeric` the first number in the answer; `json` the parsed
values (key order and spacing do not matter). Every task row says which matcher applies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def exact_match(answer: str, reference: str) -> bool:
    return answer.strip() == reference.strip()


def numeric_match(answer: str, reference: str) -> bool:
    found = _NUMBER.search(answer)
    return found is not None and float(found.group()) == float(reference)


def json_match(answer: str, reference: str) -> bool:
    try:
        return json.loads(answer) == json.loads(reference)
    except json.JSONDecodeError:
        return False


MATCHERS: dict[str, Callable[[str, str], bool]] = {
    "exact": exact_match,
    "numeric": numeric_match,
    "json": json_match,
}


def score_task_rows(rows: list[dict], answers: list[str]) -> dict[str, float]:
    """Overall and per-task `exact_match` and `score` (the row's own matcher), as fractions."""
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} task rows but {len(answers)} answers")
    per_task: dict[str, list[tuple[bool, bool]]] = {}
    for row, answer in zip(rows, answers, strict=True):
        matcher = MATCHERS[row.get("match", "exact")]
        hit = (exact_match(answer, row["reference"]), matcher(answer, row["reference"]))
        per_task.setdefault(row["task"], []).append(hit)
    every = [h for hits in per_task.values() for h in hits]
    out = {
        "task_exact_match": sum(e for e, _ in every) / len(every),
        "task_score": sum(s for _, s in every) / len(every),
    }
    for task, hits in sorted(per_task.items()):
        out[f"task_score.{task}"] = sum(s for _, s in hits) / len(hits)
    return out

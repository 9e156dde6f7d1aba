"""Scoring generated answers against references, row by row.

Matchers (a task row names its own in `match`):
  exact       the stripped strings are equal
  normalised  equal after NFKC, case folding, dropping punctuation and collapsing whitespace
  numeric     the last number in the answer equals the reference (within 1e-6, relative): an
              instruct model restates the question ("99 + 56 = 155"), so the answer comes last,
              as in GSM8K's flexible extraction
  contains    the normalised reference appears, as whole words, in the normalised answer (an
              instruct model answers in a sentence: "The capital of France is Paris.")
  json        the answer parses and its value equals the reference's (key order, spacing and a
              Markdown code fence around it ignored)
  json_valid  the answer parses and validates against the row's `schema` (no reference needed)

Every task row also gets the exact and normalised match, and rows that expect JSON (`json`,
`json_valid`, or a row with a `schema`) get `json_valid`, so a model that learned the format but
not the values shows it.

Scores are kept per row (keyed by row id): an aggregate is their mean, and the gate needs the rows
to put a standard error on a difference between two models.
"""

from __future__ import annotations

import json
import math
import re
import string
import unicodedata
from collections.abc import Callable
from functools import cache
from typing import Any

from pedigree.errors import PedigreeError


class EvalSetError(PedigreeError, ValueError):
    """An eval file row that cannot be used; the message names the file, line and field."""


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match(answer: str, reference: str) -> bool:
    return answer.strip() == reference.strip()


def normalise_answer(text: str) -> str:
    """Lower-cased, NFKC, no ASCII punctuation, single spaces (SQuAD-style, without articles)."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().translate(_PUNCTUATION).split())


def normalised_match(answer: str, reference: str) -> bool:
    return normalise_answer(answer) == normalise_answer(reference)


def contains_match(answer: str, reference: str) -> bool:
    return f" {normalise_answer(reference)} " in f" {normalise_answer(answer)} "


def numeric_match(answer: str, reference: str) -> bool:
    found = _NUMBER.findall(answer)
    return bool(found) and math.isclose(float(found[-1]), float(reference),
                                        rel_tol=1e-6, abs_tol=1e-9)


_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?|\n?\s*```\s*$", re.IGNORECASE)


def _parse(answer: str) -> tuple[bool, Any]:
    """The answer as JSON: the whole of it, or the whole of it inside a Markdown code fence (an
    instruct model fences JSON, or closes a fence it never opened). Text around the JSON still
    fails: the task asks for the record, not a sentence about it."""
    for text in (answer, _FENCE.sub("", answer)):
        try:
            return True, json.loads(text)
        # ValueError: also an integer of too many digits; RecursionError: nesting too deep
        except (ValueError, RecursionError):
            continue
    return False, None


def json_match(answer: str, reference: str) -> bool:
    ok, value = _parse(answer)
    return ok and value == json.loads(reference)


@cache
def _validator(schema_json: str):
    from jsonschema import Draft202012Validator

    return Draft202012Validator(json.loads(schema_json))


def json_valid(answer: str, schema: dict[str, Any] | None = None) -> bool:
    ok, value = _parse(answer)
    if not ok or schema is None:
        return ok
    return _validator(json.dumps(schema, sort_keys=True)).is_valid(value)


MATCHERS: dict[str, Callable[[str, str], bool]] = {
    "exact": exact_match,
    "normalised": normalised_match,
    "numeric": numeric_match,
    "contains": contains_match,
    "json": json_match,
}
MATCH_NAMES = (*MATCHERS, "json_valid")


def task_row_problem(row: dict[str, Any]) -> str | None:
    """What makes a task row's check unusable, starting with the field's name (match, reference,
    schema); None when its answers can be scored. The eval's task rows and curated GRPO task rows
    (`formats`) are held to these same rules; `match` defaults to exact."""
    match = row.get("match", "exact")
    if match not in MATCH_NAMES:
        return f"match={match!r}: expected one of {', '.join(MATCH_NAMES)}"
    reference = row.get("reference")
    if match != "json_valid" and not isinstance(reference, str):
        return f"reference: a string is required for match={match!r}"
    if reference is not None and not isinstance(reference, str):
        return f"reference: must be a string, not {type(reference).__name__}"
    if match == "numeric":
        try:
            float(reference)
        except ValueError:
            return f"reference={reference!r} is not a number (match=numeric)"
    if match == "json" and not _parse(reference)[0]:
        return "reference is not valid JSON (match=json)"
    schema = row.get("schema")
    if schema is not None:
        if not isinstance(schema, dict):
            return f"schema: a JSON Schema object is required, not {type(schema).__name__}"
        from jsonschema import Draft202012Validator, SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as err:
            return f"schema: not a valid JSON Schema: {err.message}"
        except RecursionError:
            return "schema: nested too deep to check"
    return None


def check_task_row(row: dict[str, Any], where: str) -> None:
    """Raise EvalSetError naming `where` (file:line) and the field when a task row is unusable."""
    missing = {"id", "task", "prompt"} - set(row)
    if missing:
        raise EvalSetError(f"{where}: missing fields {sorted(missing)}")
    problem = task_row_problem(row)
    if problem is not None:
        raise EvalSetError(f"{where}: {problem}")


def expects_json(row: dict[str, Any]) -> bool:
    return row.get("match") in ("json", "json_valid") or row.get("schema") is not None


def row_score(row: dict[str, Any], answer: str) -> float:
    """1.0 when the answer passes the row's own matcher."""
    match = row.get("match", "exact")
    if match == "json_valid":
        return float(json_valid(answer, row.get("schema")))
    return float(MATCHERS[match](answer, row["reference"]))


def score_task_rows(rows: list[dict[str, Any]], answers: list[str]) -> dict[str, dict[str, float]]:
    """Per-row scores, {metric: {row id: 0.0 or 1.0}}: task_score (the row's matcher),
    task_exact_match, task_normalised_match, task_json_valid (JSON rows only) and
    task_score.<task> per task."""
    if len(rows) != len(answers):
        raise ValueError(f"{len(rows)} task rows but {len(answers)} answers")
    items: dict[str, dict[str, float]] = {
        "task_score": {}, "task_exact_match": {}, "task_normalised_match": {}}
    for row, answer in zip(rows, answers, strict=True):
        rid, score = row["id"], row_score(row, answer)
        items["task_score"][rid] = score
        items.setdefault(f"task_score.{row['task']}", {})[rid] = score
        reference = row.get("reference")
        items["task_exact_match"][rid] = float(reference is not None
                                               and exact_match(answer, reference))
        items["task_normalised_match"][rid] = float(reference is not None
                                                    and normalised_match(answer, reference))
        if expects_json(row):
            items.setdefault("task_json_valid", {})[rid] = float(json_valid(answer,
                                                                             row.get("schema")))
    return items


def continuation_answer(text: str) -> str:
    """A plain-text continuation cut at the end of its first sentence or line: what a cloze
    prompt ("Berlin is a city in") is answered with."""
    return re.split(r"[.\n]", text.strip(), maxsplit=1)[0].strip()

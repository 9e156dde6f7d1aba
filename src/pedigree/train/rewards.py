"""GRPO's rewards, built from the eval scorers: what the eval counts as a right answer is what
GRPO learns to give.

A task row (the split's task rows; the eval task format) carries its own check: `match` and
`reference` or `schema`. Rewards, named in align.grpo.rewards with a weight each:
  match       the row's own matcher (evals/scorers.row_score): a mixed set checks each row its way
  exact, normalised, numeric, contains, json
              that scorer against the row's reference, on every row (a row without one scores 0)
  json_valid  the answer parses as JSON and, when the row has a schema, validates against it
  format      the stripped answer matches align.grpo.format_regex in full
Each reward is 0 or 1 per answer; TRL sums them with their weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pedigree.config import GRPOSettings
from pedigree.evals.scorers import MATCHERS, json_valid, row_score

# The task row's fields each reward function receives, as dataset columns (schema as JSON text:
# a column of differently shaped objects would not fit one Arrow type).
ROW_COLUMNS = ("match", "reference", "schema_json")


def task_columns(row: dict[str, Any]) -> dict[str, Any]:
    """The reward columns of a canonical task row."""
    schema = row.get("schema")
    return {"match": row["match"], "reference": row.get("reference"),
            "schema_json": None if schema is None else json.dumps(schema, sort_keys=True)}


def _score(name: str, answer: str, match: str, reference: str | None, schema_json: str | None,
           pattern: re.Pattern | None) -> float:
    schema = None if schema_json is None else json.loads(schema_json)
    if name == "match":
        return row_score({"match": match, "reference": reference, "schema": schema}, answer)
    if name == "json_valid":
        return float(json_valid(answer, schema))
    if name == "format":
        return float(pattern.fullmatch(answer.strip()) is not None)
    return float(reference is not None and MATCHERS[name](answer, reference))


def answer_text(completion: Any) -> str:
    """The text of a sampled answer: TRL passes a conversational completion as its messages."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion if m.get("role") == "assistant")


def reward(name: str, cfg: GRPOSettings) -> Callable[..., list[float]]:
    """The reward function TRL calls with a batch of completions and their rows' columns."""
    pattern = re.compile(cfg.format_regex) if cfg.format_regex is not None else None

    def score(completions: list[Any], match: list[str], reference: list[str | None],
              schema_json: list[str | None], **_: Any) -> list[float]:
        return [_score(name, answer_text(c), m, r, s, pattern)
                for c, m, r, s in zip(completions, match, reference, schema_json, strict=True)]

    score.__name__ = name  # TRL logs each reward as rewards/<name>/mean
    return score


def reward_functions(cfg: GRPOSettings) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """(functions, weights) of the rewards with a non-zero weight, in the config's order."""
    named = [(name, weight) for name, weight in cfg.rewards.items() if weight]
    return [reward(name, cfg) for name, _ in named], [weight for _, weight in named]


def mean_reward(rows: list[dict[str, Any]], answers: list[str], cfg: GRPOSettings
                ) -> dict[str, float]:
    """The weighted reward of `answers` to task `rows`, averaged over rows ("reward"), and each
    reward's own mean ("reward/<name>")."""
    functions, weights = reward_functions(cfg)
    columns = [task_columns(r) for r in rows]
    kwargs = {k: [c[k] for c in columns] for k in ROW_COLUMNS}
    out, total = {}, [0.0] * len(rows)
    for fn, weight in zip(functions, weights, strict=True):
        scores = fn(answers, **kwargs)
        out[f"reward/{fn.__name__}"] = sum(scores) / len(scores)
        total = [t + weight * s for t, s in zip(total, scores, strict=True)]
    out["reward"] = sum(total) / len(total)
    return out

"""Prompted baselines: the base model with a system prompt and k examples, the bar a fine-tune
must clear to be worth training ("try a system prompt and a few examples first").

Examples come from the training split only (data/split/sft_train.jsonl, never validation or eval
rows), and only its single-turn rows (one user message, one assistant answer). For each task of
the eval set (the `task` of a task.jsonl row) the rows are put in one seeded order: that task's
training rows first (a source's task column, kept as meta.task), then the others. A k-shot prompt
takes the first k, so every prompt of a task sees the same examples, the 1-shot examples open the
3-shot ones, and a run with the same seed and split draws the same ids (metrics/baselines.json).

No torch here: the eval stage scores the prompts like any other model's (evals/suite.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from pedigree.config import BaselineConfig
from pedigree.evals.scorers import EvalSetError

Message = dict[str, str]


def baseline_name(k: int) -> str:
    return f"prompted-{k}shot"


def _single_turn(row: dict[str, Any]) -> bool:
    prompt, completion = row.get("prompt"), row.get("completion")
    return (isinstance(prompt, list) and len(prompt) == 1 and prompt[0].get("role") == "user"
            and isinstance(completion, list) and len(completion) == 1
            and completion[0].get("role") == "assistant"
            and all(isinstance(m.get("content"), str) and m["content"].strip()
                    for m in (*prompt, *completion)))


def _task(row: dict[str, Any]) -> Any:
    meta = row.get("meta")
    return meta.get("task") if isinstance(meta, dict) else None


@dataclass(frozen=True)
class Baseline:
    name: str
    system: str | None
    k: int
    shots: dict[str, list[dict[str, Any]]]  # eval task -> its k training rows, in prompt order

    def context(self, task: str) -> list[Message]:
        """The messages before an eval prompt of `task`: the system prompt, then the examples."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for row in self.shots.get(task, []):
            messages += [{"role": "user", "content": row["prompt"][0]["content"]},
                         {"role": "assistant", "content": row["completion"][0]["content"]}]
        return messages

    def record(self) -> dict[str, Any]:
        """What metrics/baselines.json keeps: enough to rebuild every prompt from the split."""
        shots = {task: [r["id"] for r in rows] for task, rows in sorted(self.shots.items())}
        return {"system": self.system, "k": self.k, "shots": shots}


def baselines(cfg: BaselineConfig, train_rows: list[dict[str, Any]], tasks: list[str],
              seed: int, where: str = "the SFT training split") -> list[Baseline]:
    """One baseline per k of cfg.shots, in order; k=0 without a system prompt is the bare base,
    which the eval stage measures anyway, so it is left out."""
    ks = sorted(set(cfg.shots))
    wanted = [k for k in ks if k > 0 or cfg.system]
    if not wanted:
        return []
    pool = sorted((r for r in train_rows if _single_turn(r)), key=lambda r: r["id"])
    most = max(wanted)
    if len(pool) < most:
        raise EvalSetError(f"{where}: {len(pool)} single-turn rows (one user message, one "
                           f"assistant answer), and eval.baseline.shots asks for {most} examples; "
                           "lower the shots or set eval.baseline.shots=[]")
    orders = {}
    for task in sorted(set(tasks)):
        same = [r for r in pool if _task(r) == task]
        other = [r for r in pool if _task(r) != task]
        rng = random.Random(f"{seed}:baseline:{task}")  # str seeds hash with sha512: stable
        rng.shuffle(same)
        rng.shuffle(other)
        orders[task] = same + other
    return [Baseline(baseline_name(k), cfg.system, k,
                     {task: order[:k] for task, order in orders.items()}) for k in wanted]

"""One evaluation of one model on the shared sets: the numbers every model is compared on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pedigree.config import EvalConfig
from pedigree.data.jsonl import read_jsonl
from pedigree.evals.measure import completion_loss, greedy_answers, perplexity, text_loss
from pedigree.evals.metrics import score_task_rows


@dataclass(frozen=True)
class EvalSets:
    tasks: list[dict[str, Any]]  # {"id", "task", "prompt", "reference", "match"}
    validation: list[dict[str, Any]]  # canonical SFT rows held out by the split
    general: list[str]  # plain text the base model could already model (forgetting probe)


def load_eval_sets(eval_dir: Path, validation_file: Path, cfg: EvalConfig) -> EvalSets:
    tasks = read_jsonl(eval_dir / "task.jsonl")[: cfg.max_task_rows]
    for number, row in enumerate(tasks, start=1):
        missing = {"id", "task", "prompt", "reference"} - set(row)
        if missing:
            raise ValueError(f"{eval_dir / 'task.jsonl'}:{number}: missing fields {sorted(missing)}")
    general = [row["text"] for row in read_jsonl(eval_dir / "general.jsonl")]
    validation = read_jsonl(validation_file)[: cfg.max_loss_rows]
    return EvalSets(tasks, validation, general)


def evaluate(model, tokenizer, sets: EvalSets, cfg: EvalConfig) -> tuple[dict[str, float], list[str]]:
    """(metrics, greedy answers to the task prompts, in order)."""
    val_loss = completion_loss(model, tokenizer, sets.validation, cfg.max_length, cfg.batch_size)
    general_loss = text_loss(model, tokenizer, sets.general, cfg.max_length, cfg.batch_size)
    prompts = [[{"role": "user", "content": row["prompt"]}] for row in sets.tasks]
    answers = greedy_answers(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    metrics = {
        "val_loss": val_loss,
        "val_perplexity": perplexity(val_loss),
        "general_loss": general_loss,
        "general_perplexity": perplexity(general_loss),
        **score_task_rows(sets.tasks, answers),
    }
    return metrics, answers


def answers_table(sets: EvalSets, answers: dict[str, list[str]]) -> str:
    """JSONL of every task row with each model's answer, for reading what the numbers hide."""
    lines = []
    for i, row in enumerate(sets.tasks):
        entry = {"id": row["id"], "prompt": row["prompt"], "reference": row["reference"],
                 "answers": {name: got[i] for name, got in answers.items()}}
        lines.append(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
    return "".join(lines)

"""One evaluation of one model on the shared sets: the numbers every model is compared on.

The sets, all in `data.eval_dir` except the held-out split:
  task.jsonl           task prompts with references, answered greedily through the chat template
  general.jsonl        plain text the base could already model: loss on it is the forgetting probe
  general_tasks.jsonl  cloze prompts the base could already complete (no chat template)
  general_chat.jsonl   questions an instruct base answers through its chat template (facts,
                       short instructions): forgetting of what a real model could already do
  data/split/sft_validation.jsonl, preference_validation.jsonl: held-out rows of the training data

Every metric is reported with its per-item values ({item id: value}), so the gate can pair two
models item by item and put a standard error on their difference.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pedigree.config import EvalConfig
from pedigree.evals.eval_rows import read_rows
from pedigree.evals.scorers import (
    EvalSetError,
    check_task_row,
    continuation_answer,
    normalised_match,
    row_score,
    score_task_rows,
)
from pedigree.model.measure import (
    completion_nll,
    greedy_answers,
    greedy_continuations,
    mean_loss,
    perplexity,
    row_means,
    text_nll,
)


@dataclass(frozen=True)
class EvalSets:
    tasks: list[dict[str, Any]]  # {"id", "task", "prompt", "reference", "match"[, "schema"]}
    validation: list[dict[str, Any]]  # canonical SFT rows held out by the split
    general: list[dict[str, Any]]  # {"id", "text"}: plain text the base could already model
    general_tasks: list[dict[str, Any]]  # {"id", "prompt", "reference"}: cloze prompts
    preferences: list[dict[str, Any]]  # canonical preference rows held out by the split
    # {"id", "task", "prompt", "reference", "match"}: questions an instruct base answers
    general_chat: list[dict[str, Any]] = field(default_factory=list)


def load_eval_sets(eval_dir: Path, split_dir: Path, cfg: EvalConfig) -> EvalSets:
    task_file = eval_dir / "task.jsonl"
    tasks = read_rows(task_file, ("id", "task", "prompt"))[: cfg.max_task_rows]
    for number, row in enumerate(tasks, start=1):
        check_task_row(row, f"{task_file}:{number}")
    general = read_rows(eval_dir / "general.jsonl", ("id", "text"))
    cloze_file = eval_dir / "general_tasks.jsonl"
    general_tasks = (read_rows(cloze_file, ("id", "prompt", "reference"))
                     if cloze_file.exists() else [])
    chat_file = eval_dir / "general_chat.jsonl"
    general_chat = read_rows(chat_file, ("id", "prompt")) if chat_file.exists() else []
    for number, row in enumerate(general_chat, start=1):
        check_task_row({"task": "chat", **row}, f"{chat_file}:{number}")
    validation = read_rows(split_dir / "sft_validation.jsonl", ("id",))[: cfg.max_loss_rows]
    pref_file = split_dir / "preference_validation.jsonl"
    preferences = read_rows(pref_file, ("id",))[: cfg.max_loss_rows] if pref_file.exists() else []
    for path, rows in ((task_file, tasks), (eval_dir / "general.jsonl", general),
                       (split_dir / "sft_validation.jsonl", validation)):
        if not rows:  # every score and loss is a mean over these
            raise EvalSetError(f"{path}: no rows; the evals need at least one")
    return EvalSets(tasks, validation, general, general_tasks, preferences, general_chat)


Context = Callable[[dict[str, Any]], list[dict[str, str]]]  # a task row -> messages before it


def _no_context(row: dict[str, Any]) -> list[dict[str, str]]:
    return []


def _task_prompt(row: dict[str, Any], context: Context) -> list[dict[str, str]]:
    return [*context(row), {"role": "user", "content": row["prompt"]}]


def _reference_rows(tasks: list[dict[str, Any]], context: Context) -> list[dict[str, Any]]:
    """Task rows as canonical prompt/completion rows (rows with a reference only)."""
    return [{"id": t["id"], "prompt": _task_prompt(t, context),
             "completion": [{"role": "assistant", "content": t["reference"]}]}
            for t in tasks if isinstance(t.get("reference"), str)]


@dataclass
class ModelEval:
    metrics: dict[str, float]
    items: dict[str, dict[str, float]]  # metric -> {item id: value}
    answers: list[str]  # greedy answers to the task prompts, in order
    lower_is_better: set[str] = field(default_factory=set)  # beyond our own losses (harness)


def evaluate(model, tokenizer, sets: EvalSets, cfg: EvalConfig) -> ModelEval:
    n, bs = cfg.max_length, cfg.batch_size
    metrics: dict[str, float] = {}
    items: dict[str, dict[str, float]] = {}
    lower_is_better: set[str] = set()

    def losses(name: str, ids: list[str], rows: list[tuple[float, int]]) -> None:
        _losses(metrics, items, name, ids, rows, n)

    losses("val", [r["id"] for r in sets.validation],
           completion_nll(model, tokenizer, sets.validation, n, bs))
    losses("general", [r["id"] for r in sets.general],
           text_nll(model, tokenizer, [r["text"] for r in sets.general], n, bs))
    answers = _tasks(model, tokenizer, sets.tasks, _no_context, cfg, n, metrics, items)

    if sets.general_tasks:
        got = greedy_continuations(model, tokenizer, [r["prompt"] for r in sets.general_tasks],
                                   cfg.max_new_tokens, bs)
        items["general_task_score"] = {
            r["id"]: float(normalised_match(continuation_answer(a), r["reference"]))
            for r, a in zip(sets.general_tasks, got, strict=True)}

    if sets.general_chat:  # through the chat template, like the tasks: what an instruct base does
        questions = [[{"role": "user", "content": r["prompt"]}] for r in sets.general_chat]
        got = greedy_answers(model, tokenizer, questions, cfg.max_new_tokens, bs)
        items["general_chat_score"] = {r["id"]: row_score(r, a)
                                       for r, a in zip(sets.general_chat, got, strict=True)}

    if sets.preferences:  # chosen beats rejected when its summed log-probability is higher
        chosen = completion_nll(model, tokenizer, [{**r, "completion": r["chosen"]}
                                                   for r in sets.preferences], n, bs)
        rejected = completion_nll(model, tokenizer, [{**r, "completion": r["rejected"]}
                                                     for r in sets.preferences], n, bs)
        items["pref_accuracy"] = {r["id"]: float(c[0] < w[0]) for r, c, w
                                  in zip(sets.preferences, chosen, rejected, strict=True)}

    if cfg.harness.tasks:  # lm-evaluation-harness, optional
        from pedigree.evals.harness import run_harness

        harness = run_harness(model, tokenizer, cfg.harness, bs)
        metrics.update(harness.metrics)
        items.update(harness.items)
        lower_is_better.update(harness.lower_is_better)

    _item_means(metrics, items)
    return ModelEval(metrics, items, answers, lower_is_better)


def evaluate_prompted(model, tokenizer, tasks: list[dict[str, Any]], context: Context, k: int,
                      cfg: EvalConfig) -> ModelEval:
    """The task metrics (scores and reference loss) of prompts with `context` before each: a
    prompted baseline (evals/prompting.py) with k examples. The loss rows may be (k + 1) times
    eval.max_length, room for the examples as well as the row."""
    metrics: dict[str, float] = {}
    items: dict[str, dict[str, float]] = {}
    answers = _tasks(model, tokenizer, tasks, context, cfg, cfg.max_length * (k + 1), metrics,
                     items)
    _item_means(metrics, items)
    return ModelEval(metrics, items, answers)


def _losses(metrics: dict[str, float], items: dict[str, dict[str, float]], name: str,
            ids: list[str], rows: list[tuple[float, int]], max_length: int) -> None:
    if not any(count for _, count in rows):  # a user's data or setting, not a bug
        raise EvalSetError(f"{name} rows: no labelled tokens to score: every row is empty "
                           f"or truncated to nothing at {max_length} tokens (eval.max_length); "
                           "raise it")
    metrics[f"{name}_loss"] = mean_loss(rows)  # token-weighted, nats/token
    metrics[f"{name}_perplexity"] = perplexity(metrics[f"{name}_loss"])
    items[f"{name}_loss"] = dict(zip(ids, row_means(rows), strict=True))


def _tasks(model, tokenizer, tasks: list[dict[str, Any]], context: Context, cfg: EvalConfig,
           max_length: int, metrics: dict[str, float],
           items: dict[str, dict[str, float]]) -> list[str]:
    """Reference-answer loss and greedy answers scored, for every task row; the answers."""
    references = _reference_rows(tasks, context)
    if references:  # graded task ability: NLL of the reference answers
        _losses(metrics, items, "task", [r["id"] for r in references],
                completion_nll(model, tokenizer, references, max_length, cfg.batch_size),
                max_length)
    prompts = [_task_prompt(row, context) for row in tasks]
    answers = greedy_answers(model, tokenizer, prompts, cfg.max_new_tokens, cfg.batch_size)
    items.update(score_task_rows(tasks, answers))
    return answers


def _item_means(metrics: dict[str, float], items: dict[str, dict[str, float]]) -> None:
    for name, values in items.items():
        if name not in metrics:  # scores: the mean of the items
            metrics[name] = sum(values.values()) / len(values)


def answers_table(sets: EvalSets, answers: dict[str, list[str]]) -> str:
    """JSONL of every task row with each model's answer, for reading what the numbers hide."""
    lines = []
    for i, row in enumerate(sets.tasks):
        entry = {"id": row["id"], "prompt": row["prompt"], "reference": row.get("reference"),
                 "answers": {name: got[i] for name, got in answers.items()}}
        lines.append(json.dumps(entry, ensure_ascii=False, sort_keys=True) + "\n")
    return "".join(lines)

"""What every TRL trainer run of ours shares, SFT's and alignment's alike: the seeded run settings, the
rows as TRL reads them, training with resume from the stage's checkpoints, and the curves the
stages write for `dvc plots show`.
"""

from __future__ import annotations

import sys
from typing import Any

from pedigree.model.chat import rendered
from pedigree.model.load import training_device
from pedigree.train.checkpoints import (
    CheckpointStore,
    EarlyStopping,
    load_checkpoint_weights,
    stopped_at,
)


def run_settings(seed: int, save_steps: int | None = None) -> dict[str, Any]:
    """TrainingArguments shared by the SFT and alignment recipes: seeded, checkpoints every `save_steps`
    (none when None), no reporting (the stage logs to MLflow itself), the device's precision."""
    saving = ({"save_strategy": "steps", "save_steps": save_steps, "save_total_limit": 2}
              if save_steps else {"save_strategy": "no"})
    return {
        **saving,
        "report_to": "none",
        "gradient_checkpointing": False,  # ~25% faster for small models; memory is not the limit
        "seed": seed,
        "data_seed": seed,
        # A progress bar for a person at a terminal; logs (a line per logging step) otherwise.
        "disable_tqdm": not sys.stderr.isatty(),
        # Under DDP: every LoRA/partial parameter gets a gradient; the search costs a pass.
        "ddp_find_unused_parameters": False,
        "dataloader_num_workers": 0,
        **training_device(),
    }


def conversational_dataset(rows: list[dict[str, Any]], columns: tuple[str, ...]):
    """Only the columns TRL reads (ids, sources and meta differ in shape from row to row), as
    the template sees them: a message's `weight` is dropped (a preference loss scores whole
    answers)."""
    from datasets import Dataset

    return Dataset.from_list([{c: [rendered(m) for m in row[c]] for c in columns}
                              for row in rows])


def trainer_log(log_history: list[dict[str, Any]], keys: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(step, {key: value}) for the log entries that carry any of `keys`: the training curves.
    A value logged twice at one step (the last in-loop evaluation and the final one) counts once."""
    curve, seen = [], set()
    for entry in log_history:
        step = int(entry["step"])
        values = {k: float(entry[k]) for k in keys if k in entry and (step, k) not in seen}
        seen.update((step, k) for k in values)
        if values:
            curve.append((step, values))
    return curve


def fit(trainer, store: CheckpointStore | None, stage: str) -> None:
    """Train, resuming from the store's last complete checkpoint when its fingerprint matches.

    A fresh run evaluates at step 0 (`eval_on_start`), inside the training loop so that it also
    works under DDP (an evaluate() before train() would keep the model from being wrapped); a
    resumed run has that evaluation in the log history it restores.
    """
    resume = store.resume_point(stage) if store else None
    trainer.args.eval_on_start = resume is None and trainer.args.eval_strategy != "no"
    if resume is not None:
        stopping = next((c for c in trainer.callback_handler.callbacks
                         if isinstance(c, EarlyStopping)), None)
        if stopped_at(resume, stopping) is not None:  # take that checkpoint, train no further
            from transformers import TrainerState

            load_checkpoint_weights(trainer.model, resume)
            trainer.state = TrainerState.load_from_json(str(resume / "trainer_state.json"))
            return
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)


def curve_csv(curve: list[tuple[int, dict]], key: str, column: str = "loss") -> str:
    """One metric of a training curve as `step,<column>` CSV, for `dvc plots show`."""
    lines = [f"step,{column}"]
    lines += [f"{step},{values[key]:.6g}" for step, values in curve if key in values]
    return "\n".join(lines) + "\n"

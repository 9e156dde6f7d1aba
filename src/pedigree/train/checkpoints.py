"""Checkpoints that let a killed training stage resume where it stopped, and only then.

A stage's checkpoints live in `checkpoints/<stage>/` (ignored by git, never a DVC output), next to
`fingerprint.json`: the content hashes of the stage's inputs (data, base model, upstream
adapters), of its params and of its code (the files dvc.yaml lists for it). A later run resumes
from the last complete checkpoint only when its fingerprint is the same; otherwise it says what
changed and starts fresh, because resuming onto other data, params or code would give weights
that no single run could have produced, published under the new code's hash.

The trainer writes a checkpoint directory in place, so a kill can leave a partial one behind;
a checkpoint counts only once the `on_save` callback has marked it complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pedigree.files import atomic_write_text
from pedigree.launch import is_main_process
from pedigree.lineage import hash_of_hashes, sha256_json

FINGERPRINT = "fingerprint.json"
COMPLETE = "pedigree-complete"  # marker file inside a checkpoint-N directory


def fingerprint(input_hashes: dict[str, dict[str, str]], params: dict[str, Any],
                code_sha256: str) -> dict[str, Any]:
    """What a checkpoint was trained from: one hash per input path, one for the params, and the
    stage's code (`lineage.code_identity(stage)["source_sha256"]`; required, so no caller can
    resume onto weights trained by other code)."""
    return {
        "inputs": {path: hash_of_hashes(files) for path, files in sorted(input_hashes.items())},
        "params_sha256": sha256_json(params),
        "code_sha256": code_sha256,
    }


class CheckpointStore:
    def __init__(self, directory: Path, current: dict[str, Any]):
        self.dir = directory
        self.current = current

    def _changes(self) -> list[str]:
        """What differs from the fingerprint the checkpoints were made with."""
        saved = json.loads((self.dir / FINGERPRINT).read_text())
        changed = [path for path in sorted({*saved["inputs"], *self.current["inputs"]})
                   if saved["inputs"].get(path) != self.current["inputs"].get(path)]
        if saved["params_sha256"] != self.current["params_sha256"]:
            changed.append("params")
        if saved.get("code_sha256") != self.current.get("code_sha256"):
            changed.append("code")
        return changed

    def last_complete(self) -> Path | None:
        done = [p for p in self.dir.glob("checkpoint-*") if (p / COMPLETE).is_file()]
        return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)

    def resume_point(self, stage: str) -> Path | None:
        """The checkpoint to resume from, or None for a fresh start (after clearing stale ones)."""
        if not (self.dir / FINGERPRINT).is_file():
            self._start_fresh()
            return None
        changes = self._changes()
        if changes:
            print(f"[{stage}] not resuming: {', '.join(changes)} changed since the checkpoints "
                  f"in {self.dir} were made; starting fresh")
            self._start_fresh()
            return None
        last = self.last_complete()
        if last is not None:
            print(f"[{stage}] resuming from {last}")
        return last

    def _start_fresh(self) -> None:
        if not is_main_process():
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        # Atomic: other ranks may read it while rank 0 writes.
        atomic_write_text(self.dir / FINGERPRINT, json.dumps(self.current, indent=2) + "\n")

    def clear(self) -> None:
        """After the stage's output is complete the checkpoints have no further use."""
        if is_main_process():
            shutil.rmtree(self.dir, ignore_errors=True)

    def callback(self) -> TrainerCallback:
        return _MarkComplete()


class _MarkComplete(TrainerCallback):
    """Marks checkpoint-N complete once the trainer has written all of it."""

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                (path / COMPLETE).touch()
        return control


class EarlyStopping(TrainerCallback):
    """Stops training after `patience` evaluations without a lower validation loss.

    Stateless: it reads the trainer's log history, which a resumed run restores, so stopping
    decisions are the same with or without an interruption. The last weights are kept.
    """

    def __init__(self, patience: int):
        self.patience = patience

    def should_stop(self, log_history: list[dict]) -> bool:
        losses = [entry["eval_loss"] for entry in log_history if "eval_loss" in entry]
        if not losses:
            return False
        best = min(range(len(losses)), key=losses.__getitem__)
        return len(losses) - 1 - best >= self.patience

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.should_stop(state.log_history):
            control.should_training_stop = True
        return control


def stopped_at(checkpoint: Path, stopping: EarlyStopping | None) -> int | None:
    """The step a checkpoint's run had already early-stopped at, else None. The trainer resets
    its stop flag when it resumes (transformers #10290) and would train on past the stop."""
    if stopping is None:
        return None
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state["global_step"] if stopping.should_stop(state["log_history"]) else None


def load_checkpoint_weights(model, checkpoint: Path) -> None:
    """The trained weights of a Trainer checkpoint into `model`, as `Trainer.train(
    resume_from_checkpoint=...)` loads them: a PEFT model's active adapter (trainable), else the
    model's safetensors, one file or shards, on the CPU (keys the file lacks keep their values).
    For a run that stopped early, whose checkpoint is the result: `train()` would step on."""
    from peft import PeftMixedModel, PeftModel

    if isinstance(model, PeftModel | PeftMixedModel):
        model.load_adapter(str(checkpoint), model.active_adapters[0], is_trainable=True)
        return
    single = checkpoint / "model.safetensors"
    if single.is_file():
        from safetensors.torch import load_file

        model.load_state_dict(load_file(single, device="cpu"), strict=False)
    else:
        from transformers.trainer_utils import load_sharded_checkpoint

        load_sharded_checkpoint(model, str(checkpoint), strict=False)

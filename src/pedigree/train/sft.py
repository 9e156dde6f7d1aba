"""Supervised fine-tuning with TRL on canonical prompt/completion rows.

Completion-only loss by default: only assistant turns are targets, so the model learns to answer,
not to echo questions; every assistant turn of a multi-turn row by default (`sft.train_on`), not
only the last. Rows reach TRL tokenized, with their target mask, by `pedigree.model.chat` under
the base model's chat template (or `sft.chat_template`): the tokens the evals score.
Checkpoints go to the stage's checkpoint store, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from pedigree.config import SOFT_PROMPT_METHODS, SFTConfig
from pedigree.errors import PedigreeError
from pedigree.model.chat import encode_turns
from pedigree.train.checkpoints import CheckpointStore, EarlyStopping
from pedigree.train.methods import (
    method_callbacks,
    parameter_counts,
    prepare_trainer,
    resumable,
)
from pedigree.train.trainer import fit, run_settings, trainer_log


def chat_template(value: str | None) -> str | None:
    """`sft.chat_template`: a path to a .jinja file (read here) or an inline template."""
    if value is None or not value.endswith(".jinja"):
        return value
    path = Path(value)
    if not path.is_file():
        raise PedigreeError(f"sft.chat_template: {value}: no such file")
    return path.read_text(encoding="utf-8")


def final_eval_loss(trainer) -> float:
    """Validation loss of the trained model: the in-loop evaluation at the last step when there
    was one (on SmolLM2 each costs ~13 s of an SFT stage's ~3 minutes), else a new one."""
    state = trainer.state
    last = next((e for e in reversed(state.log_history) if "eval_loss" in e), None)
    if last is not None and last.get("step") == state.global_step:
        return last["eval_loss"]
    return trainer.evaluate()["eval_loss"]


def base_eval_loss(trainer, cfg: SFTConfig) -> float:
    """Validation loss of the base model. The step-0 evaluation is the base for every method
    but the soft prompts (a fresh adapter is a no-op: LoRA's B = 0, IA3's scales 1, PiSSA's
    adapter plus the residual base = the base); a fresh soft prompt already shifts every input,
    so the base is evaluated with it disabled (after training: its base weights never move)."""
    if cfg.method not in SOFT_PROMPT_METHODS:
        return next(e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e)
    with trainer.model.disable_adapter():
        return trainer.evaluate(metric_key_prefix="base")["base_loss"]


def sft_args(cfg: SFTConfig, seed: int, output_dir: str):
    from trl import SFTConfig as TRLSFTConfig

    return TRLSFTConfig(
        output_dir=output_dir,  # the checkpoints; the trained weights are saved explicitly
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_length=cfg.max_length,
        completion_only_loss=cfg.completion_only_loss,
        # BFD packing: rows packed whole into max_length blocks; position ids restart per row and
        # the attention mask is block-diagonal, so packed rows never see each other.
        packing=cfg.packing,
        packing_strategy="bfd",
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        logging_steps=max(1, min(10, cfg.eval_steps)),
        **run_settings(seed, cfg.save_steps),
    )


def sft_dataset(tokenizer, rows: list[dict[str, Any]], cfg: SFTConfig):
    """Rows as TRL's tokenized prompt/completion data: `input_ids` and `completion_mask` (1 on
    target turns; TRL builds the labels from it, truncates to max_length or packs). Rows without a
    target turn (all weight 0) add no loss and are left out when only targets count."""
    from datasets import Dataset

    encoded = [encode_turns(tokenizer, row, None, cfg.train_on) for row in rows]
    if cfg.completion_only_loss:
        encoded = [e for e in encoded if any(e.target_mask)]
        if rows and not encoded:
            raise PedigreeError("sft: no row has an assistant turn to train on "
                                "(every one is marked weight 0)")
    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded],
                              "completion_mask": [e.target_mask for e in encoded]})


def sft_trainer(model, tokenizer, peft_config, train_rows: list[dict[str, Any]],
                val_rows: list[dict[str, Any]], cfg: SFTConfig, seed: int, output_dir: str,
                callbacks: list | None = None):
    """TRL's SFTTrainer on the rows, tokenized here (`sft_dataset`), with what the method needs
    of it (train/methods.py: AdaLoRA's callback, LoRA+'s optimizer, PiSSA's initial adapter)."""
    from trl import SFTTrainer

    trainer = SFTTrainer(
        model=model,
        args=sft_args(cfg, seed, output_dir),
        train_dataset=sft_dataset(tokenizer, train_rows, cfg),
        eval_dataset=sft_dataset(tokenizer, val_rows, cfg),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[*(callbacks or []), *method_callbacks(cfg)],
    )
    prepare_trainer(trainer, cfg)
    return trainer


def train_sft(
    model,
    tokenizer,
    peft_config,
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
    cfg: SFTConfig,
    seed: int,
    store: CheckpointStore | None = None,
    callbacks: list | None = None,
) -> tuple[Any, dict[str, float], list[tuple[int, dict]]]:
    """Train `model` (wrapped in `peft_config` when given); returns (model, metrics, curve).
    `callbacks`: extra transformers TrainerCallbacks (the benchmarks evaluate mid-training)."""
    if store is not None and not resumable(cfg):
        print(f"[sft] {cfg.method}: no checkpoints, a stopped run starts over (methods.resumable)")
        store = None
    with tempfile.TemporaryDirectory(prefix="pedigree-sft-") as scratch:
        output_dir = str(store.dir) if store else scratch
        trainer = sft_trainer(
            model, tokenizer, peft_config, train_rows, val_rows, cfg, seed, output_dir,
            callbacks=[
                *([store.callback()] if store else []),
                *([EarlyStopping(cfg.early_stopping_patience)]
                  if cfg.early_stopping_patience else []),
                *(callbacks or []),
            ],
        )
        fit(trainer, store, "sft")
        after = final_eval_loss(trainer)
        before = base_eval_loss(trainer, cfg)
    trainable, total = parameter_counts(trainer.model)
    metrics = {
        "val_loss_base": float(before),
        "val_loss": float(after),
        "trainable_params": float(trainable),
        "trainable_fraction": trainable / total,
        "steps": float(trainer.state.global_step),
    }
    curve = trainer_log(trainer.state.log_history, ("loss", "eval_loss"))
    return trainer.model, metrics, curve

"""Supervised fine-tuning with TRL on canonical prompt/completion rows.

Completion-only loss by default: the prompt tokens are masked, so the model learns to answer, not
to echo questions. The base model's chat template renders both sides.
"""

from __future__ import annotations

import tempfile
from typing import Any

from pedigree.config import LoraConfig, SFTConfig
from pedigree.train.load import training_device


def peft_lora(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        task_type="CAUSAL_LM",
    )


def run_settings(seed: int) -> dict[str, Any]:
    """TrainingArguments shared by the SFT and DPO recipes: seeded, no checkpoints, no reporting
    (the stage logs to MLflow itself), and the device's precision."""
    return {
        "save_strategy": "no",
        "report_to": "none",
        "gradient_checkpointing": False,  # ~25% faster for small models; memory is not the limit
        "seed": seed,
        "data_seed": seed,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **training_device(),
    }


def conversational_dataset(rows: list[dict[str, Any]], columns: tuple[str, ...]):
    """Only the columns TRL reads: ids, sources and meta differ in shape from row to row."""
    from datasets import Dataset

    return Dataset.from_list([{c: row[c] for c in columns} for row in rows])


def trainer_log(log_history: list[dict[str, Any]], keys: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(step, {key: value}) for the log entries that carry any of `keys`: the training curves."""
    curve = []
    for entry in log_history:
        values = {k: float(entry[k]) for k in keys if k in entry}
        if values:
            curve.append((int(entry["step"]), values))
    return curve


def train_sft(
    model,
    tokenizer,
    train_rows: list[dict[str, Any]],
    val_rows: list[dict[str, Any]],
    cfg: SFTConfig,
    seed: int,
) -> tuple[Any, dict[str, float], list[tuple[int, dict]]]:
    """Train a LoRA adapter; returns (peft model, metrics, curve)."""
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    columns = ("prompt", "completion")
    with tempfile.TemporaryDirectory(prefix="pedigree-sft-") as scratch:
        args = TRLSFTConfig(
            output_dir=scratch,  # checkpoints are not outputs; the adapter is saved explicitly
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_steps,
            max_length=cfg.max_length,
            completion_only_loss=cfg.completion_only_loss,
            eval_strategy="steps",
            eval_steps=cfg.eval_steps,
            logging_steps=max(1, min(10, cfg.eval_steps)),
            **run_settings(seed),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=conversational_dataset(train_rows, columns),
            eval_dataset=conversational_dataset(val_rows, columns),
            processing_class=tokenizer,
            peft_config=peft_lora(cfg.lora),
        )
        # A fresh LoRA is a no-op (B = 0), so this is the base model's validation loss.
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        after = trainer.evaluate()["eval_loss"]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    metrics = {
        "val_loss_base": float(before),
        "val_loss": float(after),
        "trainable_params": float(trainable),
        "trainable_fraction": trainable / total,
    }
    curve = trainer_log(trainer.state.log_history, ("loss", "eval_loss"))
    return trainer.model, metrics, curve

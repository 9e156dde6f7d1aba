"""Continued pretraining: the next-token loss on plain documents, every weight trained.

The documents (each ended by EOS, so the model learns where one stops) are concatenated and cut
into `block_size` blocks, as Hugging Face's run_clm does: no padding, no token wasted on it. The
tail shorter than a block is dropped (at most block_size - 1 tokens), unless the text is shorter
than one block, which then trains as one shorter block. Checkpoints go to the stage's store, so
a killed run resumes where it stopped.
"""

from __future__ import annotations

import tempfile
from typing import Any

from pedigree.config import CPTConfig
from pedigree.errors import PedigreeError
from pedigree.train.checkpoints import CheckpointStore
from pedigree.train.methods import parameter_counts
from pedigree.train.trainer import fit, run_settings, trainer_log


def token_blocks(tokenizer, documents: list[str], block_size: int) -> list[list[int]]:
    """The documents' tokens, each document ended by EOS, in blocks of `block_size`."""
    if tokenizer.eos_token_id is None:
        raise PedigreeError("cpt: the tokenizer has no EOS token to end each document with")
    stream: list[int] = []
    for doc in documents:
        stream.extend(tokenizer(doc)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    if len(stream) < block_size:
        return [stream] if stream else []
    return [stream[i:i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]


def _dataset(blocks: list[list[int]]):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": blocks, "labels": blocks})


def cpt_args(cfg: CPTConfig, seed: int, output_dir: str):
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,  # the checkpoints; the trained weights are saved explicitly
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        logging_steps=max(1, min(10, cfg.eval_steps)),
        **run_settings(seed, cfg.save_steps),
    )


def train_cpt(model, tokenizer, train_docs: list[str], val_docs: list[str], cfg: CPTConfig,
              seed: int, store: CheckpointStore | None = None
              ) -> tuple[Any, dict[str, float], list[tuple[int, dict]]]:
    """Train every weight of `model` on the documents; returns (model, metrics, curve)."""
    from transformers import Trainer

    train, val = (token_blocks(tokenizer, docs, cfg.block_size) for docs in (train_docs, val_docs))
    if not train or not val:
        raise PedigreeError(f"cpt: {len(train)} training and {len(val)} validation blocks; "
                            "both sides of the split need text")
    for p in model.parameters():
        p.requires_grad_(True)
    with tempfile.TemporaryDirectory(prefix="pedigree-cpt-") as scratch:
        trainer = Trainer(
            model=model, args=cpt_args(cfg, seed, str(store.dir) if store else scratch),
            train_dataset=_dataset(train), eval_dataset=_dataset(val),
            callbacks=[store.callback()] if store else [],
        )
        fit(trainer, store, "cpt")
        log = trainer.state.log_history
        before = next(e["eval_loss"] for e in log if "eval_loss" in e)  # step 0: the base
        last = next(e for e in reversed(log) if "eval_loss" in e)
        after = (last["eval_loss"] if last["step"] == trainer.state.global_step
                 else trainer.evaluate()["eval_loss"])
    trainable, _ = parameter_counts(trainer.model)
    metrics = {
        "val_loss_base": float(before),
        "val_loss": float(after),
        "trainable_params": float(trainable),
        "train_blocks": float(len(train)),
        "train_tokens": float(sum(map(len, train))),
        "steps": float(trainer.state.global_step),
    }
    return trainer.model, metrics, trainer_log(log, ("loss", "eval_loss"))

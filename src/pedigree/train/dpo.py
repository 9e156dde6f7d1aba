"""Direct preference optimisation (TRL) with a LoRA on top of the SFT policy.

The SFT adapter is folded into the base first (in fp32), so the model DPO starts from *is* the SFT
policy. TRL then uses that model with the new adapter disabled as the reference: the KL tie is to
the SFT policy, as DPO requires, and no second copy of the model is held in memory.
"""

from __future__ import annotations

import tempfile
from typing import Any

from pedigree.config import DPOConfig
from pedigree.train.checkpoints import CheckpointStore
from pedigree.train.methods import peft_lora
from pedigree.train.trainer import conversational_dataset, fit, run_settings, trainer_log


def train_dpo(
    policy,
    tokenizer,
    train_pairs: list[dict[str, Any]],
    val_pairs: list[dict[str, Any]],
    cfg: DPOConfig,
    seed: int,
    store: CheckpointStore | None = None,
) -> tuple[Any, dict[str, float], list[tuple[int, dict]]]:
    """Train a DPO LoRA on `policy` (a plain model); returns (peft model, metrics, curve)."""
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    columns = ("prompt", "chosen", "rejected")
    with tempfile.TemporaryDirectory(prefix="pedigree-dpo-") as scratch:
        args = TRLDPOConfig(
            output_dir=str(store.dir) if store else scratch,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            beta=cfg.beta,
            loss_type=[cfg.loss_type],
            max_length=cfg.max_length,
            precompute_ref_log_probs=cfg.precompute_ref_log_probs,
            eval_strategy="no",
            logging_steps=max(1, min(10, cfg.max_steps // 4)),
            **run_settings(seed, cfg.save_steps),
        )
        trainer = DPOTrainer(
            model=policy,
            args=args,
            train_dataset=conversational_dataset(train_pairs, columns),
            eval_dataset=conversational_dataset(val_pairs, columns),
            processing_class=tokenizer,
            peft_config=peft_lora(cfg.lora),
            callbacks=[store.callback()] if store else None,
        )
        fit(trainer, store, "dpo")
        after = trainer.evaluate()
    metrics = {
        "val_loss": float(after["eval_loss"]),
        "val_preference_accuracy": float(after["eval_rewards/accuracies"]),
        "val_reward_margin": float(after["eval_rewards/margins"]),
    }
    curve = trainer_log(trainer.state.log_history, ("loss", "rewards/accuracies", "rewards/margins"))
    return trainer.model, metrics, curve

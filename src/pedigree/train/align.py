"""Preference tuning (TRL) with a LoRA on top of the SFT policy, by one of four methods.

The SFT adapter is folded into the base first (in fp32), so the model alignment starts from *is*
the SFT policy. dpo and kto tie the policy to a reference: TRL uses that model with the new
adapter disabled, so the tie is to the SFT policy and no second copy is held in memory. orpo and
simpo (TRL's CPO trainer with the simpo loss) have no reference at all.

    dpo    pairs: the log-ratio of chosen over rejected, against the reference's
    orpo   pairs: an SFT loss on the chosen answer plus beta x the odds ratio of chosen/rejected
    simpo  pairs: length-normalised log-likelihoods, a margin of gamma between them
    kto    answers labelled desirable or not (a pair gives one of each), against the reference
"""

from __future__ import annotations

import random
import tempfile
from typing import Any

from pedigree.config import AlignConfig
from pedigree.train.checkpoints import CheckpointStore
from pedigree.train.methods import peft_lora
from pedigree.train.trainer import conversational_dataset, fit, run_settings, trainer_log

PAIR_COLUMNS = ("prompt", "chosen", "rejected")
KTO_COLUMNS = ("prompt", "completion")
CURVE_KEYS = ("loss", "rewards/accuracies", "rewards/margins")


def kto_rows(pairs: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each pair as two unpaired rows, chosen desirable and rejected not, shuffled with `seed`.

    TRL would unpair them itself, but all chosen rows first: KTO reads its data in order, so the
    first batches would hold one label only (no margin, a biased start)."""
    rows = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in pairs for side in ("chosen", "rejected")]
    random.Random(seed).shuffle(rows)
    return rows


def _dataset(method: str, pairs: list[dict[str, Any]], seed: int):
    if method != "kto":
        return conversational_dataset(pairs, PAIR_COLUMNS)
    rows = kto_rows(pairs, seed)
    data = conversational_dataset(rows, KTO_COLUMNS)
    return data.add_column("label", [r["label"] for r in rows])


def _trainer_classes(method: str):
    """(TRL config class, trainer class) for a method; the reference-free ones are TRL's
    experimental trainers."""
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOConfig, CPOTrainer


def _method_args(cfg: AlignConfig) -> dict[str, Any]:
    """The TRL config fields that differ by method."""
    if cfg.method == "dpo":
        return {"loss_type": [cfg.dpo.loss_type],
                "precompute_ref_log_probs": cfg.dpo.precompute_ref_log_probs}
    if cfg.method == "simpo":
        return {"loss_type": "simpo", "simpo_gamma": cfg.simpo.gamma,
                "cpo_alpha": cfg.simpo.nll_weight}
    if cfg.method == "kto":
        return {"desirable_weight": cfg.kto.desirable_weight,
                "undesirable_weight": cfg.kto.undesirable_weight}
    return {}


def train_align(
    policy,
    tokenizer,
    train_pairs: list[dict[str, Any]],
    val_pairs: list[dict[str, Any]],
    cfg: AlignConfig,
    seed: int,
    store: CheckpointStore | None = None,
) -> tuple[Any, dict[str, float], list[tuple[int, dict]]]:
    """Train a LoRA on `policy` (a plain model) by `cfg.method`; returns (peft model, metrics,
    curve). Metrics: validation loss, and for the paired methods the preference accuracy and
    reward margin TRL reports on the validation pairs (kto: the margin only)."""
    config_class, trainer_class = _trainer_classes(cfg.method)
    with tempfile.TemporaryDirectory(prefix="pedigree-align-") as scratch:
        args = config_class(
            output_dir=str(store.dir) if store else scratch,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            beta=cfg.beta,
            max_length=cfg.max_length,
            eval_strategy="no",
            logging_steps=max(1, min(10, cfg.max_steps // 4)),
            **_method_args(cfg),
            **run_settings(seed, cfg.save_steps),
        )
        trainer = trainer_class(
            model=policy,
            args=args,
            train_dataset=_dataset(cfg.method, train_pairs, seed),
            eval_dataset=_dataset(cfg.method, val_pairs, seed),
            processing_class=tokenizer,
            peft_config=peft_lora(cfg.lora),
            callbacks=[store.callback()] if store else None,
        )
        fit(trainer, store, "align")
        after = trainer.evaluate()
    metrics = {"val_loss": float(after["eval_loss"])}
    for key, name in (("eval_rewards/accuracies", "val_preference_accuracy"),
                      ("eval_rewards/margins", "val_reward_margin")):
        if key in after:
            metrics[name] = float(after[key])
    return trainer.model, metrics, trainer_log(trainer.state.log_history, CURVE_KEYS)

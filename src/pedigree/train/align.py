"""Alignment (TRL) with a LoRA on top of the SFT policy, by one of five methods.

The SFT adapter is folded into the base first (in fp32), so the model alignment starts from *is*
the SFT policy. dpo, kto and grpo (beta > 0) tie the policy to a reference: TRL uses that model
with the new adapter disabled, so the tie is to the SFT policy and no second copy is held in
memory (it costs a forward pass per batch). orpo and simpo (TRL's CPO trainer with the simpo
loss) have no reference at all.

    dpo    pairs: the log-ratio of chosen over rejected, against the reference's
    orpo   pairs: an SFT loss on the chosen answer plus beta x the odds ratio of chosen/rejected
    simpo  pairs: length-normalised log-likelihoods, a margin of gamma between them
    kto    answers labelled desirable or not (unpaired rows; a pair gives one of each), against
           the reference
    grpo   task prompts: num_generations answers sampled per prompt, scored by the rewards
           (train/rewards.py), each pushed by how far its reward is above its group's mean
"""

from __future__ import annotations

import random
import tempfile
from typing import Any

from pedigree.config import AlignConfig
from pedigree.train.checkpoints import CheckpointStore
from pedigree.train.methods import peft_lora
from pedigree.train.trainer import conversational_dataset, fit, run_settings, trainer_log

# The kinds of split rows (data/split/<kind>_train.jsonl) each method learns from.
METHOD_KINDS = {"dpo": ("preference",), "orpo": ("preference",), "simpo": ("preference",),
                "kto": ("preference", "unpaired"), "grpo": ("task",)}
PAIR_COLUMNS = ("prompt", "chosen", "rejected")
KTO_COLUMNS = ("prompt", "completion")
CURVE_KEYS = ("loss", "rewards/accuracies", "rewards/margins", "reward", "kl")

Rows = dict[str, list[dict[str, Any]]]  # kind -> canonical rows


def kto_rows(pairs: list[dict[str, Any]], unpaired: list[dict[str, Any]], seed: int
             ) -> list[dict[str, Any]]:
    """The unpaired rows, and each pair as two more (chosen desirable, rejected not), shuffled
    with `seed`.

    TRL would unpair the pairs itself, but all chosen rows first: KTO reads its data in order,
    so the first batches would hold one label only (no margin, a biased start)."""
    rows = [{"prompt": p["prompt"], "completion": p[side], "label": side == "chosen"}
            for p in pairs for side in ("chosen", "rejected")]
    rows += [{"prompt": r["prompt"], "completion": r["completion"], "label": r["label"]}
             for r in unpaired]
    random.Random(seed).shuffle(rows)
    return rows


def _dataset(method: str, rows: Rows, seed: int):
    if method == "grpo":
        from pedigree.train.rewards import ROW_COLUMNS, task_columns

        data = conversational_dataset(rows["task"], ("prompt",))
        columns = [task_columns(r) for r in rows["task"]]
        for name in ROW_COLUMNS:
            data = data.add_column(name, [c[name] for c in columns])
        return data
    if method != "kto":
        return conversational_dataset(rows["preference"], PAIR_COLUMNS)
    unpaired = kto_rows(rows.get("preference", []), rows.get("unpaired", []), seed)
    data = conversational_dataset(unpaired, KTO_COLUMNS)
    return data.add_column("label", [r["label"] for r in unpaired])


def _trainer_classes(method: str):
    """(TRL config class, trainer class) for a method; the reference-free ones are TRL's
    experimental trainers."""
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        return DPOConfig, DPOTrainer
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        return KTOConfig, KTOTrainer
    if method == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        return GRPOConfig, GRPOTrainer
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        return ORPOConfig, ORPOTrainer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOConfig, CPOTrainer


def _method_args(cfg: AlignConfig) -> dict[str, Any]:
    """The TRL config fields that differ by method."""
    if cfg.method == "grpo":
        from pedigree.train.rewards import reward_functions

        g = cfg.grpo
        return {"num_generations": g.num_generations,
                "max_completion_length": g.max_completion_length, "temperature": g.temperature,
                "reward_weights": reward_functions(g)[1]}
    # The paired and unpaired methods truncate prompt and answer together.
    args: dict[str, Any] = {"max_length": cfg.max_length}
    if cfg.method == "dpo":
        args |= {"loss_type": [cfg.dpo.loss_type],
                 "precompute_ref_log_probs": cfg.dpo.precompute_ref_log_probs}
    elif cfg.method == "simpo":
        args |= {"loss_type": "simpo", "simpo_gamma": cfg.simpo.gamma,
                 "cpo_alpha": cfg.simpo.nll_weight}
    elif cfg.method == "kto":
        args |= {"desirable_weight": cfg.kto.desirable_weight,
                 "undesirable_weight": cfg.kto.undesirable_weight}
    return args


def train_align(
    policy,
    tokenizer,
    train: Rows,
    validation: Rows,
    cfg: AlignConfig,
    seed: int,
    store: CheckpointStore | None = None,
) -> tuple[Any, dict[str, float], list[tuple[int, dict]]]:
    """Train a LoRA on `policy` (a plain model) by `cfg.method` on the rows of the kinds it
    learns from (METHOD_KINDS); returns (peft model, metrics, curve).

    Metrics: for the paired methods the validation loss and the preference accuracy and reward
    margin TRL reports on the validation pairs (kto: loss and margin); for grpo the mean reward
    of greedy answers to the validation tasks before and after training."""
    config_class, trainer_class = _trainer_classes(cfg.method)
    grpo = cfg.method == "grpo"
    if grpo:
        from pedigree.train.rewards import reward_functions

        before = _greedy_reward(policy, tokenizer, validation["task"], cfg)
    with tempfile.TemporaryDirectory(prefix="pedigree-align-") as scratch:
        args = config_class(
            output_dir=str(store.dir) if store else scratch,
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            beta=cfg.beta,
            eval_strategy="no",
            logging_steps=max(1, min(10, cfg.max_steps // 4)),
            **_method_args(cfg),
            **run_settings(seed, cfg.save_steps),
        )
        data = ({"reward_funcs": reward_functions(cfg.grpo)[0]} if grpo else
                {"eval_dataset": _dataset(cfg.method, validation, seed)})
        trainer = trainer_class(
            model=policy,
            args=args,
            train_dataset=_dataset(cfg.method, train, seed),
            processing_class=tokenizer,
            peft_config=peft_lora(cfg.lora),
            callbacks=[store.callback()] if store else None,
            **data,
        )
        fit(trainer, store, "align")
        if grpo:
            after = _greedy_reward(trainer.model, tokenizer, validation["task"], cfg)
            metrics = {f"val_{k}": v for k, v in after.items()}
            metrics |= {f"val_{k}_before": v for k, v in before.items()}
        else:
            evaluated = trainer.evaluate()
            metrics = {"val_loss": float(evaluated["eval_loss"])}
            for key, name in (("eval_rewards/accuracies", "val_preference_accuracy"),
                              ("eval_rewards/margins", "val_reward_margin")):
                if key in evaluated:
                    metrics[name] = float(evaluated[key])
    return trainer.model, metrics, trainer_log(trainer.state.log_history, CURVE_KEYS)


def _greedy_reward(model, tokenizer, rows: list[dict[str, Any]], cfg: AlignConfig
                   ) -> dict[str, float]:
    """The rewards of the model's greedy answers to task `rows`: sampling-free, so before and
    after compare the policy, not the dice."""
    from pedigree.model.measure import greedy_answers
    from pedigree.train.rewards import mean_reward

    answers = greedy_answers(model, tokenizer, [r["prompt"] for r in rows],
                             cfg.grpo.max_completion_length, cfg.batch_size)
    return mean_reward(rows, answers, cfg.grpo)

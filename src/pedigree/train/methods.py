"""How trainable parameters enter the model: an adapter family of PEFT (LoRA, QLoRA, DoRA, IA3,
LoHa, LoKr, VeRA, AdaLoRA; the soft prompts: prompt tuning, prefix tuning, p-tuning) or partial
and full fine-tuning (base weights train directly).

`prepare_model` returns the model to train and, for the adapter methods, the PEFT config the
trainer wraps it with; `method_callbacks` and `prepare_trainer` add what a method needs from the
trainer (AdaLoRA's rank budget, LoRA+'s optimizer, PiSSA's and OLoRA's initial adapter). What
training leaves behind is written by `model.trained.save_trained`.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from pedigree.config import (
    LORA_METHODS,
    SOFT_PROMPT_METHODS,
    LoraConfig,
    PartialConfig,
    SFTConfig,
    SoftPromptConfig,
)
from pedigree.errors import PedigreeError
from pedigree.model.load import load_4bit, load_causal_lm
from pedigree.model.trained import remember_initial_adapter

# sft.lora.init -> PEFT's init_lora_weights
LORA_INITS = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}
# Inits that move part of each base weight into the adapter: the trained adapter is saved
# relative to the original base (model/trained.py), which needs the initial adapter.
BASE_MOVING_INITS = ("pissa", "olora")


class MethodError(PedigreeError, ValueError):
    """A method setting that does not fit the model (no module matches, no list of blocks)."""


def peft_lora(cfg: LoraConfig, dora: bool = False, init: str = "default"):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.use_rslora,
        use_dora=dora,
        init_lora_weights=LORA_INITS[init],
        task_type="CAUSAL_LM",
    )


def peft_config(cfg: SFTConfig, base: Path | None = None):
    """The PEFT config of an adapter method; the families share sft.lora's keys where PEFT has
    the same notion. `base`: the base model's directory (prompt_tuning's init=text reads its
    tokenizer)."""
    import peft

    lora = cfg.lora
    if cfg.method in LORA_METHODS:
        return peft_lora(lora, dora=cfg.method == "dora", init=lora.init)
    if cfg.method == "ia3":
        return peft.IA3Config(target_modules=list(cfg.ia3.target_modules),
                              feedforward_modules=list(cfg.ia3.feedforward_modules),
                              task_type="CAUSAL_LM")
    if cfg.method in ("loha", "lokr"):
        family = peft.LoHaConfig if cfg.method == "loha" else peft.LoKrConfig
        # B (or the second factor) starts at zero: a no-op adapter, like LoRA's.
        return family(r=lora.r, alpha=lora.alpha, module_dropout=lora.dropout,
                      target_modules=lora.target_modules, use_effective_conv2d=False,
                      init_weights=True, task_type="CAUSAL_LM", **(
                          {"rank_dropout_scale": False} if cfg.method == "lokr" else {}))
    if cfg.method == "vera":
        # One pair of frozen random projections, sized for the largest target and sliced for
        # the others; they are saved with the adapter (save_projection), so reloading does not
        # depend on PEFT regenerating them from the seed.
        return peft.VeraConfig(r=lora.r, target_modules=lora.target_modules,
                               vera_dropout=lora.dropout, save_projection=True,
                               projection_prng_key=0, task_type="CAUSAL_LM")
    if cfg.method in SOFT_PROMPT_METHODS:
        return soft_prompt_config(cfg.method, cfg.soft_prompt, base)
    if cfg.method == "adalora":
        tinit, tfinal = cfg.adalora.schedule(cfg.max_steps)
        return peft.AdaLoraConfig(
            init_r=cfg.adalora.init_r, target_r=lora.r, lora_alpha=lora.alpha,
            lora_dropout=lora.dropout, target_modules=lora.target_modules,
            total_step=cfg.max_steps, tinit=tinit, tfinal=tfinal, deltaT=cfg.adalora.interval,
            orth_reg_weight=cfg.adalora.orth_reg_weight, task_type="CAUSAL_LM")
    return None


# sft.soft_prompt.init -> PEFT's PromptTuningInit
PROMPT_INITS = {"text": "TEXT", "sample_vocab": "SAMPLE_VOCAB", "random": "RANDOM"}


def soft_prompt_config(method: str, cfg: SoftPromptConfig, base: Path | None):
    """PEFT's prompt-learning config of a soft-prompt method. The sizes of the model (layers,
    heads, width) are filled in by PEFT from the model it wraps."""
    import peft

    common = {"num_virtual_tokens": cfg.num_virtual_tokens, "task_type": "CAUSAL_LM"}
    if method == "prompt_tuning":
        text = cfg.init == "text"
        if text and base is None:
            raise MethodError("sft.soft_prompt.init=text needs the base model's tokenizer")
        return peft.PromptTuningConfig(
            prompt_tuning_init=PROMPT_INITS[cfg.init],
            prompt_tuning_init_text=cfg.init_text if text else None,
            tokenizer_name_or_path=Path(base).as_posix() if text else None, **common)
    if method == "prefix_tuning":
        return peft.PrefixTuningConfig(
            prefix_projection=cfg.prefix_projection, encoder_hidden_size=cfg.encoder_hidden_size,
            **common)  # random keys and values: zero ones started worse (micro model: 5.32 vs 5.27)
    return peft.PromptEncoderConfig(
        encoder_reparameterization_type=cfg.encoder.upper(),
        encoder_hidden_size=cfg.encoder_hidden_size, encoder_dropout=cfg.encoder_dropout,
        **common)


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA's rank allocation, once per optimizer step: after `optimizer.step()`, while the
    gradients it scores importance with are still there (transformers calls `on_optimizer_step`
    before `zero_grad`), with the step's 0-based index as PEFT counts it. Its orthogonality
    penalty is a training loss: evaluation reports the plain validation loss, comparable with
    the other methods'."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        _penalty_in_training_only(model.base_model)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        model.base_model.update_and_allocate(state.global_step)


def _penalty_in_training_only(tuner) -> None:
    """PEFT adds AdaLoRA's orthogonality penalty to every loss the model returns, evaluation's
    too: switch it off around forward passes in eval mode."""
    if getattr(tuner, "_pedigree_penalty_hooks", False):
        return
    config = tuner.peft_config[tuner.trainable_adapter_name]
    weight = config.orth_reg_weight

    def before(module, args, kwargs):
        config.orth_reg_weight = weight if module.training else 0.0

    def after(module, args, kwargs, output):
        config.orth_reg_weight = weight

    tuner.register_forward_pre_hook(before, with_kwargs=True)
    tuner.register_forward_hook(after, with_kwargs=True)
    tuner._pedigree_penalty_hooks = True


def resumable(cfg: SFTConfig) -> bool:
    """Whether a run can resume from its checkpoints. AdaLoRA's cannot: PEFT saves them at the
    ranks pruned so far, which the model in training (every target at init_r) does not load,
    and the importance scores behind the pruning are not saved; it trains without checkpoints."""
    return cfg.method != "adalora"


def method_callbacks(cfg: SFTConfig) -> list:
    """The TrainerCallbacks a method needs."""
    return [AdaLoraBudget()] if cfg.method == "adalora" else []


def prepare_trainer(trainer, cfg: SFTConfig) -> None:
    """What a method needs once the trainer has wrapped the model in its adapter: LoRA+'s
    optimizer (B matrices at learning_rate * plus_lr_ratio), and the initial adapter of PiSSA
    and OLoRA (kept in memory for save_trained)."""
    if cfg.lora.plus_lr_ratio is not None and cfg.method in LORA_METHODS:
        trainer.optimizer = loraplus_optimizer(trainer.model, trainer.args,
                                               cfg.lora.plus_lr_ratio)
    if cfg.method == "lora" and cfg.lora.init in BASE_MOVING_INITS:
        remember_initial_adapter(trainer.model)


def loraplus_optimizer(model, args, ratio: float):
    """The trainer's own optimizer (class, betas, eps, weight decay from `args`), with LoRA+'s
    parameter groups (PEFT create_loraplus_optimizer); the trainer's scheduler drives every
    group's rate by the same factor, so B stays at `ratio` times A's rate."""
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = dict(kwargs)
    lr = kwargs.pop("lr", args.learning_rate)
    return create_loraplus_optimizer(model, optimizer_cls, lr=lr, loraplus_lr_ratio=ratio,
                                     weight_decay=args.weight_decay, **kwargs)


def unfreeze(model, cfg: PartialConfig) -> list[str]:
    """Freeze everything, then unfreeze the last blocks and the named modules; their names."""
    prefix, count = _blocks(model)
    patterns = [*cfg.modules,
                *(f"{prefix}.{i}" for i in range(max(count - cfg.last_blocks, 0), count))]
    for param in model.parameters():
        param.requires_grad_(False)
    chosen = []
    names = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        matched = [n for n in names if n == pattern or fnmatch.fnmatchcase(n, pattern)]
        if not matched:
            raise MethodError(
                f"sft.partial.modules: {pattern!r} matches no module of the model "
                f"(top-level modules: {sorted({n.split('.')[0] for n in names})})"
            )
        for name in matched:
            model.get_submodule(name).requires_grad_(True)
        chosen.extend(matched)
    return chosen


def _blocks(model) -> tuple[str, int]:
    """The name and length of the transformer blocks: the model's longest ModuleList."""
    import torch

    lists = [(name, len(m)) for name, m in model.named_modules()
             if isinstance(m, torch.nn.ModuleList)]
    if not lists:
        raise MethodError("sft.partial.last_blocks: the model has no list of blocks")
    return max(lists, key=lambda item: item[1])


def prepare_model(base: Path, cfg: SFTConfig, trust_remote_code: bool = False):
    """(model, peft config or None, details) for `cfg.method`."""
    if cfg.method == "qlora":
        model = load_4bit(base, cfg.quant, trust_remote_code)
    else:
        model = load_causal_lm(base, trust_remote_code)
    details: dict[str, Any] = {"method": cfg.method}
    config = peft_config(cfg, base)
    if config is not None:
        return model, config, details
    if cfg.method == "partial":
        details["trained_modules"] = unfreeze(model, cfg.partial)
    else:
        model.requires_grad_(True)
    return model, None, details


def parameter_counts(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked size."""
    if hasattr(model, "get_nb_trainable_parameters"):  # PEFT knows how 4-bit weights pack
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return (sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))

"""How trainable parameters enter the model: LoRA, QLoRA, DoRA (adapters) or partial and full
fine-tuning (base weights train directly).

`prepare_model` returns the model to train and, for the adapter methods, the PEFT config the
trainer wraps it with. What training leaves behind is written by `model.trained.save_trained`.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from pedigree.config import ADAPTER_METHODS, LoraConfig, PartialConfig, SFTConfig
from pedigree.errors import PedigreeError
from pedigree.model.load import load_4bit, load_causal_lm


class MethodError(PedigreeError, ValueError):
    """A method setting that does not fit the model (no module matches, no list of blocks)."""


def peft_lora(cfg: LoraConfig, dora: bool = False):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.target_modules,
        use_rslora=cfg.use_rslora,
        use_dora=dora,
        task_type="CAUSAL_LM",
    )






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
    if cfg.method in ADAPTER_METHODS:
        return model, peft_lora(cfg.lora, dora=cfg.method == "dora"), details
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

"""Folding the policy adapters into the base, with a logit check that the fold changed nothing.

The policy is a chain (model/policy.py): the SFT adapter, then (when the align stage ran) its
adapter trained on the SFT-merged weights. LoRA updates add up, so the merged model must equal the base
with every adapter of the chain active at once; the check compares exactly that, on held-out rows.
An adapter of another family (IA3 rescales, LoHa and LoKr are not B @ A, AdaLoRA and VeRA hold
other tensors) cannot be active together with a LoRA in one PEFT model: the chain is folded stack
by stack (`adapter_stacks`), each fold with its own check, which is what the align stage trained
on (the SFT adapter folded in). When SFT trained base weights directly (partial or full), the
caller passes the base with those weights applied, and only the adapters on top (if any) are
folded in.

A soft prompt (prompt tuning, prefix tuning, p-tuning) folds into no weight: the deployable
model is the base plus the adapter. Merge then writes the base weights (in merge.dtype) with the
soft prompt in a `soft_prompt/` subdirectory (`save_merged`; `model.load.load_deployable` reads
both back), and its check compares that pair, in merge.dtype, with the policy in fp32. The align stage cannot
train on top of a soft prompt (config.Params refuses it), so it is the chain's only adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pedigree.config import CombineConfig
from pedigree.errors import PedigreeError
from pedigree.model.load import (
    SOFT_PROMPT_DIR,
    check_adapter_dir,
    is_soft_prompt,
    peft_type,
)
from pedigree.model.measure import chat_logits, compare_logits

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Default max |logit diff| by saved dtype. fp32: the fold's own rounding, which grows with depth
# and width: ~1e-5 on the 4-layer tiny model, 9.3e-5 on SmolLM2-135M (30 layers, SFT + DPO
# folded); a missed or mis-scaled adapter moves logits by 1e-2 or more. bf16 keeps 8 bits of
# mantissa, fp16 11: on the tiny model the merged DPO policy differed by 0.14 (bf16) and 0.017
# (fp16) from fp32 base + adapters; larger models accumulate more.
DEFAULT_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.5, "float16": 0.1}


class ParityError(PedigreeError, RuntimeError):
    """The merged model does not behave like base + adapters; nothing may use it."""


def adapter_stacks(adapters: list[Path]) -> list[list[Path]]:
    """The chain in the groups PEFT holds active at once: consecutive LoRA adapters (their
    updates add up); an adapter of any other family stands alone."""
    stacks: list[list[Path]] = []
    for path in adapters:
        check_adapter_dir(Path(path))
        lora = peft_type(path) == "LORA"
        if lora and stacks and peft_type(stacks[-1][-1]) == "LORA":
            stacks[-1].append(Path(path))
        else:
            stacks.append([Path(path)])
    return stacks


def _activate(model, stack: list[Path]):
    """`model` with the adapters of one stack loaded and active together, unmerged."""
    from peft import PeftModel

    names = [f"adapter{i}" for i in range(len(stack))]
    model = PeftModel.from_pretrained(model, str(stack[0]), adapter_name=names[0])
    for name, path in zip(names[1:], stack[1:], strict=True):
        model.load_adapter(str(path), adapter_name=name)
    model.base_model.set_adapter(names)  # LoRA layers sum the deltas of all active adapters
    return model, names


def with_adapters(base, adapters: list[Path]):
    """The base (fp32) with every adapter of the chain: the last stack active, unmerged; the
    stacks before it (adapters of a family other than LoRA) folded in, as the align stage
    trained on them."""
    if not adapters:
        return base, []
    stacks = adapter_stacks(adapters)
    model = base
    for stack in stacks[:-1]:
        model, names = _activate(model, stack)
        model = model.merge_and_unload(adapter_names=names)
    return _activate(model, stacks[-1])


class CombineError(PedigreeError, ValueError):
    """A weighted merge that cannot be made as configured."""


def combine_adapters(model, names: list[str], cfg: CombineConfig) -> list[str]:
    """Replace the active adapters by one weighted combination of them; its name, as a list."""
    if len(cfg.weights) != len(names):
        raise CombineError(
            f"merge.combine.weights: {len(cfg.weights)} weights for {len(names)} adapters "
            f"(the policy's {len(names) - len(cfg.adapters)} then merge.combine.adapters)"
        )
    if cfg.method in ("ties", "dare_linear", "dare_ties") and cfg.density is None:
        raise CombineError(f"merge.combine.density: required by method {cfg.method}")
    ranks = {model.peft_config[n].r for n in names}
    if cfg.method == "linear" and len(ranks) > 1:
        raise CombineError(f"merge.combine.method=linear needs equal ranks, got {sorted(ranks)}; "
                           "use cat or ties")
    model.add_weighted_adapter(adapters=names, weights=cfg.weights, adapter_name="combined",
                               combination_type=cfg.method, density=cfg.density)
    model.set_adapter("combined")
    return ["combined"]


def merge_policy(
    base, tokenizer, adapters: list[Path], rows: list[dict[str, Any]], dtype: str,
    tolerance: float | None, max_length: int, combine: CombineConfig | None = None,
) -> tuple[Any, dict[str, Any]]:
    """(merged model in `dtype`, parity report); raises ParityError past `tolerance` (None: the
    dtype's default). With `combine`, the adapters (plus combine.adapters) are first replaced by
    their weighted merge, and the parity check is against base + that merged adapter."""
    tolerance = tolerance if tolerance is not None else DEFAULT_TOLERANCE[dtype]
    if combine is not None:
        adapters = [*adapters, *(Path(a) for a in combine.adapters)]
    soft = [a for a in adapters if is_soft_prompt(a)]
    if soft and combine is None:
        if len(adapters) > 1:
            raise MergeError(f"{soft[0]}: a soft prompt cannot be merged with other adapters "
                             f"(the chain is {[str(a) for a in adapters]}); it must be the only "
                             "one: set align.enabled=false")
        merged, parity = _keep_soft_prompt(base, soft[0], tokenizer, rows, max_length,
                                           DTYPES[dtype])
        parity.update({"dtype": dtype, "tolerance": tolerance, "adapters": 1, "combine": None})
        _check_tolerance(parity, tolerance, dtype)
        return merged, parity
    stacks = adapter_stacks(adapters) if adapters else [[]]
    families = sorted({peft_type(a) for a in adapters})
    if combine is not None and families != ["LORA"]:
        raise CombineError(
            f"merge.combine: PEFT's weighted merge (add_weighted_adapter) takes LoRA adapters only "
            f"(lora, qlora, dora), got {families}: set merge.combine=null, or train the SFT "
            "adapter with sft=lora")
    model, folds = base, []
    for stack in stacks[:-1]:  # another family below the last stack: folded first, in fp32
        model, names = _activate(model, stack)
        model, parity = _fold(model, names, tokenizer, rows, max_length, torch.float32)
        folds.append(parity)
    model, names = _activate(model, stacks[-1]) if stacks[-1] else (model, [])
    if combine is not None:
        names = combine_adapters(model, names, combine)
    merged, parity = _fold(model, names, tokenizer, rows, max_length, DTYPES[dtype])
    if folds:  # the worst of the folds: each must pass
        folds.append(parity)
        parity = {"max_abs_logit_diff": max(f["max_abs_logit_diff"] for f in folds),
                  "mean_abs_logit_diff": max(f["mean_abs_logit_diff"] for f in folds),
                  "top1_agreement": min(f["top1_agreement"] for f in folds),
                  "tokens": parity["tokens"], "folds": folds}
    parity.update({"dtype": dtype, "tolerance": tolerance, "adapters": len(adapters),
                   "combine": combine.model_dump() if combine else None})
    _check_tolerance(parity, tolerance, dtype)
    return merged, parity


def _check_tolerance(parity: dict[str, Any], tolerance: float, dtype: str) -> None:
    if parity["max_abs_logit_diff"] > tolerance:
        raise ParityError(
            f"merged model differs from base+adapters: max |logit diff| "
            f"{parity['max_abs_logit_diff']:.3g} > merge.parity_tolerance={tolerance} "
            f"(dtype {dtype}); raise the tolerance for low-precision dtypes or investigate"
        )


class MergeError(PedigreeError, ValueError):
    """A policy chain that cannot be merged into one deployable model."""


def _keep_soft_prompt(base, adapter: Path, tokenizer, rows, max_length: int, dtype):
    """(base + soft prompt in `dtype`, as a PeftModel; its parity with the policy in fp32).
    Nothing is folded: the check measures what casting base and prompt to `dtype` changes."""
    from peft import PeftModel

    check_adapter_dir(adapter)
    policy = PeftModel.from_pretrained(base, str(adapter))
    reference, mask = chat_logits(policy, tokenizer, rows, max_length)
    deployable = policy.to(dtype)  # the same weights, as save_merged writes them
    candidate, _ = chat_logits(deployable, tokenizer, rows, max_length)
    parity = compare_logits(reference, candidate, mask)
    parity["soft_prompt"] = {"peft_type": peft_type(adapter), "folded": False,
                             "dir": SOFT_PROMPT_DIR,
                             "deploy": "the base weights plus the soft prompt in "
                                       f"{SOFT_PROMPT_DIR}/ (PEFT PeftModel.from_pretrained)"}
    return deployable, parity


def save_merged(model, out: Path, max_shard_size: str | int) -> None:
    """The merged model's weights in `out`; for a soft-prompt policy, the base weights there and
    the soft prompt in out/soft_prompt/ (PEFT layout)."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        model.save_pretrained(out, max_shard_size=max_shard_size)  # + generation_config
        return
    model.get_base_model().save_pretrained(out, max_shard_size=max_shard_size)
    model.save_pretrained(out / SOFT_PROMPT_DIR)
    (out / SOFT_PROMPT_DIR / "README.md").unlink(missing_ok=True)  # PEFT's empty card template


def _fold(model, names: list[str], tokenizer, rows, max_length: int, dtype):
    """(the active adapters merged into the weights, cast to `dtype`; their logit parity)."""
    # The reference logits come first: merging rewrites the same base weights in place.
    reference, mask = chat_logits(model, tokenizer, rows, max_length)
    merged = model.merge_and_unload(adapter_names=names) if names else model
    merged = merged.to(dtype)
    candidate, _ = chat_logits(merged, tokenizer, rows, max_length)
    return merged, compare_logits(reference, candidate, mask)

"""The policy a pipeline run produces, as a chain over the base model.

    base  ->  SFT (trained weights laid over the base, or an adapter)  ->  DPO adapter (optional)

`models/dpo/policy.json` records the chain: `weights` names the directory whose trained tensors
replace base weights (partial or full SFT), `adapters` the LoRA/DoRA adapters active on top, in
training order. Merge, eval and quantize build models from it, never from assumptions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pedigree.train.load import load_causal_lm
from pedigree.train.methods import apply_trained, trained_kind


def policy_chain(sft: Path, dpo: Path | None) -> dict[str, Any]:
    weights = trained_kind(sft) == "weights"
    adapters = ([] if weights else [sft.as_posix()]) + ([dpo.as_posix()] if dpo else [])
    return {"weights": sft.as_posix() if weights else None, "adapters": adapters,
            "dpo": dpo is not None}


def policy_base(base: Path, policy: dict[str, Any], trust_remote_code: bool = False):
    """The base with the chain's trained weights applied: what its adapters sit on."""
    model = load_causal_lm(base, trust_remote_code)
    if policy.get("weights"):
        apply_trained(model, Path(policy["weights"]))
    return model


def load_sft(base: Path, sft: Path, trust_remote_code: bool = False):
    """The SFT model as trained: base + adapter (unmerged), or base with its trained weights."""
    model = load_causal_lm(base, trust_remote_code)
    if trained_kind(sft) == "weights":
        return apply_trained(model, sft)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(sft))


def describe(policy: dict[str, Any]) -> str:
    parts = ["models/base", *([f"{policy['weights']} (weights)"] if policy.get("weights") else []),
             *policy["adapters"]]
    return " + ".join(parts)

"""The policy a pipeline run produces, as a chain over the base model.

    base  ->  SFT (trained weights laid over the base, or an adapter)
          ->  alignment adapter (optional: dpo, orpo, simpo, kto or grpo)

`models/align/policy.json` (`records.Policy`) records the chain: `weights` names the directory
whose trained tensors replace base weights (partial or full SFT), `adapters` the PEFT adapters on
top (the SFT adapter of any family, then the alignment LoRA), in training order, `align` the
alignment method when it ran, and `quant` the 4-bit settings when SFT was QLoRA. Merge, eval and
the align stage build models from it, never from assumptions.

A QLoRA adapter trained against the 4-bit base, so by default it sits on that base dequantized to
fp32 (the weights it saw), not on the original weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pedigree.config import QuantConfig
from pedigree.model.load import check_adapter_dir, load_causal_lm, load_dequantized
from pedigree.model.trained import apply_trained, training_info
from pedigree.records import POLICY_VERSION, Policy

QLoRABase = Literal["dequantized", "original"]


def policy_chain(sft: Path, aligned: Path | None = None, method: str | None = None) -> Policy:
    """The chain of the SFT output `sft`, then the adapter in `aligned` trained by `method`."""
    info = training_info(sft)
    weights = info["kind"] == "weights"
    adapters = ([] if weights else [sft.as_posix()]) + ([aligned.as_posix()] if aligned else [])
    return Policy(schema_version=POLICY_VERSION, sft_method=info["method"],
                  quant=info.get("quant"), weights=sft.as_posix() if weights else None,
                  adapters=adapters, align=method if aligned else None)


def base_kind(policy: Policy, qlora_base: QLoRABase = "dequantized") -> str:
    """Which weights the chain sits on: "original", or e.g. "dequantized-nf4" for QLoRA."""
    quant = policy.get("quant")
    if quant and qlora_base == "dequantized":
        return f"dequantized-{quant['quant_type']}"
    return "original"


def policy_base(base: Path, policy: Policy, trust_remote_code: bool = False,
                qlora_base: QLoRABase = "dequantized"):
    """The base the chain's adapters sit on, with any trained weights applied."""
    if base_kind(policy, qlora_base) != "original":
        model = load_dequantized(base, QuantConfig(**policy["quant"]), trust_remote_code)
    else:
        model = load_causal_lm(base, trust_remote_code)
    if policy.get("weights"):
        apply_trained(model, Path(policy["weights"]))
    return model


def load_sft(base: Path, sft: Path, trust_remote_code: bool = False):
    """The SFT model as trained: its base + adapter (unmerged), or base with trained weights."""
    policy = policy_chain(sft, None)
    if not policy["weights"]:
        check_adapter_dir(sft)  # before the base is loaded: fail fast
    model = policy_base(base, policy, trust_remote_code)
    if policy["weights"]:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(sft))


def describe(policy: Policy, base: Path) -> str:
    """The chain in one line, e.g. `models/base + models/sft + models/align (dpo)`."""
    on = base.as_posix() + (f" ({base_kind(policy)})" if policy.get("quant") else "")
    parts = [on, *([f"{policy['weights']} (weights)"] if policy.get("weights") else []),
             *policy["adapters"]]
    return " + ".join(parts) + (f" ({policy['align']})" if policy["align"] else "")

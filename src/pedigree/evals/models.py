"""Every model the pipeline made, as loaders: what the eval stage (and bench/) evaluates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pedigree.export.merge import with_adapters
from pedigree.export.quantize import load_format
from pedigree.files import read_json
from pedigree.model.load import load_causal_lm, load_deployable
from pedigree.model.policy import load_sft, policy_base
from pedigree.pipeline import stage_out, start_model
from pedigree.records import read_policy


def pipeline_models(root: Path, trust_remote_code: bool = False) -> dict[str, Callable[[], Any]]:
    """{name: loader}: base, cpt (when continued pretraining ran), sft, aligned (when the align
    stage trained), merged and each quantized format; a soft-prompt policy's merged model and
    formats with their soft prompt applied (what would be deployed). "base" is always the
    original base, so gains and forgetting are measured from it."""
    out = {stage: root / stage_out(stage, root) for stage in ("base", "sft", "align", "merge",
                                                             "quantize")}
    start, trust = root / start_model(root), trust_remote_code  # what SFT started from
    base = out["base"]
    policy = read_policy(out["align"])
    quantized = read_json(out["quantize"] / "report.json")
    models: dict[str, Callable[[], Any]] = {
        "base": lambda: load_causal_lm(base, trust),
        **({"cpt": lambda: load_causal_lm(start, trust)} if start != base else {}),
        "sft": lambda: load_sft(start, out["sft"], trust),
        "merged": lambda: load_deployable(out["merge"], trust),  # + its soft prompt, if any
    }
    if policy["align"]:
        models["aligned"] = lambda: with_adapters(policy_base(start, policy, trust),
                                              [root / a for a in policy["adapters"]])[0]
    for fmt in quantized:
        models[fmt] = lambda fmt=fmt: load_format(fmt, out["quantize"])
    return models

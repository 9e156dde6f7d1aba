"""Every model the pipeline made, as loaders: what the eval stage (and bench/) evaluates."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pedigree.export.merge import with_adapters
from pedigree.export.quantize import load_format
from pedigree.train.load import load_causal_lm
from pedigree.train.policy import load_sft, policy_base


def pipeline_models(root: Path, trust_remote_code: bool = False) -> dict[str, Callable[[], Any]]:
    """{name: loader}: base, sft, merged, dpo (when it trained) and each quantized format."""
    base, trust = root / "models/base", trust_remote_code
    policy = json.loads((root / "models/dpo/policy.json").read_text())
    quantized = json.loads((root / "models/quantized/report.json").read_text())
    models: dict[str, Callable[[], Any]] = {
        "base": lambda: load_causal_lm(base, trust),
        "sft": lambda: load_sft(base, root / "models/sft", trust),
        "merged": lambda: load_causal_lm(root / "models/merged", trust),
    }
    if policy["dpo"]:
        models["dpo"] = lambda: with_adapters(policy_base(base, policy, trust),
                                              [Path(a) for a in policy["adapters"]])[0]
    for fmt in quantized:
        models[fmt] = lambda fmt=fmt: load_format(fmt, root / "models/quantized")
    return models

"""Stage `merge`: fold the policy adapters into the base (or SFT-trained weights) -> models/merged/.

Run alone:  dvc repro merge       (or: python stages/merge.py)

Fails, and publishes nothing, when the merged model's logits differ from base + adapters by more
than merge.parity_tolerance on held-out rows.
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.export.merge import merge_policy
from pedigree.stage import stage_run
from pedigree.train.load import load_tokenizer
from pedigree.train.policy import policy_base

params = load_params()
cfg, base = params.merge, Path("models/base")

with stage_run("merge", out="models/merged",
               inputs=["models/base", "models/sft", "models/dpo", "data/split"],
               params=["model", "merge", "tracking"]) as run:
    policy = json.loads(Path("models/dpo/policy.json").read_text())
    tokenizer = load_tokenizer(Path("models/sft"), params.model.trust_remote_code)
    rows = read_jsonl(Path("data/split/sft_validation.jsonl"))[: cfg.parity_rows]

    merged, parity = merge_policy(
        policy_base(base, policy, params.model.trust_remote_code), tokenizer,
        [Path(a) for a in policy["adapters"]], rows, cfg.dtype, cfg.parity_tolerance,
        cfg.max_length,
    )
    merged.save_pretrained(run.dir)
    tokenizer.save_pretrained(run.dir)
    (run.dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    run.details.update(policy=policy, parity=parity)
    run.metrics = {k: parity[k] for k in ("max_abs_logit_diff", "top1_agreement")}
    run.artifacts = ["parity.json"]
    print(f"[merge] max |logit diff| {parity['max_abs_logit_diff']:.2e}, "
          f"top-1 agreement {parity['top1_agreement']:.4f}")

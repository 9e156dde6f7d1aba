"""Stage `dpo`: LoRA preference tuning of the SFT policy -> models/dpo/ (when dpo.enabled).

Run alone:  dvc repro dpo         (or: python stages/dpo.py)

policy.json names the adapters that make the final policy, in order: the SFT adapter, then the DPO
adapter when it ran. With dpo.enabled=false no training happens and the policy is the SFT model.
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.stage import stage_run

params = load_params()
base, sft = Path("models/base"), Path("models/sft")

with stage_run("dpo", out="models/dpo", inputs=["models/base", "models/sft", "data/split"],
               params=["seed", "model", "dpo", "tracking"]) as run:
    policy = {"adapters": ["models/sft"], "dpo": False}
    if params.dpo.enabled:
        from peft import PeftModel

        from pedigree.train.dpo import train_dpo
        from pedigree.train.load import load_causal_lm, load_tokenizer

        trust = params.model.trust_remote_code
        tokenizer = load_tokenizer(base, trust)
        # Fold the SFT adapter in: DPO starts from, and is tied to, the SFT policy.
        sft_policy = PeftModel.from_pretrained(load_causal_lm(base, trust), sft).merge_and_unload()
        train = read_jsonl(Path("data/split/preference_train.jsonl"))
        validation = read_jsonl(Path("data/split/preference_validation.jsonl"))

        adapter, metrics, curve = train_dpo(sft_policy, tokenizer, train, validation,
                                            params.dpo, params.seed)
        adapter.save_pretrained(run.dir)
        (run.dir / "README.md").unlink()  # PEFT's empty card template; issue 5 writes real cards
        (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        run.metrics, run.history = metrics, curve
        run.artifacts = ["metrics.json", "adapter_config.json", "adapter_model.safetensors"]
        policy = {"adapters": ["models/sft", "models/dpo"], "dpo": True}
    (run.dir / "policy.json").write_text(json.dumps(policy, indent=2) + "\n")
    run.details["policy"] = policy
    print(f"[dpo] policy = {' + '.join(policy['adapters'])} on models/base")

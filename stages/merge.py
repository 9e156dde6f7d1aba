"""Stage `merge`: fold the policy into its base -> models/merged/ (safetensors, tokenizer, chat
template, generation config, model card).

Run alone:  dvc repro merge       (or: python stages/merge.py)

The fold is done in fp32; the result is saved in merge.dtype. Fails, and publishes nothing, when
the merged model's logits differ from base + adapters by more than the parity tolerance on
held-out rows. A QLoRA adapter folds onto the dequantized 4-bit base it trained against unless
merge.qlora_base=original; the manifest says which. A soft prompt (sft=prompt_tuning,
prefix_tuning, p_tuning) folds into nothing: the output is the base weights plus the adapter in
models/merged/soft_prompt/, and parity.json says so ("soft_prompt": folded false).
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.export.card import model_card
from pedigree.export.merge import merge_policy, save_merged
from pedigree.files import read_json
from pedigree.lineage import merge_roots
from pedigree.model.load import load_tokenizer
from pedigree.model.policy import base_kind, policy_base
from pedigree.pipeline import stage_out, start_model
from pedigree.records import read_policy
from pedigree.stage import stage_run

params = load_params()
cfg, trust = params.merge, params.model.trust_remote_code
# base: what SFT started from (models/cpt when continued pretraining ran)
base, sft, align = start_model(), stage_out("sft"), stage_out("align")

# Adapters named in merge.combine are inputs too: their hashes go into the manifest.
extra = cfg.combine.adapters if cfg.combine else []
with stage_run("merge", extra_inputs=extra) as run:
    policy = read_policy(align)
    tokenizer = load_tokenizer(sft, trust)  # the template the policy trained with
    rows = read_jsonl(stage_out("split") / "sft_validation.jsonl")[: cfg.parity_rows]

    merged, parity = merge_policy(
        policy_base(base, policy, trust, cfg.qlora_base), tokenizer,
        [Path(a) for a in policy["adapters"]], rows, cfg.dtype, cfg.parity_tolerance,
        cfg.max_length, cfg.combine,
    )
    save_merged(merged, run.dir, cfg.max_shard_size)  # a soft prompt: base + soft_prompt/
    tokenizer.save_pretrained(run.dir)
    (run.dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    training = {stage: read_json(out / "metrics.json")
                for stage, out in (("sft", sft), ("align", align))
                if (out / "metrics.json").is_file()}
    merge_base = base_kind(policy, cfg.qlora_base)
    params_hashes = {m["stage"]: m["params_sha256"] for m in run.upstream
                     if m["stage"] in ("base", "cpt", "sft", "align")}
    (run.dir / "README.md").write_text(model_card(
        merge_roots(run.upstream, {}), policy, params_hashes, training, parity, merge_base))
    run.details.update(policy=policy, parity=parity, merge_base=merge_base)
    run.metrics = {k: parity[k] for k in ("max_abs_logit_diff", "top1_agreement")}
    run.artifacts = ["parity.json", "README.md"]
    if parity.get("soft_prompt"):
        print(f"[merge] {parity['soft_prompt']['peft_type']}: nothing to fold; the model is the "
              f"base weights plus {run.dir}/{parity['soft_prompt']['dir']}/")
    print(f"[merge] onto the {merge_base} base: max |logit diff| "
          f"{parity['max_abs_logit_diff']:.2e}, top-1 agreement {parity['top1_agreement']:.4f}")

"""Stage `align`: alignment of the SFT policy with a LoRA -> models/align/ (when align.enabled).

Run alone:  dvc repro align       (or: python stages/align.py)
Method:     dvc exp run -S align.method=orpo     (dpo, orpo, simpo, kto, grpo)

Each method learns from its kinds of split rows (train.align.METHOD_KINDS): the paired methods
from preference pairs, kto from unpaired rows and pairs, grpo from task prompts.

policy.json records the chain that makes the final policy (model/policy.py): the SFT result
(trained weights or an adapter), then the alignment adapter when it ran, with its method. With
align.enabled=false no training happens and the policy is the SFT model.
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.errors import PedigreeError
from pedigree.launch import relaunch_under_accelerate
from pedigree.model.policy import describe, policy_chain
from pedigree.pipeline import stage_out, start_model
from pedigree.records import write_policy
from pedigree.stage import stage_run

params = load_params()
cfg = params.align
if cfg.enabled:
    relaunch_under_accelerate(params.accelerate)
# base: what SFT started from (models/cpt when continued pretraining ran)
base, sft, split = start_model(), stage_out("sft"), stage_out("split")

with stage_run("align") as run:
    policy = policy_chain(sft, None)
    if cfg.enabled:
        from pedigree.model.load import load_tokenizer
        from pedigree.model.policy import load_sft
        from pedigree.model.trained import save_trained
        from pedigree.train.align import METHOD_KINDS, train_align
        from pedigree.train.checkpoints import CheckpointStore, fingerprint
        from pedigree.train.trainer import curve_csv

        kinds = METHOD_KINDS[cfg.method]
        train, validation = ({kind: read_jsonl(path) if (path := split / f"{kind}_{side}.jsonl")
                              .exists() else [] for kind in kinds}
                             for side in ("train", "validation"))
        n_train, n_val = (sum(map(len, rows.values())) for rows in (train, validation))
        if not n_train or not n_val:
            raise PedigreeError(
                f"align.method={cfg.method} learns from {' and '.join(kinds)} rows, but the "
                f"split has {n_train} training and {n_val} validation ones ({split}/report.json;"
                f" curation's reasons are in {stage_out('curate')}/report.json): add such data "
                f"to {params.data.raw_dir}, choose another align.method, or set "
                "align.enabled=false")
        trust = params.model.trust_remote_code
        tokenizer = load_tokenizer(sft, trust)  # the chat template SFT trained with
        # Fold SFT in: alignment starts from (and dpo, kto are tied to) the SFT policy.
        sft_policy = load_sft(base, sft, trust)
        if hasattr(sft_policy, "merge_and_unload"):
            sft_policy = sft_policy.merge_and_unload()
        store = CheckpointStore(Path("checkpoints/align"),
                                fingerprint(run.input_hashes, run.recorded_params,
                                            run.code["source_sha256"]))

        adapter, metrics, curve = train_align(sft_policy, tokenizer, train, validation, cfg,
                                              params.seed, store)
        save_trained(adapter, run.dir, "lora")
        (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (run.dir / "train_loss.csv").write_text(curve_csv(curve, "loss"))
        run.metrics, run.history = metrics, curve
        run.artifacts = ["metrics.json", "train_loss.csv"]
        policy = policy_chain(sft, run.out, cfg.method)
    write_policy(policy, run.dir)
    run.details["policy"] = policy
    print(f"[align] policy = {describe(policy, base)}")
if cfg.enabled:
    store.clear()  # only once the output is published: a failure before keeps them for resume

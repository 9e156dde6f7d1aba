"""Stage `base`: resolve the base model into models/base/.

Run alone:  dvc repro base        (or, from the repository root: python stages/base.py)

model=tiny (the default) builds the embedded Llama: tokenizer, weights, short pretraining.
model.source=hub fetches model.id at the pinned model.revision; model.source=local copies
model.path. Either way only safetensors weights are accepted, and the base model's identity (id,
revision, sha256 of every file) becomes a root of every downstream manifest.
"""

from pathlib import Path

from pedigree.config import load_params
from pedigree.stage import stage_run
from pedigree.train.load import copy_model_files, fetch_hub_model, load_tokenizer, model_identity

params = load_params()
cfg = params.model
inputs = {"build": [cfg.build.corpus] if cfg.build else [], "local": [cfg.path], "hub": []}

with stage_run("base", out="models/base", inputs=inputs[cfg.source],
               params=["seed", "model", "tracking"]) as run:
    if cfg.source == "build":
        from pedigree.train.tiny import build_tiny

        report = build_tiny(cfg.build, params.seed, run.dir)
        run.history = [(step, {"pretrain_loss": loss}) for step, loss in report.pop("curve")]
        run.metrics.update(report)
        run.details["pretrain"] = report
    else:
        source = Path(cfg.path) if cfg.source == "local" else fetch_hub_model(cfg.id, cfg.revision)
        copy_model_files(source, run.dir)  # checks every file is whole, naming it at `source`
        # ...and the tokenizer loads (sft checks the chat template it trains with).
        load_tokenizer(source, cfg.trust_remote_code, require_template=False)
    run.roots["base_model"] = model_identity(cfg, run.dir)

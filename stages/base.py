"""Stage `base`: resolve the base model into models/base/.

Run alone:  dvc repro base        (or, from the repository root: python stages/base.py)

model=tiny builds the embedded Llama: tokenizer, weights, short pretraining. model.source=gguf
dequantizes a GGUF file (model.path, or a file inside the installed package model.gguf names) to
an fp32 safetensors checkpoint; model.source=hub fetches model.id at the pinned model.revision;
model.source=local copies model.path. Only safetensors weights are accepted, and the base model's
identity (id, revision or GGUF origin, sha256 of every file) becomes a root of every downstream
manifest.
"""

from pathlib import Path

from pedigree.config import load_params
from pedigree.model.load import copy_model_files, fetch_hub_model, load_tokenizer, model_identity
from pedigree.stage import stage_run

params = load_params()
cfg = params.model
# The files a param points at (dvc.yaml lists data/corpus only). A GGUF file inside a package lies
# outside the project: its sha256 is in the identity instead.
named = {"build": [cfg.build.corpus] if cfg.build else [], "local": [cfg.path], "hub": [],
         "gguf": [cfg.path] if cfg.path else []}

with stage_run("base", extra_inputs=named[cfg.source]) as run:
    gguf = None  # a GGUF base's origin, hash and quantization, for its identity
    if cfg.source == "build":
        from pedigree.train.tiny import build_tiny

        report = build_tiny(cfg.build, params.seed, run.dir)
        run.history = [(step, {"pretrain_loss": loss}) for step, loss in report.pop("curve")]
        run.metrics.update(report)
        run.details["pretrain"] = report
    elif cfg.source == "gguf":
        from pedigree.train.gguf_base import base_from_gguf

        gguf = base_from_gguf(cfg, run.dir)
        load_tokenizer(run.dir, cfg.trust_remote_code, require_template=False)
    else:
        source = Path(cfg.path) if cfg.source == "local" else fetch_hub_model(cfg.id, cfg.revision)
        copy_model_files(source, run.dir)  # checks every file is whole, naming it at `source`
        # ...and the tokenizer loads (sft checks the chat template it trains with).
        load_tokenizer(source, cfg.trust_remote_code, require_template=False)
    run.roots["base_model"] = model_identity(cfg, run.dir, gguf)

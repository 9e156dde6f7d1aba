"""Stage `cpt`: continued pretraining of models/base on plain text -> models/cpt/ (when
cpt.enabled).

Run alone:  dvc repro cpt         (or: python stages/cpt.py)
Turn on:    dvc exp run -S cpt.enabled=true      (the text: a .txt file in data/raw, one
                                                  document a line, or a source with format: text)

The text rows of data/split (curated like every other kind: dedup, decontamination, length
bounds) train every weight on the next-token loss. SFT then starts from models/cpt, and every
adapter downstream sits on it. With cpt.enabled=false the output holds only its lineage and
cpt.json saying it did not train, and SFT starts from models/base. Checkpoints go to
checkpoints/cpt/; a killed run resumes from the last one.
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.errors import PedigreeError
from pedigree.pipeline import stage_out
from pedigree.stage import stage_run

params = load_params()
cfg, trust = params.cpt, params.model.trust_remote_code
base, split = stage_out("base"), stage_out("split")

with stage_run("cpt") as run:
    (run.dir / "cpt.json").write_text(json.dumps({"trained": cfg.enabled}) + "\n")
    if cfg.enabled:
        from pedigree.model.load import load_causal_lm, load_tokenizer
        from pedigree.perf import measured
        from pedigree.train.checkpoints import CheckpointStore, fingerprint
        from pedigree.train.cpt import train_cpt
        from pedigree.train.trainer import curve_csv

        train, validation = ([row["text"] for row in read_jsonl(path)] if path.is_file() else []
                             for path in (split / "text_train.jsonl",
                                          split / "text_validation.jsonl"))
        if not train or not validation:
            raise PedigreeError(
                f"cpt.enabled=true, but the split has {len(train)} training and "
                f"{len(validation)} validation text rows ({split}/report.json; curation's "
                f"reasons are in {stage_out('curate')}/report.json): add plain text to "
                f"{params.data.raw_dir} (a .txt file, one document a line, or a source with "
                "format: text), or set cpt.enabled=false")
        tokenizer = load_tokenizer(base, trust)
        model = load_causal_lm(base, trust)
        store = CheckpointStore(Path("checkpoints/cpt"),
                                fingerprint(run.input_hashes, run.recorded_params,
                                            run.code["source_sha256"]))
        with measured() as perf:  # time and peak memory: to MLflow, not the output
            trained, metrics, curve = train_cpt(model, tokenizer, train, validation, cfg,
                                                params.seed, store)
        trained.save_pretrained(run.dir, safe_serialization=True)
        tokenizer.save_pretrained(run.dir)
        (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (run.dir / "train_loss.csv").write_text(curve_csv(curve, "loss"))
        (run.dir / "val_loss.csv").write_text(curve_csv(curve, "eval_loss"))
        run.metrics = {**metrics, "train_seconds": perf["seconds"],
                       "peak_rss_gib": perf["peak_rss_gib"]}
        run.history = curve
        run.artifacts = ["metrics.json", "train_loss.csv", "val_loss.csv"]
        print(f"[cpt] {metrics['train_tokens']:,.0f} tokens in {metrics['train_blocks']:.0f} "
              f"blocks; validation loss {metrics['val_loss_base']:.3f} (base) -> "
              f"{metrics['val_loss']:.3f}")
    else:
        print("[cpt] cpt.enabled=false: nothing trained; SFT starts from the base")
if cfg.enabled:
    store.clear()  # only once the output is published: a failure before keeps them for resume

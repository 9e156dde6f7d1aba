"""Stage `split`: curated rows -> deterministic hash-based train/validation files in data/split/.

Run alone:  dvc repro split       (or: python stages/split.py)
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.curate import read_jsonl, write_jsonl
from pedigree.data.split import split_rows
from pedigree.stage import stage_run

params = load_params()
cfg = params.split

with stage_run("split", out="data/split", inputs=["data/curated"],
               params=["split", "tracking"]) as run:
    counts = {}
    for kind, source in (("sft", "sft.jsonl"), ("preference", "preferences.jsonl")):
        rows = read_jsonl(Path("data/curated") / source)
        if not rows:
            continue
        train, validation = split_rows(rows, cfg.validation_fraction, cfg.salt)
        write_jsonl(run.dir / f"{kind}_train.jsonl", train)
        write_jsonl(run.dir / f"{kind}_validation.jsonl", validation)
        counts[kind] = {"train": len(train), "validation": len(validation)}
    (run.dir / "report.json").write_text(json.dumps(counts, indent=2) + "\n")
    run.metrics = {f"{k}_{side}_rows": n for k, c in counts.items() for side, n in c.items()}
    print(f"[split] {counts}")

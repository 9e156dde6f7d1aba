"""Stage `curate`: raw datasets -> validated, normalised, deduplicated rows in data/curated/.

Run alone:  dvc repro curate      (or: python stages/curate.py)

Every raw row is kept or quarantined in rejects.jsonl with its file, line and reason;
report.json reconciles: input_rows == kept_rows + sum(dropped.values()).
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.curate import curate, eval_prompt_keys, raw_files, write_jsonl
from pedigree.lineage import hash_of_hashes, sha256_file
from pedigree.stage import stage_run

params = load_params()
raw_dir, eval_dir = Path(params.data.raw_dir), Path(params.data.eval_dir)
files = raw_files(raw_dir)

with stage_run("curate", out="data/curated", inputs=[params.data.raw_dir, params.data.eval_dir],
               params=["data", "curate", "tracking"]) as run:
    eval_keys = eval_prompt_keys(eval_dir) if params.curate.decontaminate else set()
    result = curate(files, params.curate, params.data.format, eval_keys)
    write_jsonl(run.dir / "sft.jsonl", result.sft)
    write_jsonl(run.dir / "preferences.jsonl", result.preference)
    write_jsonl(run.dir / "rejects.jsonl", result.rejects)
    report = result.report()
    (run.dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    # The data root: one hash over every raw file read (equals `pedigree hash data/raw` when
    # the directory holds only data files).
    run.roots["data_sha256"] = hash_of_hashes(
        {p.relative_to(raw_dir).as_posix(): sha256_file(p) for p in files})
    run.metrics = {"input_rows": report["input_rows"], "kept_rows": report["kept_rows"],
                   "dropped_rows": sum(report["dropped"].values())}
    run.artifacts = ["report.json"]
    print(f"[curate] kept {report['kept_rows']} of {report['input_rows']} rows; "
          f"dropped {report['dropped']}")

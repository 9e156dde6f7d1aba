"""Stage `split`: curated rows -> train/validation files in data/split/.

Run alone:  dvc repro split       (or: python stages/split.py)

Group-aware and stable: data/split/assignments.tsv (kept between runs, `persist` in dvc.yaml)
remembers every row's side, so adding data never moves an existing row.
"""

import json

from pedigree.config import load_params
from pedigree.data.split import ASSIGNMENTS, read_assignments, split_curated
from pedigree.lineage import sha256_file
from pedigree.pipeline import stage_out
from pedigree.stage import stage_run

params = load_params()
table_path = stage_out("split") / ASSIGNMENTS  # the previous run's, read back
previous = read_assignments(table_path)

with stage_run("split") as run:
    report = split_curated(stage_out("curate"), run.dir, params.split, previous)
    (run.dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    # The table read back is an input DVC does not see: record which one it was.
    run.details["previous_assignments_sha256"] = (
        sha256_file(table_path) if table_path.exists() else None)
    run.metrics = {f"{kind}_{k}": v for kind, counts in report["kinds"].items()
                   for k, v in counts.items()}
    run.artifacts = ["report.json"]
    print(f"[split] {report['summary']}")

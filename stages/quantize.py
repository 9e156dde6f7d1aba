"""Stage `quantize`: deployment formats of models/merged -> models/quantized/<format>/.

Run alone:  dvc repro quantize    (or: python stages/quantize.py)

Each format is read back and checked against the merged model; report.json holds the size and
logit error of each.
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.export.quantize import export_gguf
from pedigree.stage import stage_run
from pedigree.train.load import load_causal_lm, load_tokenizer

params = load_params()
cfg, merged_dir = params.quantize, Path("models/merged")

with stage_run("quantize", out="models/quantized", inputs=["models/merged", "data/split"],
               params=["model", "quantize", "tracking"]) as run:
    merged = load_causal_lm(merged_dir, params.model.trust_remote_code)
    tokenizer = load_tokenizer(merged_dir, params.model.trust_remote_code)
    rows = read_jsonl(Path("data/split/sft_validation.jsonl"))[: cfg.check_rows]

    report = {fmt: export_gguf(fmt, merged_dir, run.dir, merged, tokenizer, rows, cfg.max_length)
              for fmt in cfg.formats}

    (run.dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    run.details["formats"] = report
    for fmt, r in report.items():
        run.metrics.update({f"{fmt}.size_bytes": r["size_bytes"],
                            f"{fmt}.max_abs_logit_diff": r["max_abs_logit_diff"],
                            f"{fmt}.top1_agreement": r["top1_agreement"]})
        print(f"[quantize] {fmt}: {r['size_bytes'] / 1e6:.2f} MB, max |logit diff| "
              f"{r['max_abs_logit_diff']:.3g}, top-1 agreement {r['top1_agreement']:.4f}")
    run.artifacts = ["report.json"]

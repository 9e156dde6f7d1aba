"""Stage `quantize`: deployment formats of models/merged -> models/quantized/<format>/.

Run alone:  dvc repro quantize    (or: python stages/quantize.py)

Each format is read back by an independent reader and checked against the merged model:
perplexity ratio, KL divergence, top-1 agreement and golden greedy answers (report.json,
metrics.json). A format past its gate is kept and reported with passed=false, never promoted.
A soft-prompt policy (models/merged/soft_prompt/) exports its base weights, ships the adapter in
each format's soft_prompt/ and checks each format with it applied (export/quantize.py).
"""

import json

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.export.card import quantized_card
from pedigree.export.quantize import check_format, export_format, reference
from pedigree.model.load import load_deployable, load_tokenizer
from pedigree.pipeline import stage_out
from pedigree.stage import stage_run

params = load_params()
cfg, merged_dir = params.quantize, stage_out("merge")

with stage_run("quantize") as run:
    merged = load_deployable(merged_dir, params.model.trust_remote_code)  # + its soft prompt
    tokenizer = load_tokenizer(merged_dir, params.model.trust_remote_code)
    held_out = read_jsonl(stage_out("split") / "sft_validation.jsonl")
    rows = held_out[: cfg.check_rows]
    ref = reference(merged, tokenizer, held_out, cfg)
    merged_bytes = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))

    report = {}
    for fmt in cfg.formats:
        model, info = export_format(fmt, merged_dir, run.dir, tokenizer, rows, cfg.max_length)
        report[fmt] = check_format(fmt, model, tokenizer, ref, cfg, merged_bytes, info, run.dir)
        r = report[fmt]
        # The merged model's card (provenance) with this format's file and checks added.
        (run.dir / fmt / "README.md").write_text(
            quantized_card((merged_dir / "README.md").read_text(), fmt, r))
        print(f"[quantize] {fmt}: {r['size_bytes'] / 1e6:.2f} MB ({r['compression']:.2f}x), "
              f"perplexity ratio {r['perplexity_ratio']:.4f} (gate {r['max_perplexity_ratio']}), "
              f"KL {r['kl_divergence']:.2e}, top-1 {r['top1_agreement']:.4f}, golden "
              f"{r['golden_agreement']} -> {'passed' if r['passed'] else 'FAILED, not promotable'}")

    keys = ("size_bytes", "compression", "perplexity_ratio", "kl_divergence", "top1_agreement",
            "golden_agreement", "passed")
    metrics = {fmt: {k: r[k] for k in keys} for fmt, r in report.items()}
    for fmt, r in report.items():
        if r["llama_cpp"]:  # the second, independent reader of GGUF files
            metrics[fmt]["llama_cpp_perplexity_ratio"] = r["llama_cpp"]["perplexity_ratio"]
            metrics[fmt]["llama_cpp_kl_divergence"] = r["llama_cpp"]["kl_divergence"]
    (run.dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (run.dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    run.details["formats"] = report
    run.metrics = {f"{fmt}.{k}": float(v) for fmt, m in metrics.items() for k, v in m.items()
                   if v is not None}
    run.artifacts = ["report.json", "metrics.json"]

"""Stage `quantize`: deployment formats of models/merged -> models/quantized/<format>/.

Run alone:  dvc repro quantize    (or: python stages/quantize.py)

Each format is read back by an independent reader and checked against the merged model:
perplexity ratio, KL divergence, top-1 agreement and golden greedy answers (report.json,
metrics.json). A format past its gate is kept and reported with passed=false, never promoted.
A soft-prompt policy (models/merged/soft_prompt/) exports its base weights, ships the adapter in
each format's soft_prompt/ and checks each format with it applied (export/quantize.py).
gguf-lora ships the policy unmerged: the model SFT started from as a GGUF file plus the LoRA chain
(models/sft, models/align) as one GGUF LoRA adapter, checked like every format.
"""

import json
from pathlib import Path

from pedigree.config import load_params
from pedigree.data.jsonl import read_jsonl
from pedigree.export.card import quantized_card
from pedigree.export.quantize import (
    adapter_chain,
    check_format,
    export_format,
    reference,
    ship_more_adapters,
)
from pedigree.model.load import load_deployable, load_tokenizer
from pedigree.pipeline import stage_out, start_model
from pedigree.quant_formats import FORMATS
from pedigree.records import read_policy
from pedigree.stage import stage_run

params = load_params()
cfg, merged_dir = params.quantize, stage_out("merge")

# Other runs' adapters shipped over gguf-lora's base: inputs too, hashed into the manifest.
extra = [a for chain in cfg.adapters.values() for a in chain]
with stage_run("quantize", extra_inputs=extra) as run:
    # gguf-lora ships the unmerged chain: refused here, before anything is written, when
    # llama.cpp could not apply it
    chain = (adapter_chain(read_policy(stage_out("align")), start_model(),
                           params.merge.qlora_base)
             if any(FORMATS[f].writer == "gguf-lora" for f in cfg.formats) else None)
    merged = load_deployable(merged_dir, params.model.trust_remote_code)  # + its soft prompt
    tokenizer = load_tokenizer(merged_dir, params.model.trust_remote_code)
    held_out = read_jsonl(stage_out("split") / "sft_validation.jsonl")
    rows = held_out[: cfg.check_rows]
    ref = reference(merged, tokenizer, held_out, cfg)
    merged_bytes = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))

    report = {}
    for fmt in cfg.formats:
        model, info = export_format(fmt, merged_dir, run.dir, tokenizer, rows, cfg.max_length,
                                    chain)
        report[fmt] = check_format(fmt, model, tokenizer, ref, cfg, merged_bytes, info, run.dir)
        r = report[fmt]
        if fmt == "gguf-lora" and cfg.adapters:  # other runs' adapters over the same base
            r.update(ship_more_adapters(fmt, run.dir, chain.base, {
                name: [Path(a) for a in c] for name, c in cfg.adapters.items()},
                tokenizer, rows, cfg, merged_bytes, r))
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

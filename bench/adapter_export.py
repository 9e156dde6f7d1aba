"""Shipping adapters instead of merged models: sizes and checks, from a quantize run that wrote
both a merged GGUF (the baseline) and gguf-lora.

Printed side by side: the merged model's GGUF file against the shared base plus the adapter (GGUF
LoRA and PEFT directory), what N fine-tunes cost each way, how closely each export reproduces
the merged model (perplexity ratio, KL, top-1; llama.cpp's reading where llama-cpp-python is
installed; the PEFT directory on the fp32 base), and the chat-template parity of every GGUF
export (conversations, runtimes compared).

    dvc exp run -S 'quantize.formats=[gguf-q8_0,gguf-lora]'   # then, in the workspace:
    python bench/adapter_export.py [--project .] [--baseline gguf-q8_0] [--n 1 3 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def mb(n: float) -> str:
    return f"{n / 1e6:,.2f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path("."))
    parser.add_argument("--baseline", default="gguf-q8_0", help="the merged GGUF format")
    parser.add_argument("--n", type=int, nargs="+", default=[1, 3, 10],
                        help="fine-tunes served from one machine")
    args = parser.parse_args()
    report = json.loads((args.project / "models/quantized/report.json").read_text())
    if args.baseline not in report or "gguf-lora" not in report:
        raise SystemExit(f"models/quantized/report.json has {sorted(report)}: run quantize with "
                         f"quantize.formats=[{args.baseline},gguf-lora]")
    merged, lora = report[args.baseline], report["gguf-lora"]
    merged_dir = args.project / "models/merged"
    safetensors = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))

    print(f"merged model (safetensors, {merged_dir}): {mb(safetensors)}")
    print(f"{args.baseline} (merged, one file per fine-tune): {mb(merged['size_bytes'])}")
    print(f"gguf-lora base {lora['file']} (shared): {mb(lora['base_bytes'])}")
    print(f"gguf-lora adapter {lora['adapter_file']}: {mb(lora['adapter_bytes'])} "
          f"= {lora['adapter_bytes'] / merged['size_bytes']:.4f} x the merged GGUF "
          f"(ranks {lora['adapter_ranks']})")
    print(f"gguf-lora peft/ (vLLM, SGLang): {mb(lora['peft_bytes'])} "
          f"(--max-lora-rank {lora['vllm_max_lora_rank']})")
    print("\nfine-tunes | merged GGUFs | one base + adapters | ratio")
    for n in args.n:
        each = n * merged["size_bytes"]
        shared = lora["base_bytes"] + n * lora["adapter_bytes"]
        print(f"{n:10d} | {mb(each):>12} | {mb(shared):>19} | {shared / each:.3f}")
    if lora.get("shared_base"):
        s = lora["shared_base"]
        print(f"measured (quantize.adapters): {s['models']} models, one base + adapters "
              f"{mb(s['base_plus_adapters_bytes'])} against {mb(s['merged_bytes'])} merged "
              "(safetensors)")

    print("\nagainst the merged model | perplexity ratio | KL | top-1 | golden | passed")
    rows = [(args.baseline, merged), ("gguf-lora", lora)]
    rows += [(f"{fmt} llama.cpp", r["llama_cpp"]) for fmt, r in rows if r.get("llama_cpp")]
    rows += [("gguf-lora peft/ (PEFT)", lora["peft"])] if lora.get("peft") else []
    for name, r in rows:
        print(f"{name:24} | {r['perplexity_ratio']:.5f} | {r['kl_divergence']:.2e} | "
              f"{r['top1_agreement']:.4f} | {r.get('golden_agreement', '-')} | "
              f"{r.get('passed', '-')}")
    if not any(r.get("llama_cpp") for r in (merged, lora)):
        print("(llama.cpp not run: llama-cpp-python is not installed; `make kquants`)")

    print("\nchat-template parity | conversations | comparisons | runtimes | passed")
    for fmt, r in report.items():
        if p := r.get("template_parity"):
            print(f"{fmt:20} | {p['conversations']} | {p['comparisons']} | "
                  f"{', '.join(p['runtimes'])} | {p['passed']}")


if __name__ == "__main__":
    main()

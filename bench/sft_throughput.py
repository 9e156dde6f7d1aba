"""SFT throughput: our stage's training path against a plain TRL `SFTTrainer` script.

Same model (models/base, the embedded default), same rows (data/split/sft_train.jsonl), same
LoRA, batch, max length and number of steps. The plain script is what a user would write from
TRL's docs: SFTConfig defaults (padding, activation checkpointing on) plus what CPU needs
(bf16 off). Ours is `pedigree.train.sft.sft_args`, once without and once with packing.

Prints, for each: real (non-padding) tokens per second, and achieved FLOP/s as a fraction of
this machine's measured fp32 matmul peak. Model FLOPs per token: 2N forward + 2N backward
through the activations (LoRA's frozen weights need no weight gradients; the adapter's own
are negligible), so 4N, N = parameters of the base. Each run in its own process, fastest of 3.

    dvc repro split && python bench/sft_throughput.py [--steps 60]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

from child import in_child  # bench/child.py: python puts bench/ on the path

BASE, TRAIN = Path("models/base"), Path("data/split/sft_train.jsonl")


def matmul_peak(n: int = 1024, repeats: int = 20) -> float:
    """fp32 FLOP/s of a square matmul, best of `repeats`: the machine's practical peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def run(variant: str, steps: int, queue: mp.Queue) -> None:
    import torch
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from pedigree.config import SFTConfig as OurConfig
    from pedigree.data.jsonl import read_jsonl
    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.train.methods import peft_lora
    from pedigree.train.sft import sft_args
    from pedigree.train.trainer import conversational_dataset

    torch.manual_seed(0)
    rows = read_jsonl(TRAIN)
    dataset = conversational_dataset(rows, ("prompt", "completion"))
    model, tokenizer = load_causal_lm(BASE), load_tokenizer(BASE)
    params = sum(p.numel() for p in model.parameters())
    ours = OurConfig(max_steps=steps, batch_size=16, max_length=128, save_steps=steps,
                     packing=variant == "ours+packing")
    with tempfile.TemporaryDirectory() as scratch:
        if variant == "trl":
            args = SFTConfig(output_dir=scratch, max_steps=steps, per_device_train_batch_size=16,
                             learning_rate=ours.learning_rate, max_length=128, bf16=False,
                             use_cpu=True, report_to="none", save_strategy="no", seed=0,
                             logging_steps=steps, disable_tqdm=True)
            peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                     task_type="CAUSAL_LM")
        else:
            args = sft_args(ours, 0, scratch)
            args.eval_strategy, args.save_strategy, args.logging_steps = "no", "no", steps
            peft_config = peft_lora(ours.lora)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    tokens = max(e.get("num_tokens", 0) for e in trainer.state.log_history)
    queue.put({"tokens": tokens, "seconds": seconds, "params": params})


def measure(variant: str, steps: int) -> dict:
    return in_child(run, variant, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not (BASE.is_dir() and TRAIN.is_file()):
        sys.exit(f"{BASE} and {TRAIN} are needed: run `dvc repro split` first")
    peak = matmul_peak()
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s")
    rows = {}
    for variant in ("trl", "ours", "ours+packing"):
        runs = [measure(variant, args.steps) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"] / r["tokens"])
        rate = best["tokens"] / best["seconds"]
        flops = 4 * best["params"] * rate
        rows[variant] = {"tokens_per_s": rate, "flop_fraction": flops / peak, **best}
        print(f"{variant:14s} {rate:9,.0f} tokens/s  {flops / 1e9:6.2f} GFLOP/s "
              f"({flops / peak:.1%} of peak)  [{best['tokens']:,} tokens, {best['seconds']:.2f} s]")
    base = rows["trl"]["tokens_per_s"]
    print(f"ratio without packing: {rows['ours']['tokens_per_s'] / base:.2f}  (goal >= 1.0)")
    print(f"ratio with packing:    {rows['ours+packing']['tokens_per_s'] / base:.2f}  (goal >= 1.3)")
    print(json.dumps({k: {"tokens_per_s": round(v["tokens_per_s"]),
                          "flop_fraction": round(v["flop_fraction"], 4)} for k, v in rows.items()}))


if __name__ == "__main__":
    main()

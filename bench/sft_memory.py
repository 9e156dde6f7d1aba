"""Peak memory of each SFT method (lora, qlora, dora, partial, full) on the same model and rows.

Each method trains `--steps` steps of the stage's training path in its own process; on CPU the
figure is that process's peak RSS (VmHWM) and the RSS before training, on a GPU the CUDA peak
allocated. Same model (models/base), rows (data/split), batch and max length for all.

    dvc repro split && python bench/sft_memory.py [--steps 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
from pathlib import Path

from child import in_child  # bench/child.py: python puts bench/ on the path

BASE = Path("models/base")
METHODS = ("lora", "qlora", "dora", "partial", "full")


def _rss_gib(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) / 2**20  # KiB -> GiB


def run(method: str, steps: int, queue: mp.Queue) -> None:
    import torch

    from pedigree.config import SFTConfig
    from pedigree.data.jsonl import read_jsonl
    from pedigree.model.load import load_tokenizer
    from pedigree.train.methods import prepare_model
    from pedigree.train.sft import train_sft

    cfg = SFTConfig(method=method, max_steps=steps, batch_size=16, max_length=128,
                    eval_steps=steps, save_steps=steps)
    train = read_jsonl(Path("data/split/sft_train.jsonl"))
    validation = read_jsonl(Path("data/split/sft_validation.jsonl"))
    model, peft_config, _ = prepare_model(BASE, cfg)
    before = _rss_gib("VmRSS")
    _, metrics, _ = train_sft(model, load_tokenizer(BASE), peft_config, train, validation, cfg, 0)
    result = {"rss_before": before, "peak_rss": _rss_gib("VmHWM"),
              "trainable": metrics["trainable_params"], "val_loss": metrics["val_loss"]}
    if torch.cuda.is_available():
        result["cuda_peak"] = torch.cuda.max_memory_allocated() / 2**30
    queue.put(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    if not BASE.is_dir():
        sys.exit(f"{BASE} is needed: run `dvc repro split` first")
    print(f"{'method':8s} {'trainable':>10s} {'peak RSS':>9s} {'at start':>9s} {'CUDA peak':>9s}")
    for method in METHODS:
        r = in_child(run, method, args.steps)
        cuda = f"{r['cuda_peak']:.2f} GiB" if "cuda_peak" in r else "-"
        print(f"{method:8s} {r['trainable']:10,.0f} {r['peak_rss']:6.2f} GiB {r['rss_before']:6.2f}"
              f" GiB {cuda:>9s}")


if __name__ == "__main__":
    main()

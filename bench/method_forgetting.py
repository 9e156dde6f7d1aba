"""Does LoRA forget less than full fine-tuning? Each SFT method on the same base, rows and steps,
scored by the eval stage's own suite part-way and at the end of training.

For each run (a method at its conf/sft/ learning rate, or `method:rate`), the stage's training
path (`prepare_model` + `train_sft`, the composed params.yaml otherwise) trains in its own
process; at the checkpoints (--at, in steps) the policy as it stands is evaluated with
`pedigree.evals.suite.evaluate` on data/eval and the held-out split, as the eval stage would.
Printed: the task gain over the base (task score) against the forgetting (the drop of the
general-ability metrics the gate watches), at the defaults and, by interpolating each run's
curve from the base (step 0) through its checkpoints, at a task gain every run reached.

    dvc repro split && python bench/method_forgetting.py [--runs lora full full:3e-5] [--at 15 30]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from itertools import pairwise
from pathlib import Path

import yaml
from child import in_child  # bench/child.py: python puts bench/ on the path

BASE = Path("models/base")
RUNS = ("lora", "qlora", "dora", "partial", "full")
# what the gate calls forgetting (higher is better for the scores, lower for the loss)
GENERAL = ("general_chat_score", "general_task_score", "general_loss")


def conf_rate(method: str) -> float:
    """The learning rate conf/sft/<method>.yaml gives (its own, else lora.yaml's)."""
    for name in (method, "lora"):
        rate = yaml.safe_load(Path(f"conf/sft/{name}.yaml").read_text()).get("learning_rate")
        if rate is not None:
            return float(rate)
    raise SystemExit(f"conf/sft/{method}.yaml: no learning_rate")


def scores(result) -> dict[str, float]:
    return {k: result.metrics[k] for k in ("task_score", "val_loss", *GENERAL)
            if k in result.metrics}


def run(method: str, rate: float | None, at: list[int], queue: mp.Queue) -> None:
    from transformers import TrainerCallback

    from pedigree.config import load_params
    from pedigree.data.jsonl import read_jsonl
    from pedigree.evals.suite import evaluate, load_eval_sets
    from pedigree.model.load import load_causal_lm, load_tokenizer
    from pedigree.train.methods import prepare_model
    from pedigree.train.sft import train_sft

    params = load_params()
    tokenizer = load_tokenizer(BASE)
    sets = load_eval_sets(Path(params.data.eval_dir), Path("data/split"), params.eval)
    if method == "base":
        queue.put({0: scores(evaluate(load_causal_lm(BASE), tokenizer, sets, params.eval))})
        return
    cfg = params.sft.model_copy(update={"method": method, "learning_rate": rate,
                                        "max_steps": max(at)})
    curve: dict[int, dict[str, float]] = {}
    evaluating = [0.0]  # seconds spent in these evaluations, not training

    class EvaluateAt(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step in at:
                start = time.perf_counter()
                curve[state.global_step] = scores(evaluate(model, tokenizer, sets, params.eval))
                model.train()
                evaluating[0] += time.perf_counter() - start

    model, peft_config, _ = prepare_model(BASE, cfg)
    start = time.perf_counter()
    _, metrics, _ = train_sft(model, tokenizer, peft_config, read_jsonl(Path(
        "data/split/sft_train.jsonl")), read_jsonl(Path("data/split/sft_validation.jsonl")), cfg,
        params.seed, callbacks=[EvaluateAt()])
    queue.put({**curve, "seconds": time.perf_counter() - start - evaluating[0],
               "trainable": metrics["trainable_params"]})


def forgetting(point: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """How much worse than the base each general metric is (positive: forgot)."""
    return {k: (point[k] - base[k]) if k == "general_loss" else (base[k] - point[k])
            for k in GENERAL if k in point and k in base}


def at_gain(curve: list[tuple[float, dict[str, float]]], gain: float) -> dict[str, float] | None:
    """Forgetting where the run's task gain first reaches `gain`, linear between checkpoints."""
    for (g0, f0), (g1, f1) in pairwise(curve):
        if g0 <= gain <= g1 and g1 > g0:
            w = (gain - g0) / (g1 - g0)
            return {k: f0[k] + w * (f1[k] - f0[k]) for k in f0}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS),
                        help="method or method:learning_rate (default: conf/sft/'s rate)")
    parser.add_argument("--at", nargs="+", type=int, default=[15, 30], help="steps to evaluate")
    args = parser.parse_args()
    if not (BASE.is_dir() and Path("data/split/sft_train.jsonl").is_file()):
        sys.exit(f"{BASE} and data/split are needed: run `dvc repro split` first")
    base = in_child(run, "base", None, [0])[0]
    print("base: " + ", ".join(f"{k} {v:.3f}" for k, v in base.items()), flush=True)
    table = {}
    for spec in args.runs:
        method, _, rate = spec.partition(":")
        rate = float(rate) if rate else conf_rate(method)
        result = in_child(run, method, rate, sorted(args.at))
        name = f"{method} {rate:g}"
        curve = [(0.0, forgetting(base, base))] + [
            (result[s]["task_score"] - base["task_score"], forgetting(result[s], base))
            for s in sorted(args.at)]
        table[name] = {"curve": curve,
                       "seconds": result["seconds"], "trainable": result["trainable"]}
        print(f"{name:14s} trainable {result['trainable']:>11,.0f}  trained in "
              f"{result['seconds']:4.0f} s  "
              + "  ".join(f"step {s}: task {result[s]['task_score']:.3f} chat "
                          f"{result[s].get('general_chat_score', float('nan')):.2f} cloze "
                          f"{result[s].get('general_task_score', float('nan')):.2f} gen-loss "
                          f"{result[s].get('general_loss', float('nan')):.3f}"
                          for s in sorted(args.at)), flush=True)
    # the largest task gain every run that gained at all reached, and each one's forgetting there
    gains = {name: max(g for g, _ in row["curve"]) for name, row in table.items()}
    matched = min((g for g in gains.values() if g > 0), default=0.0)
    if matched <= 0:
        print("\nno run gained on the task: nothing to match")
        return
    print(f"\nat matched task gain +{matched:.3f} (interpolated along each run's curve):")
    for name, row in table.items():
        f = at_gain(row["curve"], matched) if gains[name] > 0 else None
        print(f"{name:14s} " + ("  ".join(f"{k} forgot {v:+.3f}" for k, v in f.items())
                                if f else "no task gain over the base: left out"))
    print(json.dumps({name: {"curve": row["curve"], "seconds": round(row["seconds"])}
                      for name, row in table.items()}))


if __name__ == "__main__":
    main()

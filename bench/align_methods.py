"""The align stage's methods side by side: dpo (the baseline), orpo, simpo, kto and grpo, each on
the same SFT policy, split and steps, then scored by the eval stage's own suite.

Each method trains in its own process, through the stage's training path (the SFT policy folded
in, `train_align` with the composed params.yaml's `align` section, the method switched), timed
with its peak memory (the process's, model loading included: comparable across methods, since
each loads the same model). Printed per method: training seconds and the ratio to dpo's, peak
RSS, what TRL reports on the validation pairs (preference accuracy, reward margin; grpo: the
mean reward of greedy answers to the validation task prompts before -> after), and the eval
suite's task score, preference accuracy on the held-out pairs and the general probes the gate
watches, against the SFT policy alone (no alignment).

    dvc repro sft && python bench/align_methods.py [--methods dpo orpo simpo kto grpo] [--steps N]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

from child import in_child  # bench/child.py: python puts bench/ on the path

METHODS = ("dpo", "orpo", "simpo", "kto", "grpo")
SCORES = ("task_score", "pref_accuracy", "general_chat_score", "general_task_score",
          "general_loss")


def run(method: str | None, steps: int | None, queue: mp.Queue) -> None:
    from pedigree.config import load_params
    from pedigree.data.jsonl import read_jsonl
    from pedigree.evals.suite import evaluate, load_eval_sets
    from pedigree.model.load import load_tokenizer
    from pedigree.model.policy import load_sft
    from pedigree.perf import measured
    from pedigree.pipeline import stage_out
    from pedigree.train.align import METHOD_KINDS, train_align

    params = load_params()
    base, sft, split = stage_out("base"), stage_out("sft"), stage_out("split")
    trust = params.model.trust_remote_code
    tokenizer = load_tokenizer(sft, trust)
    sets = load_eval_sets(Path(params.data.eval_dir), split, params.eval)
    with measured() as perf:
        policy = load_sft(base, sft, trust)
        if hasattr(policy, "merge_and_unload"):
            policy = policy.merge_and_unload()
        metrics: dict[str, float] = {}
        if method is not None:
            cfg = params.align.model_copy(update={"method": method,
                                                  "max_steps": steps or params.align.max_steps})
            train, validation = ({kind: read_jsonl(split / f"{kind}_{side}.jsonl")
                                  for kind in METHOD_KINDS[method]}
                                 for side in ("train", "validation"))
            policy, metrics, _ = train_align(policy, tokenizer, train, validation, cfg,
                                             params.seed)
    result = evaluate(policy, tokenizer, sets, params.eval)
    queue.put({"perf": perf, "trl": metrics,
               "eval": {k: result.metrics[k] for k in SCORES if k in result.metrics}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, help="default: align.max_steps of params.yaml")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not Path("models/sft").is_dir():
        sys.exit("models/sft is needed: run `dvc repro sft` first")
    rows = {"sft (no alignment)": in_child(run, None, None)}
    for method in args.methods:
        rows[method] = in_child(run, method, args.steps)
        print(f"{method}: {json.dumps(rows[method])}", flush=True)
    baseline = rows.get("dpo", {}).get("perf", {}).get("seconds")
    sft_scores = rows["sft (no alignment)"]["eval"]
    print(f"\n| method | train s | vs dpo | peak RSS GiB | val pref acc (TRL) | val margin (TRL) "
          f"| val reward (grpo) | {' | '.join(SCORES)} |")
    print("| --- " * (7 + len(SCORES)) + "|")
    for name, row in rows.items():
        perf, trl, scores = row["perf"], row["trl"], row["eval"]
        trained = name in METHODS  # the SFT row's time is loading only
        seconds = f"{perf['seconds']:.0f}" if trained else "-"
        ratio = f"{perf['seconds'] / baseline:.2f}" if baseline and trained else ""
        cells = [f"{scores[k]:.3f} ({scores[k] - sft_scores[k]:+.3f})" if k in scores else "-"
                 for k in SCORES]
        print(f"| {name} | {seconds} | {ratio} | {perf['peak_rss_gib']:.2f} | "
              f"{trl.get('val_preference_accuracy', float('nan')):.3f} | "
              f"{trl.get('val_reward_margin', float('nan')):.3f} | {_reward(trl)} | "
              + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


def _reward(trl: dict[str, float]) -> str:
    """grpo's mean reward of greedy answers to the validation tasks, before -> after."""
    if "val_reward" not in trl:
        return "-"
    return f"{trl['val_reward_before']:.3f} -> {trl['val_reward']:.3f}"


if __name__ == "__main__":
    main()

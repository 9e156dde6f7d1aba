"""How far to trust a judge: its agreement with people on data/eval/judge_calibration.jsonl.

Judges the labelled pairs in both orders, as the eval stage does (evals/judge.py), with
  - a local model (default: models/base, the pipeline's own base; --model DIR for another),
  - the same model behind an OpenAI-compatible server on 127.0.0.1 (tests/judge_server.py: what
    a llama-server or vLLM judge goes through), greedy text read by its first word, and
  - two baselines that read nothing: "always A" (pure position bias: both orders cancel it to a
    tie) and "the longer answer" (length bias),
and prints each judge's agreement with the human labels, Cohen's kappa, its agreement as a ratio
to the best baseline's, and seconds per judged pair.

    dvc repro base && python bench/judge_calibration.py [--model models/base] [--no-endpoint]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/judge_server.py


def main() -> None:
    from pedigree.config import JudgeConfig, JudgeEndpoint
    from pedigree.evals.judge import (
        CALIBRATION_FILE,
        DEFAULT_TEMPLATE,
        calibrate,
        endpoint_verdicts,
        model_verdicts,
        read_calibration,
    )

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models/base")
    parser.add_argument("--eval-dir", default="data/eval")
    parser.add_argument("--no-endpoint", action="store_true", help="skip the server judge")
    args = parser.parse_args()
    rows = read_calibration(Path(args.eval_dir) / CALIBRATION_FILE)

    def longer(prompts: list[str]) -> list[str | None]:
        out = []
        for p in prompts:
            a = p.split("Answer A:\n", 1)[1].split("\n\nAnswer B:\n", 1)
            b = a[1].split("\n\nWhich answer is better?", 1)[0]
            out.append("A" if len(a[0]) > len(b) else "B" if len(b) > len(a[0]) else "tie")
        return out

    judges = {"always A": lambda prompts: ["A"] * len(prompts), "the longer answer": longer,
              f"local {args.model}": model_verdicts(Path(args.model), False, batch_size=8)}
    results = {}
    for name, verdicts in judges.items():
        start = time.perf_counter()
        results[name] = calibrate(verdicts, DEFAULT_TEMPLATE, rows)
        results[name]["seconds"] = time.perf_counter() - start
    if not args.no_endpoint:
        from tests.judge_server import model_answer, serve

        with serve(model_answer(Path(args.model))) as server:
            cfg = JudgeConfig(enabled=True, endpoint=JudgeEndpoint(url=server["url"]))
            start = time.perf_counter()
            name = f"endpoint serving {args.model}"
            results[name] = calibrate(endpoint_verdicts(cfg), DEFAULT_TEMPLATE, rows)
            results[name]["seconds"] = time.perf_counter() - start
    humans = {label: sum(r["human"] == label for r in rows) for label in ("a", "b", "tie")}
    print(f"{len(rows)} labelled pairs (people: {humans['a']} a, {humans['b']} b, "
          f"{humans['tie']} tie), each judged in both orders")
    best = max(results["always A"]["agreement"], results["the longer answer"]["agreement"])
    print(f"{'judge':<40} {'agreement':>9} {'kappa':>7} {'x best baseline':>15} {'s/pair':>7}")
    for name, r in results.items():
        kappa = "-" if r["kappa"] is None else f"{r['kappa']:+.3f}"
        said = [v["judge"] for v in r["verdicts"].values()]
        print(f"{name:<40} {r['agreement']:>9.3f} {kappa:>7} {r['agreement'] / best:>15.2f} "
              f"{r['seconds'] / len(rows):>7.2f}   (said a {said.count('a')}, b {said.count('b')},"
              f" tie {said.count('tie')})")


if __name__ == "__main__":
    main()

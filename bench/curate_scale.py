"""Curation at scale: one million rows through the whole `curate` library call (parse, validate,
filters, token-length bounds, decontamination, exact and near dedup, writing the outputs), with
1 worker and with 2 (curate.workers), side by side.

    .venv/bin/python bench/curate_scale.py [--rows 1000000] [--workers 1,2]

The rows come from bench/dedup_data.py (alpaca-sized rows with planted near-duplicate groups).
Generation is not timed. Each curation runs in a child process of its own; its peak memory is
the child's peak RSS (VmHWM) plus, for the workers, their number times the largest worker's
peak (an upper bound: forked workers also count pages they share with the parent).
Goals: scaling efficiency (rows/s at n workers / (n x rows/s at 1)) >= 0.85 at 2 workers on
2 cores; peak memory <= 4 GB; the outputs the same bytes for every worker count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

from child import in_child  # bench/child.py: python puts bench/ on the path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def write_rows(path: Path, n_rows: int) -> None:
    from dedup_data import generate

    with open(path, "w", encoding="utf-8") as f:
        for row in generate(n_rows, seed=0):
            row = {k: v for k, v in row.items() if not k.startswith("_")}  # labels are not data
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_curation(raw: Path, out: Path, tokenizer: str, workers: int, queue: mp.Queue) -> None:
    from pedigree.config import CurateConfig
    from pedigree.data.curate import curate, eval_files, write_curation
    from pedigree.data.decontaminate import EvalIndex, eval_items
    from pedigree.data.lengths import TokenCounter
    from pedigree.data.sources import sources_from_paths

    start = time.perf_counter()
    cfg = CurateConfig(tokenizer=tokenizer, workers=workers)
    index = EvalIndex(eval_items(eval_files(REPO / "data/eval")), cfg.decontaminate.ngram,
                      cfg.decontaminate.min_words)
    result = curate(sources_from_paths([raw]), cfg, index, TokenCounter(tokenizer))
    out.mkdir()
    report = write_curation(result, out)
    seconds = time.perf_counter() - start
    # VmHWM, the process's own peak RSS (ru_maxrss would carry the parent's peak over exec);
    # the workers' peaks: the largest, from the children this process waited for.
    status = Path("/proc/self/status").read_text()
    own_gb = int(status.split("VmHWM:")[1].split()[0]) / 2**20  # KiB -> GiB
    worker_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20 if workers > 1 \
        else 0.0
    digest = hashlib.sha256()
    for path in sorted(out.iterdir()):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    queue.put({"seconds": seconds, "peak_gb": own_gb + workers * worker_gb, "report": report,
               "sha256": digest.hexdigest()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", default="1,2", help="worker counts to run, the first the "
                        "baseline (default 1,2)")
    parser.add_argument("--tokenizer", default=str(REPO / "models/base"),
                        help="directory with tokenizer.json (build it: dvc repro base)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        sys.exit(f"{args.tokenizer}/tokenizer.json missing: run `dvc repro base` first")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "rows.jsonl"
        start = time.perf_counter()
        write_rows(raw, args.rows)
        print(f"generated {args.rows} rows ({raw.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - start:.0f} s (not timed below)", flush=True)
        results = {}
        for n in counts:
            results[n] = in_child(run_curation, raw, Path(tmp) / f"curated-{n}", args.tokenizer,
                                  n)
            print(f"{n} worker(s): {results[n]['seconds']:.1f} s", flush=True)
    report = results[counts[0]]["report"]
    print(f"rows in:            {report['input_rows']}")
    print(f"kept:               {report['kept_rows']}")
    print(f"dropped:            {json.dumps(report['dropped'])}")
    print(f"near dedup:         {json.dumps(report.get('near_dedup', {}))}")
    base = report["input_rows"] / results[counts[0]]["seconds"]
    print("\n| workers | wall time | rows/s | speed-up | efficiency | peak memory |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, r in results.items():
        rate = report["input_rows"] / r["seconds"]
        print(f"| {n} | {r['seconds']:.1f} s | {rate:,.0f} | {rate / base:.2f} | "
              f"{rate / base / n * counts[0]:.2f} | {r['peak_gb']:.2f} GiB |")
    same = len({r["sha256"] for r in results.values()}) == 1
    print(f"\noutputs the same bytes for every worker count: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()

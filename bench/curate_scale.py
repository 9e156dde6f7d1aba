"""Curation at scale: one million rows through the whole `curate` library call (parse, validate,
filters, token-length bounds, decontamination, exact and near dedup, writing the outputs).

    .venv/bin/python bench/curate_scale.py [--rows 1000000]

The rows come from bench/dedup_data.py (alpaca-sized rows with planted near-duplicate groups).
Generation is not timed. The curation runs in a child process, so its peak memory
(VmHWM) is the curation's alone. Goal: 1M rows in <= 120 s and <= 4 GB on 2 cores.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def write_rows(path: Path, n_rows: int) -> None:
    from dedup_data import generate

    with open(path, "w", encoding="utf-8") as f:
        for row in generate(n_rows, seed=0):
            row = {k: v for k, v in row.items() if not k.startswith("_")}  # labels are not data
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_curation(raw: Path, out: Path, tokenizer: str, queue: mp.Queue) -> None:
    from pedigree.config import CurateConfig
    from pedigree.data.curate import curate, eval_files, write_curation
    from pedigree.data.decontaminate import EvalIndex, eval_items
    from pedigree.data.lengths import TokenCounter
    from pedigree.data.sources import sources_from_paths

    start = time.perf_counter()
    cfg = CurateConfig(tokenizer=tokenizer)
    index = EvalIndex(eval_items(eval_files(REPO / "data/eval")), cfg.decontaminate.ngram,
                      cfg.decontaminate.min_words)
    result = curate(sources_from_paths([raw]), cfg, index, TokenCounter(tokenizer))
    out.mkdir()
    report = write_curation(result, out)
    seconds = time.perf_counter() - start
    # VmHWM, the process's own peak RSS (ru_maxrss would carry the parent's peak over exec).
    status = Path("/proc/self/status").read_text()
    peak_gb = int(status.split("VmHWM:")[1].split()[0]) / 2**20  # KiB -> GiB
    queue.put({"seconds": seconds, "peak_gb": peak_gb, "report": report})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--tokenizer", default=str(REPO / "models/base"),
                        help="directory with tokenizer.json (build it: dvc repro base)")
    args = parser.parse_args()
    if not (Path(args.tokenizer) / "tokenizer.json").is_file():
        sys.exit(f"{args.tokenizer}/tokenizer.json missing: run `dvc repro base` first")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "rows.jsonl"
        start = time.perf_counter()
        write_rows(raw, args.rows)
        print(f"generated {args.rows} rows ({raw.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - start:.0f} s (not timed below)", flush=True)
        result = in_child(run_curation, raw, Path(tmp) / "curated", args.tokenizer)
    report = result["report"]
    print(f"rows in:            {report['input_rows']}")
    print(f"kept:               {report['kept_rows']}")
    print(f"dropped:            {json.dumps(report['dropped'])}")
    print(f"near dedup:         {json.dumps(report.get('near_dedup', {}))}")
    print(f"wall time:          {result['seconds']:.1f} s  "
          f"({report['input_rows'] / result['seconds']:,.0f} rows/s)")
    print(f"peak memory (RSS):  {result['peak_gb']:.2f} GiB")


if __name__ == "__main__":
    main()

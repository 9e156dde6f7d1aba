"""Near dedup: star against connected clusters (curate.near_dedup.cluster) on a real dataset.

    .venv/bin/python bench/near_dedup_clusters.py [PATH] [--thresholds 0.8 0.7 ...]
        [--fields row prompt] [--generated 20000]

PATH defaults to ../shared/data/alpaca_5000.json (relative to the repository root). Every run
is the `curate` library call the stage makes, with the token-length bounds off (no tokenizer)
and no decontamination, so the runs differ only in their near-dedup settings. Per compared
fields (curate.dedup_fields), threshold and mode it prints:
  pairs          verified pairs at or above the threshold (the same for both modes)
  dropped        rows rejected as near_duplicate
  clusters       kept rows that stand for at least one near duplicate
  largest        the most rows in one cluster (the kept row and its near duplicates)
  below          dropped rows whose Jaccard with the kept row they name is below the
                 threshold (chained; never for star), and the lowest such Jaccard
The modes run with 100 bands of 1 row, so that LSH misses no pair that matters: a pair at
Jaccard s is a candidate with probability 1 - (1 - s)**100 (1 - 2e-10 at s = 0.2). The last
column is the pairs the configured banding (20 x 5, pinned for 0.8) finds: its recall falls
fast below 0.7 (0.47 at s = 0.5, 0.05 at 0.3). --generated N adds N rows of
bench/dedup_data.py (planted near-duplicate families, edit rates up to 20%) for comparison.
No timings: the point is what each mode drops.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

MODES = ("star", "connected")
ALL_PAIRS = (100, 1)  # bands, rows
DEFAULT = (20, 5)  # conf/curate/default.yaml


def measure(path: Path, threshold: float, cluster: str, fields: str = "row",
            banding: tuple[int, int] = ALL_PAIRS) -> dict:
    from pedigree.config import CurateConfig, NearDedupConfig
    from pedigree.data.curate import curate
    from pedigree.data.sources import sources_from_paths

    near = NearDedupConfig(threshold=threshold, cluster=cluster, bands=banding[0],
                           rows=banding[1])
    cfg = CurateConfig(tokenizer=None, dedup_fields=fields, near_dedup=near)
    result = curate(sources_from_paths([path]), cfg, eval_index=None, counter=None)
    near_rejects = [r for r in result.rejects if r["reason"] == "near_duplicate"]
    sizes = Counter(r["duplicate_of"] for r in near_rejects)  # near duplicates per kept row
    below = [r["jaccard"] for r in near_rejects if r["jaccard"] < threshold]
    return {
        "input": result.report()["input_rows"],
        "pairs": result.details["near_dedup"]["verified_pairs"],
        "dropped": len(near_rejects),
        "clusters": len(sizes),
        "largest": 1 + max(sizes.values()) if sizes else 0,
        "below": len(below),
        "lowest_below": min(below, default=None),
    }


def table(path: Path, thresholds: list[float], fields: list[str]) -> list[dict]:
    rows = []
    for field in fields:
        for threshold in thresholds:
            default_pairs = measure(path, threshold, "star", field, DEFAULT)["pairs"]
            for cluster in MODES:
                rows.append({"fields": field, "threshold": threshold, "cluster": cluster,
                             **measure(path, threshold, cluster, field),
                             "pairs_default_banding": default_pairs})
    return rows


def show(name: str, rows: list[dict]) -> None:
    print(f"\n{name}: {rows[0]['input']} rows")
    print("| fields | threshold | cluster | pairs | dropped | clusters | largest | "
          "dropped below threshold | pairs at 20 x 5 |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        below = f"{r['below']} (lowest {r['lowest_below']})" if r["below"] else "0"
        print(f"| {r['fields']} | {r['threshold']} | {r['cluster']} | {r['pairs']} | "
              f"{r['dropped']} | {r['clusters']} | {r['largest']} | {below} | "
              f"{r['pairs_default_banding']} |")


def generated_file(n_rows: int, folder: Path) -> Path:
    from dedup_data import generate

    path = folder / f"generated_{n_rows}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for row in generate(n_rows, seed=0):
            row = {k: v for k, v in row.items() if not k.startswith("_")}  # labels are not data
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("path", nargs="?", type=Path,
                        default=REPO / "../shared/data/alpaca_5000.json")
    parser.add_argument("--thresholds", type=float, nargs="+",
                        default=[0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    parser.add_argument("--fields", nargs="+", choices=["row", "prompt"],
                        default=["row", "prompt"], help="curate.dedup_fields")
    parser.add_argument("--generated", type=int, default=0,
                        help="also this many rows of bench/dedup_data.py")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args()

    runs = [(args.path.resolve().name, table(args.path.resolve(), args.thresholds, args.fields))]
    if args.generated:
        with tempfile.TemporaryDirectory() as tmp:
            path = generated_file(args.generated, Path(tmp))
            runs.append(("bench/dedup_data.py, seed 0",
                         table(path, args.thresholds, args.fields)))
    for name, rows in runs:
        if args.json:
            for row in rows:
                print(json.dumps({"data": name, **row}))
        else:
            show(name, rows)


if __name__ == "__main__":
    main()

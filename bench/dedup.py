"""Near-duplicate detection: pedigree.data.dedup against datasketch's MinHash LSH, both scored
against exact all-pairs Jaccard on labelled rows from bench/dedup_data.py.

    .venv/bin/python bench/dedup.py [--rows 20000] [--threshold 0.8]

Both methods start from the same texts (the match text of instruction + input + output, as the
curate stage compares rows) and the same shingles (word 5-grams). Timed per method: shingling,
signatures, LSH (and, for ours, the exact verification of every candidate and the clustering).
datasketch does no verification: its pairs are its LSH candidates. Each method runs in a fresh
child process (spawn), so memory figures are that method's alone (Linux /proc/self/status):
  peak RSS   the child's peak resident memory, VmHWM: interpreter, libraries, texts and method
  method     the child's peak above its RSS just before the method ran (VmHWM after resetting
             it through /proc/self/clear_refs)
(ru_maxrss is not used: Linux carries it over from the parent across fork and exec, so a
child's figure can be the parent's.)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from child import in_child  # bench/child.py: python puts bench/ on the path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))

NGRAM = 5


def compared_text(row: dict) -> str:
    text = " ".join((row["instruction"], row["input"], row["output"]))
    try:
        from pedigree.data.text import match_text
    except ImportError:  # the text is already plain words
        return " ".join(text.lower().split())
    return match_text(text)


def shingle_sets(texts: list[str]) -> list[set[str]]:
    """Word 5-gram sets (a text of 1-4 words: one shingle of all its words), as strings."""
    out = []
    for text in texts:
        w = text.split()
        if len(w) < NGRAM:
            out.append({" ".join(w)} if w else set())
        else:
            out.append({" ".join(w[i:i + NGRAM]) for i in range(len(w) - NGRAM + 1)})
    return out


def exact_pairs(texts: list[str], threshold: float) -> dict[tuple[int, int], float]:
    """Every pair with exact Jaccard >= threshold: a sparse doc x shingle matrix times its
    transpose counts the shared shingles of every pair that shares any."""
    from scipy import sparse

    ids: dict[str, int] = {}
    rows, cols = [], []
    for doc, shingles in enumerate(shingle_sets(texts)):
        for s in shingles:
            rows.append(doc)
            cols.append(ids.setdefault(s, len(ids)))
    x = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)),
                          shape=(len(texts), len(ids)))
    sizes = np.asarray(x.sum(axis=1)).ravel()
    shared = sparse.triu(x @ x.T, k=1).tocoo()
    union = sizes[shared.row] + sizes[shared.col] - shared.data
    j = shared.data / union
    keep = j >= threshold
    return {(int(a), int(b)): float(v)
            for a, b, v in zip(shared.row[keep], shared.col[keep], j[keep], strict=True)}


# --------------------------------------------------------------------------------- children


def _rss_gib(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_ours(texts: list[str], threshold: float, bands: int, rows: int) -> tuple[np.ndarray, float]:
    from pedigree.data.dedup import near_duplicates

    start = time.perf_counter()
    found = near_duplicates(texts, threshold=threshold, bands=bands, rows=rows)
    return found.pairs, time.perf_counter() - start


def run_datasketch(texts: list[str], threshold: float, num_perm: int,
                   params: tuple[int, int] | None) -> tuple[np.ndarray, float]:
    from datasketch import MinHash, MinHashLSH

    start = time.perf_counter()
    sets = shingle_sets(texts)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, params=params)
    hashes = []
    for key, shingles in enumerate(sets):
        m = MinHash(num_perm=num_perm, seed=1)
        m.update_batch([s.encode("utf-8") for s in shingles])
        lsh.insert(key, m)
        hashes.append(m)
    pairs = set()
    for key, m in enumerate(hashes):
        if not sets[key]:
            continue  # an empty doc is not a duplicate (its MinHash is all-max)
        for other in lsh.query(m):
            if other != key and sets[other]:
                pairs.add((min(key, other), max(key, other)))
    seconds = time.perf_counter() - start
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2), seconds


def child(method: str, texts: list[str], kwargs: dict, queue: mp.Queue) -> None:
    if method == "ours":  # imports are not timed, for either method
        import pedigree.data.dedup  # noqa: F401
    else:
        import datasketch  # noqa: F401
    startup_peak = _rss_gib("VmHWM")
    before = _rss_gib("VmRSS")
    resettable = _reset_peak()
    pairs, seconds = (run_ours if method == "ours" else run_datasketch)(texts, **kwargs)
    hwm = _rss_gib("VmHWM")
    peak = None if hwm is None else max(hwm, startup_peak or 0.0)
    queue.put({
        "pairs": pairs, "seconds": seconds, "peak_rss_gib": peak,
        "method_gib": hwm - before if resettable and hwm is not None and before else None,
    })


def measure(method: str, texts: list[str], **kwargs) -> dict:
    return in_child(child, method, texts, kwargs)


# ------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--bands", type=int, default=20, help="ours: LSH bands")
    parser.add_argument("--band-rows", type=int, default=5, help="ours: signature rows per band")
    parser.add_argument("--num-perm", type=int, default=128, help="datasketch: permutations")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each method (each in a fresh child); the fastest counts")
    parser.add_argument("--skip-equal-banding", action="store_true",
                        help="leave out datasketch with our bands x rows")
    args = parser.parse_args()

    from dedup_data import generate

    start = time.perf_counter()
    rows = generate(args.rows, seed=args.seed)
    texts = [compared_text(r) for r in rows]
    print(f"{args.rows} rows generated in {time.perf_counter() - start:.1f} s; "
          f"{np.mean([len(t.split()) for t in texts]):.0f} words per row on average")
    start = time.perf_counter()
    truth = exact_pairs(texts, args.threshold)
    print(f"exact all-pairs Jaccard >= {args.threshold}: {len(truth)} pairs "
          f"({time.perf_counter() - start:.1f} s, sparse matrix product)")

    def best(method: str, **kwargs) -> dict:
        """The fastest of --repeat runs, each in a fresh child process."""
        results = [measure(method, texts, **kwargs) for _ in range(max(args.repeat, 1))]
        return min(results, key=lambda r: r["seconds"])

    runs: dict[str, dict] = {}
    runs[f"ours ({args.bands}x{args.band_rows}, verified)"] = best(
        "ours", threshold=args.threshold, bands=args.bands, rows=args.band_rows)
    lsh_default = f"datasketch (threshold={args.threshold}, {args.num_perm} perms)"
    runs[lsh_default] = best("datasketch", threshold=args.threshold, num_perm=args.num_perm,
                             params=None)
    if not args.skip_equal_banding:
        runs[f"datasketch ({args.bands}x{args.band_rows} = our banding)"] = best(
            "datasketch", threshold=args.threshold, num_perm=args.bands * args.band_rows,
            params=(args.bands, args.band_rows))

    truth_set = set(truth)
    print()
    print(f"{'method':44s} {'recall':>7s} {'precision':>9s} {'pairs':>7s} {'seconds':>8s} "
          f"{'rows/s':>9s} {'peak RSS':>9s} {'method':>7s}")
    found_sets = {}
    for name, r in runs.items():
        found = {tuple(p) for p in r["pairs"].tolist()}
        found_sets[name] = found
        hit = len(found & truth_set)
        recall = hit / len(truth_set) if truth_set else 1.0
        precision = hit / len(found) if found else 1.0
        peak = "n/a" if r["peak_rss_gib"] is None else f"{r['peak_rss_gib']:.2f}G"
        method_gib = "n/a" if r["method_gib"] is None else f"{r['method_gib']:.2f}G"
        print(f"{name:44s} {recall:7.4f} {precision:9.4f} {len(found):7d} {r['seconds']:8.2f} "
              f"{args.rows / r['seconds']:9.0f} {peak:>9s} {method_gib:>7s}")
    names = list(runs)
    print(f"seconds: the fastest of {max(args.repeat, 1)} runs of each method. memory: peak RSS ="
          " VmHWM of the method's child process (interpreter + texts + method); method = that "
          "peak above the child's RSS before the method ran")
    print()
    ratio = runs[lsh_default]["seconds"] / runs[names[0]]["seconds"]
    print(f"ours/datasketch throughput = {ratio:.1f}×  (vs {lsh_default})")
    if len(names) > 2:
        ratio = runs[names[2]]["seconds"] / runs[names[0]]["seconds"]
        print(f"ours/datasketch throughput = {ratio:.1f}×  (vs {names[2]})")

    # recall by how the pair was made
    kind: dict[tuple[int, int], str] = {}
    for i, j in truth:
        gi, gj = rows[i]["_group"], rows[j]["_group"]
        if gi is not None and gi == gj:
            kind[(i, j)] = f"edit {max(rows[i]['_edit'], rows[j]['_edit']):.0%}"
        elif rows[i]["_template"] is not None and rows[i]["_template"] == rows[j]["_template"]:
            kind[(i, j)] = "template (should not happen)"
        else:
            kind[(i, j)] = "other"
    by_kind: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for pair, k in kind.items():
        by_kind[k].append(pair)

    def order(k: str) -> float:
        return float(k[5:-1]) if k.startswith("edit ") else 1e9

    print()
    print("recall by the larger edit rate of the pair (pairs within a family with true Jaccard "
          f">= {args.threshold}; a family's rows at high edit rates mostly fall below it):")
    short = ["ours", "datasketch", f"datasketch {args.bands}x{args.band_rows}"][:len(names)]
    print(f"{'pair kind':30s} {'true pairs':>10s}" + "".join(f" {s:>16s}" for s in short))
    for k in sorted(by_kind, key=order):
        pairs = by_kind[k]
        cells = "".join(f" {len(found_sets[n] & set(pairs)) / len(pairs):16.4f}" for n in names)
        print(f"{k:30s} {len(pairs):10d}{cells}")
    families = defaultdict(int)
    for r in rows:
        if r["_group"] is not None:
            families[r["_edit"]] += 1
    print("rows per edit rate (0% includes the originals): "
          + ", ".join(f"{e:.0%}: {n}" for e, n in sorted(families.items())))
    template_pairs = sum(1 for (i, j) in found_sets[names[0]]
                         if rows[i]["_template"] is not None
                         and rows[i]["_template"] == rows[j]["_template"])
    print(f"hard negatives (templated rows) reported as duplicates by ours: {template_pairs}")


if __name__ == "__main__":
    main()

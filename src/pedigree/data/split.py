"""Deterministic, group-aware train/validation split that is stable as data grows.

- A row's side follows from sha256(salt, cluster key), where the cluster key is the id of the row
  curation kept for a cluster of duplicates: near duplicates never straddle the two sides.
- The assignments are kept in a table (`assignments.tsv`, id -> side) that the next run reads:
  a row seen before keeps its side, and a row joining an existing cluster (its own id or one of
  its `meta.cluster` ids is in the table) inherits the cluster's side. Adding rows therefore never
  moves an existing row, even when a newcomer becomes its cluster's kept row.
- With `stratify`, each source (or task) gets its own share of validation rows: the new rows of a
  stratum with the lowest hash buckets go to validation until the stratum reaches its share.
- Source weights (the training mixture) apply to the training side only, after the split: the
  validation set measures the model, not the mixture.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pedigree.config import SplitConfig
from pedigree.data.jsonl import read_jsonl, write_jsonl
from pedigree.data_layouts import CURATED_FILES
from pedigree.errors import PedigreeError

ASSIGNMENTS = "assignments.tsv"
SIDES = ("train", "validation")
_SCALE = float(1 << 64)


def bucket(key: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by the key and the salt."""
    digest = hashlib.sha256(f"{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def read_assignments(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    table = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if number == 1 and line.startswith("id\t"):
                continue
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 2 or parts[1] not in SIDES:
                raise PedigreeError(f"{path}:{number}: expected 'id<TAB>train|validation', "
                                    f"got {line.strip()!r}; delete the file to start afresh")
            table[parts[0]] = parts[1]
    return table


def write_assignments(path: Path, table: dict[str, str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\tsplit\n")
        f.writelines(f"{rid}\t{side}\n" for rid, side in sorted(table.items()))


def _members(row: dict[str, Any]) -> list[str]:
    return [row["id"], *row.get("meta", {}).get("cluster", [])]


def _stratum(row: dict[str, Any], stratify: str | None) -> str:
    if stratify == "source":
        return str(row.get("source"))
    if stratify == "task":
        return str(row.get("meta", {}).get("task"))
    return ""


@dataclass
class Split:
    train: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    inherited: int = 0  # rows whose side came from the assignments table


def split_rows(rows: list[dict[str, Any]], validation_fraction: float, salt: str,
               table: dict[str, str] | None = None, stratify: str | None = None) -> Split:
    """Split `rows` (each in input order). `table` (id -> side) is read and updated in place."""
    table = {} if table is None else table
    side_of: dict[int, str] = {}
    new: dict[str, list[int]] = defaultdict(list)  # stratum -> positions of unseen rows
    validation_in = Counter()  # stratum -> rows already assigned to validation
    size = Counter()  # stratum -> rows
    for pos, row in enumerate(rows):
        stratum = _stratum(row, stratify)
        size[stratum] += 1
        known = [table[i] for i in _members(row) if i in table]
        if known:
            # The kept row's own side wins; else the first member that has one (the cluster
            # was split before only if earlier data put its rows in different clusters).
            side_of[pos] = known[0]
            validation_in[stratum] += known[0] == "validation"
        else:
            new[stratum].append(pos)
    inherited = len(side_of)
    for stratum, positions in new.items():
        if stratify is None:
            for pos in positions:
                side_of[pos] = SIDES[bucket(rows[pos]["id"], salt) < validation_fraction]
            continue
        want = math.floor(validation_fraction * size[stratum] + 0.5) - validation_in[stratum]
        ranked = sorted(positions, key=lambda p: (bucket(rows[p]["id"], salt), rows[p]["id"]))
        for rank, pos in enumerate(ranked):
            side_of[pos] = "validation" if rank < want else "train"
    result = Split(inherited=inherited)
    for pos, row in enumerate(rows):
        side = side_of[pos]
        for rid in _members(row):
            table[rid] = side
        (result.validation if side == "validation" else result.train).append(row)
    if rows and (not result.train or not result.validation):
        raise PedigreeError(
            f"split.validation_fraction={validation_fraction} leaves one side empty for "
            f"{len(rows)} rows; add data or change the fraction")
    return result


def apply_weights(rows: list[dict[str, Any]], weights: dict[str, float],
                  salt: str) -> list[dict[str, Any]]:
    """The training mixture: a row of a source with weight w appears floor(w) times, plus once
    more when its hash bucket falls below the fraction of w (0.5 keeps a deterministic half)."""
    out = []
    for row in rows:
        w = weights.get(row.get("source"), 1.0)
        copies = math.floor(w) + (bucket(row["id"], f"{salt}/weight") < w - math.floor(w))
        out.extend([row] * copies)
    return out


KINDS = CURATED_FILES  # (kind, curated file name): each kind is split on its own


def split_curated(curated_dir: Path, out_dir: Path, cfg: SplitConfig,
                  table: dict[str, str]) -> dict[str, Any]:
    """Split a curation output directory into `out_dir`: {kind}_train.jsonl,
    {kind}_validation.jsonl and the updated assignments table. Returns the split report."""
    report_path = curated_dir / "report.json"
    weights = {}
    if report_path.exists():
        weights = {name: src.get("weight", 1.0)
                   for name, src in json.loads(report_path.read_text())["sources"].items()}
    previous = len(table)
    kinds: dict[str, dict[str, int]] = {}
    for kind, name in KINDS:
        path = curated_dir / name
        rows = read_jsonl(path) if path.exists() else []
        if not rows:
            continue
        split = split_rows(rows, cfg.validation_fraction, cfg.salt, table, cfg.stratify)
        train = apply_weights(split.train, weights, cfg.salt)
        write_jsonl(out_dir / f"{kind}_train.jsonl", train)
        write_jsonl(out_dir / f"{kind}_validation.jsonl", split.validation)
        kinds[kind] = {"train_rows": len(split.train), "train_rows_weighted": len(train),
                       "validation_rows": len(split.validation),
                       "rows_inherited": split.inherited}
    write_assignments(out_dir / ASSIGNMENTS, table)
    text = "; ".join(f"{kind}: {c['train_rows']} train ({c['train_rows_weighted']} after "
                     f"weights), {c['validation_rows']} validation, {c['rows_inherited']} kept "
                     "their earlier side" for kind, c in kinds.items())
    return {"validation_fraction": cfg.validation_fraction, "salt": cfg.salt,
            "stratify": cfg.stratify, "previous_assignments": previous,
            "assignments": len(table), "kinds": kinds, "summary": text}

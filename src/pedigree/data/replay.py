"""General data replayed during SFT against forgetting (`sft.replay`).

The replay source is curated as data/raw is (validation, filters, exact and near dedup,
decontamination against the eval sets, so that a replayed row can never be a probe's answer),
then a seeded sample of it joins the training rows: `fraction` of the rows the trainer shuffles
are replayed ones, so each batch holds that share on average.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from pedigree.config import CurateConfig, ReplayConfig
from pedigree.data.curate import check_kept, curate, eval_files
from pedigree.data.decontaminate import EvalIndex, eval_items
from pedigree.data.sources import sources_from_paths
from pedigree.data_layouts import CURATED_FILES
from pedigree.errors import PedigreeError
from pedigree.lineage import hash_of_hashes, sha256_file


def replay_files(cfg: ReplayConfig) -> list[Path]:
    """The files of the replay source, as curation reads them."""
    return sorted({p for s in sources_from_paths([Path(cfg.source)]) for p in s.files})


def replay_sha256(cfg: ReplayConfig) -> str:
    """One hash over the replay source's files (as `data_sha256` is over data/raw): the lineage
    root that names the replayed data."""
    return hash_of_hashes({p.as_posix(): sha256_file(p) for p in replay_files(cfg)})


def curated_replay(cfg: ReplayConfig, curate_cfg: CurateConfig, eval_dir: Path
                   ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The replay source's kept SFT rows and its curation report. Rows of another kind
    (preference, unpaired, task, text) are an error: replay teaches by SFT only, and nothing read
    is silently ignored."""
    decon = curate_cfg.decontaminate
    index = (EvalIndex(eval_items(eval_files(eval_dir)), decon.ngram, decon.min_words)
             if decon.enabled else None)
    result = curate(sources_from_paths([Path(cfg.source)]), curate_cfg, index)
    check_kept(result, curate_cfg.min_kept_fraction)
    report = result.report()
    others = {kind: report[f"kept_{kind}_rows"] for kind, _ in CURATED_FILES
              if kind != "sft" and report[f"kept_{kind}_rows"]}
    if others:
        found = ", ".join(f"{n} {kind}" for kind, n in others.items())
        raise PedigreeError(f"sft.replay.source {cfg.source}: {found} rows; replay takes SFT "
                            "rows only (instruction, prompt/completion or chat)")
    return [json.loads(line) for line in result.sft], report


def replay_count(train_rows: int, fraction: float) -> int:
    """Replayed rows that make `fraction` of the mixture: k / (n + k) = fraction."""
    return round(fraction * train_rows / (1 - fraction))


def mix_replay(train: list[dict[str, Any]], replay: list[dict[str, Any]], fraction: float,
               seed: int) -> tuple[list[dict[str, Any]], int]:
    """`train` plus a seeded sample of `replay` (every replay row once before any repeats, when
    the share needs more than there are); returns the mixture and the rows replayed."""
    k = replay_count(len(train), fraction)
    if k == 0:
        return list(train), 0
    if not replay:
        raise PedigreeError("sft.replay: the replay source kept no SFT rows")
    rng = random.Random(seed)
    picked: list[dict[str, Any]] = []
    while len(picked) < k:
        order = list(replay)
        rng.shuffle(order)
        picked.extend(order[: k - len(picked)])
    return [*train, *picked], k

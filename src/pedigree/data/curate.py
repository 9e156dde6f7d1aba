"""Curation: every raw row is validated, normalised, filtered, decontaminated and deduplicated,
or quarantined.

Every input row ends in exactly one place: the curated file of its kind (SFT, preference,
unpaired, task or text rows: `data_layouts.CURATED_FILES`), or `rejects.jsonl` with its file,
line, reason, detail and the row as it was. The report reconciles:
`input_rows == kept_rows + sum(dropped.values())`.

The checks run in this order, so a row's reason is the first problem it has:
  1. per row, while reading: parse, validate and normalise, placeholder answer, repetition
     (of an answer, or of a whole document)
  2. length in base-model tokens (batched)
  3. decontamination against the eval sets (n-gram overlap)
  4. exact duplicates on normalised text (the first occurrence is kept)
  5. near duplicates (MinHash LSH, verified with exact Jaccard; with curate.near_dedup.cluster
     star a row goes only for an earlier kept row at or above the threshold)
A source that keeps too little fails (`check_kept`), naming the reason and what would read it.

Steps 1-3 and the near-dedup signatures look at one row at a time: they run on parts of the data
in `curate.workers` processes (`curate_parts`), and this process puts the parts' results
together in reading order, deduplicates across them and writes the outputs. The outputs are the
same, byte for byte, whatever the number of workers.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pedigree.config import CurateConfig
from pedigree.data import dedup
from pedigree.data.curate_parts import (
    UNREAD_REASONS,
    UNREAD_SAMPLES,
    CheckedPart,
    CheckState,
    Part,
    check_part,
    plan_parts,
)
from pedigree.data.decontaminate import EvalIndex
from pedigree.data.jsonl import write_jsonl
from pedigree.data.lengths import TokenCounter
from pedigree.data.pool import ordered_map, worker_count
from pedigree.data.row_checks import reject
from pedigree.data.sources import Source, readable_files
from pedigree.data.suggest import suggest
from pedigree.data.tools import ToolSupport
from pedigree.data_layouts import CURATED_FILES
from pedigree.errors import PedigreeError
from pedigree.lineage import canonical_json

# Less data than this is curated in this process: starting workers would cost more than they
# save (and tests and small runs stay in one process).
POOL_MIN_BYTES = 32 << 20
_EXAMPLES = 3  # reject lines a failed source shows


class CurationError(PedigreeError):
    """A source kept nothing, or less than curate.min_kept_fraction of its rows."""


@dataclass
class CurationResult:
    sources: list[Source]
    sft: list[str] = field(default_factory=list)  # canonical rows as JSON lines
    preference: list[str] = field(default_factory=list)
    unpaired: list[str] = field(default_factory=list)
    task: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    rejects: list[dict[str, Any]] = field(default_factory=list)
    counts: list[Counter] = field(default_factory=list)  # per source
    truncated: list[bool] = field(default_factory=list)  # per source: its limit cut rows off
    file_formats: dict[str, Counter] = field(default_factory=dict)  # file -> layout -> rows
    # per source: rows read but not understood (their parsed values), for `check_kept`'s hint
    unread: list[list[Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def rows(self, kind: str) -> list[str]:
        """The kept rows of a kind (one of data_layouts.CURATED_FILES)."""
        return {"sft": self.sft, "preference": self.preference, "unpaired": self.unpaired,
                "task": self.task, "text": self.text}[kind]

    def report(self) -> dict[str, Any]:
        dropped = Counter(r["reason"] for r in self.rejects)
        kept = sum(len(self.rows(kind)) for kind, _ in CURATED_FILES)
        sources = {}
        for src, counts, truncated in zip(self.sources, self.counts, self.truncated, strict=True):
            sources[src.name] = {
                "files": [p.as_posix() for p in src.files],
                "format": src.format,
                "detected_formats": {k[7:]: n for k, n in sorted(counts.items())
                                     if k.startswith("format:")},
                "detected_formats_by_file": {
                    p.as_posix(): dict(sorted(self.file_formats.get(p.as_posix(), {}).items()))
                    for p in src.files},
                "columns": src.columns,
                "limit": src.limit,
                "truncated_by_limit": truncated,
                "weight": src.weight,
                "input_rows": counts["input_rows"],
                "kept_rows": counts["kept_rows"],
                "dropped": {k[8:]: n for k, n in sorted(counts.items()) if k.startswith("dropped:")},
            }
        return {
            "input_rows": kept + len(self.rejects),
            "kept_rows": kept,
            "kept_sft_rows": len(self.sft),
            "kept_preference_rows": len(self.preference),
            "kept_unpaired_rows": len(self.unpaired),
            "kept_task_rows": len(self.task),
            "kept_text_rows": len(self.text),
            "dropped": dict(sorted(dropped.items())),
            "sources": sources,
            **self.details,
        }


@dataclass
class _Candidates:
    """Every part's candidates, one column each, in reading order (a million rows stay small:
    the rows themselves wait in the parts' spool files)."""

    parts: list[Part]
    sizes: list[int]  # candidates per part
    file: list[str]
    line: list[int]
    kind: list[str]
    id: list[str]
    exact_key: list[bytes]
    group: list[str]
    part: np.ndarray  # int64: the part whose spool holds it
    text_at: np.ndarray  # int64: where in that spool its dedup text starts
    shingles: np.ndarray  # int64
    band_keys: np.ndarray  # (bands, n) uint64

    def __len__(self) -> int:
        return len(self.id)

    def jaccard(self, pairs: np.ndarray, ngram: int) -> np.ndarray:
        """The exact Jaccard of candidate pairs, from their dedup texts read back from the
        spools: only the few rows LSH pairs up are ever shingled again here."""
        docs = np.unique(pairs)  # sorted: a part's rows together, in spool order
        texts = []
        for k, in_part in itertools.groupby(docs.tolist(), key=lambda d: int(self.part[d])):
            with open(self.parts[k].spool, "rb") as f:
                for d in in_part:
                    f.seek(int(self.text_at[d]))
                    texts.append(f.readline()[:-1].decode("utf-8", "surrogatepass"))
        return dedup.jaccard(dedup.shingle(texts, ngram), np.searchsorted(docs, pairs))


def curate(sources: list[Source], cfg: CurateConfig, eval_index: EvalIndex | None = None,
           counter: TokenCounter | None = None, tools: ToolSupport | None = None,
           progress: Callable[[str], None] | None = None) -> CurationResult:
    """Curate `sources`. `eval_index` None skips decontamination, `counter` None skips the
    token-length bounds, `tools` None keeps tool calls and results unchecked. `progress` is
    told how far reading got, a part at a time, when there are several."""
    _check_disjoint(sources)
    result = CurationResult(sources=sources, counts=[Counter() for _ in sources],
                            truncated=[False] * len(sources), unread=[[] for _ in sources])
    state = CheckState(cfg, sources, eval_index, counter, tools)
    # Rows wait on disk between steps 3 and the outputs: a million would take gigabytes of
    # memory, and only the last step needs them.
    with tempfile.TemporaryDirectory(prefix="pedigree-curate-") as spool_dir:
        parts = plan_parts(sources, Path(spool_dir))
        size = sum(p.stat().st_size for src in sources for p in src.files)
        workers = min(worker_count(cfg.workers) if size >= POOL_MIN_BYTES else 1, len(parts))
        where = f"{workers} worker processes" if workers > 1 else "one process"
        checked: list[CheckedPart] = []
        rows = 0
        for part in ordered_map(check_part, state, parts, workers):
            checked.append(part)
            rows += part.counts["input_rows"]
            if progress and len(parts) > 1:
                progress(f"read {len(checked)}/{len(parts)} parts ({rows:,} rows, {where})")
        candidates = _merge(parts, checked, result, eval_index)
        dropped, clusters = _deduplicate(candidates, cfg, result)
        _unspool(candidates, dropped, clusters, result)
    index = {src.name: i for i, src in enumerate(sources)}
    file_source = {p.as_posix(): index[s.name] for s in sources for p in s.files}
    for r in result.rejects:
        result.counts[file_source[r["file"]]][f"dropped:{r['reason']}"] += 1
    result.rejects.sort(key=lambda r: (file_source[r["file"]], r["file"], r["line"]))
    return result


def _check_disjoint(sources: list[Source]) -> None:
    """Each file in one source, once: rows are counted against the source of their file, so a
    file read twice would count its rows (and their duplicates) against one source twice."""
    seen: dict[str, str] = {}
    for src in sources:
        for p in src.files:
            name = p.as_posix()
            if name in seen:
                raise PedigreeError(f"{name}: read twice (by sources {seen[name]!r} and "
                                    f"{src.name!r}); each file may be read once")
            seen[name] = src.name



def _merge(parts: list[Part], checked: list[CheckedPart], result: CurationResult,
           eval_index: EvalIndex | None) -> _Candidates:
    """The parts' counts and rejects into `result`, their candidates into one table."""
    for part, c in zip(parts, checked, strict=True):
        result.counts[part.source].update(c.counts)
        for name, formats in c.file_formats.items():
            result.file_formats.setdefault(name, Counter()).update(formats)
        result.rejects.extend(c.rejects)
        unread = result.unread[part.source]
        unread.extend(c.unread[:UNREAD_SAMPLES - len(unread)])
        result.truncated[part.source] |= c.truncated
        if eval_index is not None:
            eval_index.matched |= c.matched
    if eval_index is not None:
        result.details["decontamination"] = eval_index.summary()
    sizes = [len(c.id) for c in checked]
    table = _Candidates(
        parts=parts, sizes=sizes,
        file=[f for c in checked for f in c.file], line=[n for c in checked for n in c.line],
        kind=[k for c in checked for k in c.kind], id=[i for c in checked for i in c.id],
        exact_key=[k for c in checked for k in c.exact_key],
        group=[g for c in checked for g in c.group],
        part=np.repeat(np.arange(len(parts)), sizes).astype(np.int64),
        text_at=np.array([t for c in checked for t in c.text_at], dtype=np.int64),
        shingles=np.concatenate([c.shingles for c in checked]) if checked
        else np.zeros(0, dtype=np.int64),
        band_keys=np.concatenate([c.band_keys for c in checked], axis=1) if checked
        else np.zeros((0, 0), dtype=np.uint64))
    for c in checked:  # the table holds them now
        c.shingles = c.band_keys = None
    return table


def _deduplicate(candidates: _Candidates, cfg: CurateConfig, result: CurationResult
                 ) -> tuple[dict[int, dict[str, Any]], dict[int, list[str]]]:
    """Steps 4 and 5: the reject record of each dropped candidate (by position; its raw row is
    filled in from the spool) and the ids each kept candidate stands for. Every dropped row
    names the kept row it duplicates (`duplicate_of`); every kept row lists the ids it stands
    for (`meta.cluster`), so the split keeps a cluster together.

    curate.near_dedup.cluster (see pedigree.data.dedup): "star" drops a row only for an earlier
    kept row with Jaccard >= threshold, so every near_duplicate reject's `jaccard` is at least
    the threshold; "connected" drops every row of a chain of such pairs but the first, so a
    reject's `jaccard` with the kept row it names may be lower (its detail says so)."""
    n = len(candidates)
    rep = list(range(n))  # position of the row each candidate is a duplicate of
    why: dict[int, tuple[str, str, dict[str, Any]]] = {}
    if cfg.exact_dedup:
        first: dict[bytes, int] = {}
        for pos, key in enumerate(candidates.exact_key):
            rep[pos] = first.setdefault(key, pos)
            if rep[pos] != pos:
                why[pos] = ("exact_duplicate", "same normalised text as a kept row", {})
    if cfg.near_dedup.enabled:
        nd, stats = cfg.near_dedup, Counter()
        for group in dict.fromkeys(candidates.group):
            positions = np.array([p for p, r in enumerate(rep)
                                  if r == p and candidates.group[p] == group], dtype=np.int64)
            found = dedup.near_duplicates_by_keys(
                candidates.shingles[positions], candidates.band_keys[:, positions],
                lambda pairs, at=positions: candidates.jaccard(at[pairs], nd.ngram),
                threshold=nd.threshold, cluster=nd.cluster)
            stats["candidate_pairs"] += found.candidates
            stats["verified_pairs"] += len(found.pairs)
            positions = positions.tolist()
            for local, rep_local in enumerate(found.representative.tolist()):
                if rep_local != local:
                    exact = float(found.similarity[local])
                    jaccard = round(exact, 4)
                    if (jaccard >= nd.threshold) != (exact >= nd.threshold):
                        jaccard = exact  # rounding would cross the threshold: 0.79996 -> 0.8
                    rep[positions[local]] = positions[rep_local]
                    if nd.cluster == "star":  # always >= threshold: star drops for kept rows
                        detail = (f"Jaccard {jaccard} >= curate.near_dedup.threshold="
                                  f"{nd.threshold} with the kept row (the first such kept row)")
                    else:  # a chain of verified pairs: the kept row itself may be below
                        relation = ">=" if exact >= nd.threshold else "<"
                        detail = (f"in a chain of pairs with Jaccard >= curate.near_dedup."
                                  f"threshold={nd.threshold} (cluster=connected); Jaccard "
                                  f"{jaccard} {relation} threshold with the kept row itself")
                    why[positions[local]] = ("near_duplicate", detail, {"jaccard": jaccard})
        # An exact duplicate of a near duplicate belongs to the near duplicate's kept row.
        for pos in why:
            if rep[rep[pos]] != rep[pos]:
                rep[pos] = rep[rep[pos]]
                detail = "same normalised text as a near duplicate of a kept row"
                why[pos] = ("exact_duplicate", detail, {})
        result.details["near_dedup"] = dict(stats)

    dropped: dict[int, dict[str, Any]] = {}
    members: dict[int, list[str]] = {}
    for pos, (reason, detail, extra) in sorted(why.items()):
        kept_id = candidates.id[rep[pos]]
        dropped[pos] = reject(candidates.file[pos], candidates.line[pos], None, reason, detail,
                              duplicate_of=kept_id, **extra)
        result.rejects.append(dropped[pos])
        members.setdefault(rep[pos], []).append(candidates.id[pos])
    clusters = {pos: sorted(set(ids) - {candidates.id[pos]}) for pos, ids in members.items()}
    result.details.setdefault("near_dedup", {})["clusters"] = len(members)
    return dropped, clusters


def _unspool(candidates: _Candidates, dropped: dict[int, dict[str, Any]],
             clusters: dict[int, list[str]], result: CurationResult) -> None:
    """The last step: read the rows back in order, into the outputs or their reject records."""
    pos = 0
    for part, size in zip(candidates.parts, candidates.sizes, strict=True):
        with open(part.spool, "rb") as spool:
            for _ in range(size):
                row, raw = spool.readline()[:-1].decode(), spool.readline()
                spool.readline()  # the dedup text
                if pos in dropped:
                    dropped[pos]["raw"] = json.loads(raw)
                else:
                    if cluster := clusters.get(pos):
                        parsed = json.loads(row)
                        parsed["meta"]["cluster"] = cluster
                        row = canonical_json(parsed)
                    result.rows(candidates.kind[pos]).append(row)
                    result.counts[part.source]["kept_rows"] += 1
                pos += 1


def check_kept(result: CurationResult, min_fraction: float) -> None:
    """CurationError unless every source kept rows, and at least `min_fraction` of them: a run
    that keeps nothing must not pass as an empty success. The message names, per failing
    source, the main reject reason, three example lines and, when one is found, the format or
    column mapping that reads the rows."""
    report = result.report()
    failures = []
    for i, (name, src) in enumerate(report["sources"].items()):
        n_in, kept = src["input_rows"], src["kept_rows"]
        if n_in and kept and kept >= min_fraction * n_in:
            continue
        if not n_in:
            failures.append(f"source {name!r}: no rows in {', '.join(src['files'])}")
            continue
        reason, dropped = max(src["dropped"].items(), key=lambda kv: (kv[1], kv[0]))
        lines = [(f"source {name!r}: kept {kept} of {n_in} rows (curate.min_kept_fraction="
                  f"{min_fraction}); main reason {reason} ({dropped} rows), e.g.")]
        files = set(src["files"])
        examples = [r for r in result.rejects if r["reason"] == reason and r["file"] in files]
        for r in examples[:_EXAMPLES]:
            raw = r["raw"] if isinstance(r["raw"], str) else json.dumps(r["raw"])
            lines.append(f"  {r['file']}:{r['line']}: {r['detail']}")
            lines.append(f"    {raw[:160]}{'...' if len(raw) > 160 else ''}")
        src_obj = result.sources[i]
        hint = suggest(result.unread[i], src_obj.format, src_obj.columns) \
            if reason in UNREAD_REASONS else None
        if hint:
            lines.append(f"  hint: {hint}")
        failures.append("\n".join(lines))
    if failures:
        failures.append("(a source that rightly loses most rows, to duplicates or length bounds, "
                        "passes with a lower curate.min_kept_fraction)")
        raise CurationError("curation kept too little\n"
                            + "\n".join(failures))


def eval_files(eval_dir: Path, more: list[Path] | None = None) -> list[Path]:
    """Every readable file of the eval directory (always checked), then any files named."""
    files = readable_files(eval_dir) if eval_dir.is_dir() else []
    for path in more or []:
        files.extend(readable_files(path))
    return files


def write_curation(result: CurationResult, out_dir: Path) -> dict[str, Any]:
    """The kept rows of each kind (sft.jsonl, preferences.jsonl, unpaired.jsonl, tasks.jsonl,
    text.jsonl: `data_layouts.CURATED_FILES`, each written even when empty), rejects.jsonl and
    report.json in `out_dir`."""
    for kind, name in CURATED_FILES:
        with open(out_dir / name, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in result.rows(kind))
    write_jsonl(out_dir / "rejects.jsonl", result.rejects)
    report = result.report()
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def summary(report: dict[str, Any]) -> str:
    """A few readable lines: what came in, what was kept, what was dropped and why."""
    lines = [(f"kept {report['kept_rows']} of {report['input_rows']} rows "
              f"({report['kept_sft_rows']} SFT, {report['kept_preference_rows']} preference, "
              f"{report['kept_unpaired_rows']} unpaired, {report['kept_task_rows']} task, "
              f"{report['kept_text_rows']} text)")]
    for name, src in report["sources"].items():
        formats = ", ".join(f"{f} {n}" for f, n in src["detected_formats"].items()) or "none"
        cut = f", cut at limit {src['limit']}" if src["truncated_by_limit"] else ""
        lines.append(f"  {name}: {src['input_rows']} in, {src['kept_rows']} kept; "
                     f"format {src['format']} -> {formats}{cut}")
    width = max((len(r) for r in report["dropped"]), default=0)
    for reason, n in sorted(report["dropped"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  dropped {reason:<{width}}  {n}")
    return "\n".join(lines)

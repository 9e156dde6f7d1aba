"""Curation's per-row half, a part of the data at a time, in a worker process.

A part is a span of lines of a large JSONL or text file (`readers.line_spans`), a whole file of
another layout, or a whole source that has a row limit (its rows are counted in order). Each
part goes through the steps that look at one row alone: the row checks (`row_checks`), the
length bounds in base-model tokens, decontamination against the eval sets, and the MinHash band
keys near-dedup groups rows by. What comes back is compact: counts, the rows already rejected
(with their text), and a few columns per surviving row; the rows themselves wait in the part's
spool file until `curate` writes the outputs. Rows never depend on other parts here, so the
parts' results, taken in order, are the same whatever process made them.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from pedigree.config import CurateConfig
from pedigree.data import dedup
from pedigree.data.decontaminate import EvalIndex
from pedigree.data.lengths import BATCH, TokenCounter
from pedigree.data.readers import RawRow, Span, line_spans, read_rows, splittable
from pedigree.data.row_checks import Candidate, RowChecker, reject
from pedigree.data.sources import Source
from pedigree.data.tools import ToolSupport

PART_BYTES = 16 << 20  # a JSONL or text file is cut into spans of about this many bytes
# Reasons that say the row's layout was not understood (a column mapping may read it).
UNREAD_REASONS = frozenset({"missing_field", "unknown_format", "wrong_type", "no_prompt",
                            "no_final_assistant", "no_speaker_labels", "not_an_object"})
UNREAD_SAMPLES = 20  # rows a suggestion is tried on, per source


@dataclass(frozen=True)
class Part:
    source: int  # index into the sources
    files: tuple[Path, ...]  # read in order
    span: Span | None  # the lines of the one file; None: the whole files
    limit: int | None  # rows read over all the files (a source with a limit is one part)
    spool: Path  # where its surviving rows wait


@dataclass
class CheckState:
    """What every worker needs: the same in each (a fork copies it)."""

    cfg: CurateConfig
    sources: list[Source]
    eval_index: EvalIndex | None  # None: no decontamination
    counter: TokenCounter | None  # None: no length bounds
    tools: ToolSupport | None  # None: tool calls unchecked


@dataclass
class CheckedPart:
    """A part's outcome. The columns describe its candidates (rows through steps 1-3), in order;
    their canonical rows, raw texts and dedup texts are in the spool, three lines each."""

    counts: Counter = field(default_factory=Counter)  # input_rows, format:<name>
    file_formats: dict[str, Counter] = field(default_factory=dict)  # file -> format -> rows
    rejects: list[dict[str, Any]] = field(default_factory=list)  # steps 1-3, with the raw row
    unread: list[Any] = field(default_factory=list)  # rows not understood (parsed values)
    truncated: bool = False  # its source's limit cut rows off
    matched: set[int] = field(default_factory=set)  # eval items a candidate matched
    file: list[str] = field(default_factory=list)
    line: list[int] = field(default_factory=list)
    kind: list[str] = field(default_factory=list)
    id: list[str] = field(default_factory=list)
    exact_key: list[bytes] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    text_at: list[int] = field(default_factory=list)  # spool offset of each dedup text
    shingles: Any = None  # np.ndarray (n,) int64: shingles of each dedup text
    band_keys: Any = None  # np.ndarray (bands, n) uint64 (bands 0 without near dedup)


def plan_parts(sources: list[Source], spool_dir: Path, part_bytes: int | None = None
               ) -> list[Part]:
    """The parts of `sources`, in reading order (spans of about `part_bytes`, default
    PART_BYTES)."""
    part_bytes = part_bytes or PART_BYTES
    parts: list[Part] = []

    def add(source: int, files: tuple[Path, ...], span: Span | None, limit: int | None) -> None:
        parts.append(Part(source, files, span, limit, spool_dir / f"{len(parts):06d}.spool"))

    for i, src in enumerate(sources):
        if src.limit is not None:
            add(i, src.files, None, src.limit)
            continue
        for path in src.files:
            if splittable(path) and path.stat().st_size > part_bytes:
                for span in line_spans(path, part_bytes):
                    add(i, (path,), span, None)
            else:
                add(i, (path,), None, None)
    return parts


def check_part(state: CheckState, part: Part) -> CheckedPart:
    """Steps 1-3 and the band keys for the rows of `part` (see the module's docstring)."""
    src = state.sources[part.source]
    check = RowChecker(state.cfg, state.tools)
    out = CheckedPart()
    shingles: list[np.ndarray] = []
    keys: list[np.ndarray] = []
    rows, was_truncated = _read_part(part)
    batch: list[Candidate] = []
    with open(part.spool, "wb") as spool:
        for raw in rows:
            out.counts["input_rows"] += 1
            outcome = check(raw, src)
            if isinstance(outcome, dict):
                out.rejects.append(outcome)
                if outcome["reason"] in UNREAD_REASONS and len(out.unread) < UNREAD_SAMPLES:
                    out.unread.append(raw.value)
                continue
            out.counts[f"format:{outcome.format}"] += 1
            out.file_formats.setdefault(raw.file, Counter())[outcome.format] += 1
            batch.append(outcome)
            if len(batch) >= BATCH:
                _later_steps(state, batch, out, spool, shingles, keys)
                batch = []
        _later_steps(state, batch, out, spool, shingles, keys)
    out.truncated = was_truncated()
    if state.eval_index is not None:
        out.matched = set(state.eval_index.matched)
    nd = state.cfg.near_dedup
    out.shingles = np.concatenate(shingles) if shingles else np.zeros(0, dtype=np.int64)
    out.band_keys = (np.concatenate(keys, axis=1) if keys
                     else np.zeros((nd.bands if nd.enabled else 0, 0), dtype=np.uint64))
    return out


def _read_part(part: Part) -> tuple[Iterator[RawRow], Callable[[], bool]]:
    """The rows of a part up to its limit, and a check (after reading) whether it cut any."""
    rows = itertools.chain.from_iterable(read_rows(p, p.as_posix(), part.span)
                                         for p in part.files)
    if part.limit is None:
        return rows, lambda: False
    limited = itertools.islice(rows, part.limit)
    return limited, lambda: next(rows, None) is not None


def _later_steps(state: CheckState, batch: list[Candidate], out: CheckedPart, spool: IO[bytes],
                 shingles: list[np.ndarray], keys: list[np.ndarray]) -> None:
    """Steps 2 and 3 for a batch of candidates, then the band keys and the spool of those that
    pass."""
    cfg = state.cfg
    if state.counter is not None and batch:
        kept = []
        tokens = state.counter.lengths([c.text for c in batch], cfg.min_tokens, cfg.max_tokens)
        for c, n in zip(batch, tokens, strict=True):
            if 0 <= n < cfg.min_tokens:
                out.rejects.append(reject(c.file, c.line, c.raw, "too_short",
                                          f"{n} tokens < curate.min_tokens={cfg.min_tokens}"))
            elif n > cfg.max_tokens:
                out.rejects.append(reject(c.file, c.line, c.raw, "too_long",
                                          f"{n} tokens > curate.max_tokens={cfg.max_tokens}"))
            else:
                kept.append(c)
        batch = kept
    if state.eval_index is not None and batch:
        matches = state.eval_index.match([c.row_text for c in batch],
                                         [c.prompt_text for c in batch])
        kept = []
        for c, match in zip(batch, matches, strict=True):
            if match is None:
                kept.append(c)
            else:
                out.rejects.append(reject(c.file, c.line, c.raw, "eval_contamination",
                                          match.detail, eval_item=match.item))
        batch = kept
    if not batch:
        return
    nd = cfg.near_dedup
    if nd.enabled:
        counts, band_keys = dedup.minhash_keys([c.dedup_text for c in batch], ngram=nd.ngram,
                                               bands=nd.bands, rows=nd.rows, seed=nd.seed)
        shingles.append(counts)
        keys.append(band_keys)
    at = spool.tell()
    for c in batch:
        head = f"{c.row}\n{json.dumps(c.raw)}\n".encode()
        text = f"{c.dedup_text}\n".encode("utf-8", "surrogatepass")
        spool.write(head)
        spool.write(text)
        out.text_at.append(at + len(head))
        at += len(head) + len(text)
        out.file.append(c.file)
        out.line.append(c.line)
        out.kind.append(c.kind)
        out.id.append(c.id)
        out.exact_key.append(c.exact_key)
        out.group.append(c.group)

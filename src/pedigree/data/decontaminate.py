"""Decontamination: training rows that share a word n-gram with an eval set are dropped.

As lm-evaluation-harness does: texts are lower-cased words without punctuation, and a training
row is contaminated when it contains any 13-gram (`ngram`) of an eval text. An eval text shorter
than `ngram` words is matched as a whole word sequence when it has at least `min_words` words;
shorter ones (a bare number, a name) would match by chance, so they only match a training prompt
that equals them exactly. Every match is verified word by word and names the eval item.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pedigree.data import dedup
from pedigree.data.readers import InputError, read_rows
from pedigree.data.text import match_text

CHUNK = 8192  # training rows per vectorised pass: bounds memory at ~100 words per row
_U64 = np.uint64
_MIX = _U64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of the rolling n-gram hash
_BITMAP_BITS = 24  # 2 MB bitmap: ~1e-3 false positives per n-gram for thousands of eval n-grams
METADATA_FIELDS = {"id", "task", "match", "source", "meta", "reference_type"}


@dataclass(frozen=True)
class EvalItem:
    label: str  # file:line (and the item's id when it has one)
    text: str


@dataclass(frozen=True)
class Match:
    item: str
    detail: str


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            if k not in METADATA_FIELDS and k != "role":
                yield from _strings(v)


def eval_items(files: Sequence[Path]) -> list[EvalItem]:
    """Every text field of every row of the eval files (ids, tasks and roles are not text)."""
    items = []
    for path in files:
        for raw in read_rows(path, path.as_posix()):
            if raw.error:
                raise InputError(f"{raw.file}:{raw.line}: eval row unreadable: {raw.error}")
            label = f"{raw.file}:{raw.line}"
            if isinstance(raw.value, dict) and isinstance(raw.value.get("id"), str):
                label += f" ({raw.value['id']})"
            items.extend(EvalItem(label, text) for text in _strings(raw.value) if text.strip())
    return items


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every word of every text in order, words per text), vectorised: the same
    content-stable word hashes near-duplicate detection uses."""
    if not texts:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    return dedup._word_hashes(*dedup._encode(texts))


def _grams(words: np.ndarray, lengths: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(k, hash of the k words starting at every position) for each k in `lengths`, ascending:
    one rolling pass per word position up to the largest k, not one pass per k."""
    wanted = sorted(set(lengths))
    acc = np.zeros(len(words), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(1, wanted[-1] + 1 if wanted else 0):
            n = len(words) - k + 1
            if n <= 0:
                return
            acc = acc[:n] * _MIX + words[k - 1:k - 1 + n]
            if k in wanted:
                yield k, acc


class EvalIndex:
    def __init__(self, items: Sequence[EvalItem], ngram: int = 13, min_words: int = 5):
        self.ngram, self.min_words = ngram, min_words
        self.items = list(items)
        self.tables: dict[int, dict[int, tuple[int, int]]] = {}  # k -> hash -> (item, start)
        self.short: dict[str, int] = {}  # whole text of a very short item -> item
        texts = [match_text(item.text) for item in self.items]
        words, counts = word_hashes(texts)
        self.item_words = np.split(words, np.cumsum(counts)[:-1]) if texts else []
        for i, (text, w) in enumerate(zip(texts, self.item_words, strict=True)):
            if len(w) < min_words:
                if text:  # an item of no words ("[]") matches nothing: not every wordless prompt
                    self.short.setdefault(text, i)
                continue
            k = min(ngram, len(w))
            for _, hashes in _grams(w, [k]):
                table = self.tables.setdefault(k, {})
                for start, h in enumerate(hashes.tolist()):
                    table.setdefault(h, (i, start))
        # A bitmap over the top bits of every eval n-gram hash rejects almost every training
        # n-gram with one lookup; the few that pass are checked exactly.
        self._bitmap = np.zeros(1 << _BITMAP_BITS, dtype=bool)
        for table in self.tables.values():
            keys = np.fromiter(table, dtype=np.uint64, count=len(table))
            self._bitmap[keys >> _U64(64 - _BITMAP_BITS)] = True
        self.matched: set[int] = set()

    def summary(self) -> dict[str, Any]:
        return {"eval_texts": len(self.items), "ngram": self.ngram, "min_words": self.min_words,
                "eval_texts_matched": len(self.matched)}

    def match(self, row_texts: Sequence[str], prompt_texts: Sequence[str]) -> list[Match | None]:
        """For each training row (its match texts), the first eval item it overlaps, or None."""
        out: list[Match | None] = [None] * len(row_texts)
        for start in range(0, len(row_texts), CHUNK):
            self._match_chunk(row_texts[start:start + CHUNK], start, out)
        for i, prompt in enumerate(prompt_texts):
            item = self.short.get(prompt)
            if out[i] is None and item is not None:
                self.matched.add(item)
                out[i] = Match(self.items[item].label,
                               f"the prompt equals eval text {self.items[item].text!r}")
        return out

    def _match_chunk(self, texts: Sequence[str], first: int, out: list[Match | None]) -> None:
        if not self.tables:
            return
        words, counts = word_hashes(texts)
        ends = np.cumsum(counts)
        doc = np.searchsorted(ends, np.arange(len(words)), side="right")
        room = ends[doc] - np.arange(len(words))  # words left in its text from each position
        for k, hashes in _grams(words, self.tables):
            maybe = self._bitmap[hashes >> _U64(64 - _BITMAP_BITS)] & (room[:len(hashes)] >= k)
            for pos in np.flatnonzero(maybe).tolist():
                d = int(doc[pos])
                hit = self.tables[k].get(int(hashes[pos]))
                if out[first + d] is not None or hit is None:
                    continue
                item, at = hit
                if np.array_equal(self.item_words[item][at:at + k], words[pos:pos + k]):
                    self.matched.add(item)
                    local = pos - int(ends[d] - counts[d])
                    shared = " ".join(texts[d].split()[local:local + k])
                    out[first + d] = Match(self.items[item].label,
                                           f"shares the {k}-gram {shared!r} with an eval text")

"""Near-duplicate detection: MinHash LSH over word n-gram shingles, every candidate pair verified
with its exact Jaccard similarity.

    found = near_duplicates(texts, threshold=0.8)   # texts already normalised by the caller
    found.representative[i]                         # the kept doc that doc i duplicates

Which docs are dropped (`cluster`):
  star       docs in order; a doc is dropped when its Jaccard with an already KEPT doc is at
             least the threshold, and its representative is the first such kept doc. So every
             dropped doc is >= threshold similar to the doc it is dropped for. The default.
  connected  the connected components of the verified pairs; each keeps its first doc. A chain
             a~b, b~c drops c even when J(a, c) is far below the threshold: fewer docs are
             kept, and a dropped doc's similarity with its representative is not bounded.

The steps are public so that benchmarks and tests can run them one by one:

  shingle(texts)                 -> Shingles: each doc's sorted unique 64-bit n-gram hashes
  signatures(shingles, num_perm) -> (n_docs, num_perm) uint32 MinHash signatures
  candidate_pairs(sig, b, r)     -> pairs that agree on all r rows of at least one of b bands
  jaccard(shingles, pairs)       -> exact Jaccard of each pair's shingle sets

Everything is numpy, vectorised over chunks of documents; no Python code runs per word or per
shingle. Words are found and hashed on the UTF-8 bytes of a chunk of texts (see word_hash), so
the texts are never split into Python strings. numpy releases the GIL in most of its loops, so
two worker threads hash chunks while the calling thread encodes the next one, and signatures are
computed on two threads as well.

Hashes are content-stable: the same text gets the same shingles, signatures and result in every
process and run (Python's `hash()` is salted; these are fixed arithmetic on the bytes).

On a 2-core VM, near_duplicates takes about 9 s for 1M alpaca-sized rows (about 80 words each)
with its peak memory about 1 GB above the texts (mostly the 8 bytes per shingle of Shingles);
bench/dedup.py compares it with datasketch.
"""

from __future__ import annotations

import numbers
import re
import threading
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["CLUSTERS", "NearDuplicates", "Shingles", "candidate_pairs", "jaccard", "minhash_keys",
           "near_duplicates", "near_duplicates_by_keys", "shingle", "signatures", "word_hash"]

_U64 = np.uint64
_MASK64 = (1 << 64) - 1
_NGRAM_MULT = _U64(0x9E3779B97F4A7C15)  # odd: the rolling n-gram polynomial's base
_LEN_MULT = _U64(0xD6E8FEB86659FD93)  # tags a short doc's single shingle with its word count
_BAND_MULT = _U64(0xC2B2AE3D27D4EB4F)
_CHUNK_CHARS = 1 << 19  # characters of text per shingling chunk
_SIG_CHUNK = 8192  # shingles per signature block: with 100 permutations the block is 6.5 MB
_PAIR_BLOCK = 1024  # pairs per verification block
_THREADS = 2
# Above this many docs agreeing on one band, a group is not expanded into all its pairs (that
# grows as the square); see candidate_pairs.
MAX_GROUP = 2000


@dataclass(frozen=True)
class Shingles:
    hashes: np.ndarray  # uint64, concatenated; each doc's shingle hashes sorted and unique
    offsets: np.ndarray  # int64, len = n_docs + 1; doc i owns hashes[offsets[i]:offsets[i+1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class NearDuplicates:
    representative: np.ndarray  # int64 per doc: the kept doc it is dropped for (itself: kept)
    similarity: np.ndarray  # float64 per doc: exact Jaccard with its representative (1.0: kept);
    # with cluster="star" >= threshold for every dropped doc, with "connected" possibly lower
    pairs: np.ndarray  # (k, 2) int64 verified pairs i < j with Jaccard >= threshold, sorted
    pair_jaccard: np.ndarray  # (k,) float64: their exact Jaccard
    candidates: int  # LSH candidate pairs that were verified


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array: every input bit affects every output
    bit, so shingles that differ in one word get unrelated hashes."""
    with np.errstate(over="ignore"):
        z ^= z >> _U64(30)
        z *= _U64(0xBF58476D1CE4E5B9)
        z ^= z >> _U64(27)
        z *= _U64(0x94D049BB133111EB)
        z ^= z >> _U64(31)
    return z


_WORD_MULT = 0x9E3779B97F4A7C17  # odd: P in sum_i byte_i * P**i
_WORD_MULT_INV = pow(_WORD_MULT, -1, 1 << 64)
_ASCII_SPACE = np.zeros(256, dtype=bool)
_ASCII_SPACE[[9, 10, 11, 12, 13, 28, 29, 30, 31, 32]] = True  # str.split()'s ASCII white space
# str.split()'s other white space; rare, so texts with it are rewritten to plain spaces first
_UNICODE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")


def word_hash(word: str) -> int:
    """The content-stable 64-bit hash of a word (the same in every process, run and machine):
    over its UTF-8 bytes b_0..b_{L-1}, mix64(sum_i b_i * P**i + L * C mod 2**64), with fixed
    odd constants P, C and splitmix64's finaliser mix64.

    shingle() computes exactly this for every word of a chunk of texts at once (prefix sums
    over the chunk's bytes), several times faster than splitting the texts into Python strings
    and hashing each (unique) word with hashlib.
    """
    data = word.encode("utf-8", "surrogatepass")
    raw = sum(byte * pow(_WORD_MULT, i, 1 << 64) for i, byte in enumerate(data))
    raw = (raw + len(data) * int(_LEN_MULT)) & _MASK64
    return int(_mix64(np.array([raw], dtype=np.uint64))[0])


class _Powers:
    """P**j and P**-j mod 2**64 for byte positions j in a chunk, grown on demand (guarded: the
    worker threads only read them)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.up = np.ones(1, dtype=np.uint64)
        self.down = np.ones(1, dtype=np.uint64)

    def ensure(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        with self.lock:
            if len(self.up) < size:
                size = max(size, 2 * len(self.up))
                with np.errstate(over="ignore"):
                    up = np.full(size, _U64(_WORD_MULT))
                    up[0] = 1
                    np.multiply.accumulate(up, out=up)
                    down = np.full(size, _U64(_WORD_MULT_INV))
                    down[0] = 1
                    np.multiply.accumulate(down, out=down)
                self.up, self.down = up, down
            return self.up, self.down


_POWERS = _Powers()


def _encode(texts: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """The chunk as UTF-8 bytes (" " + text_0 + " " + text_1 ... + " ") and each text's length
    in bytes. Runs in the calling thread: it is the part that holds the GIL."""
    joined = " ".join(texts)
    if not joined.isascii() and _UNICODE_SPACE.search(joined):
        texts = [_UNICODE_SPACE.sub(" ", t) for t in texts]
        joined = " ".join(texts)
    data = (" " + joined + " ").encode("utf-8", "surrogatepass")
    if len(data) == len(joined) + 2:
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    else:
        lengths = np.fromiter((len(t.encode("utf-8", "surrogatepass")) for t in texts),
                              dtype=np.int64, count=len(texts))
    return data, lengths


def _word_hashes(data: bytes, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every word of the chunk in order, words per text): word_hash() vectorised."""
    b = np.frombuffer(data, dtype=np.uint8)
    space = b <= 32
    if (b < 28).any():  # control bytes: only some of them are white space
        space = _ASCII_SPACE[b]
    # data begins and ends with white space, so the edges alternate: word start, word end
    edges = np.flatnonzero(space[1:] != space[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]  # ends exclusive
    up, down = _POWERS.ensure(len(b))
    with np.errstate(over="ignore"):
        c = b.astype(np.uint64)
        c *= up[:len(b)]
        prefix = np.cumsum(c, out=c)
        h = prefix[ends - 1]
        h -= prefix[starts - 1]
        h *= down[starts]
        h += (ends - starts).astype(np.uint64) * _LEN_MULT
    text_start = np.cumsum(lengths + 1) - lengths  # byte offset of each text in data
    bounds = np.searchsorted(starts, np.append(text_start, len(b)))
    return _mix64(h), np.diff(bounds)


def _ngram_hashes(words: np.ndarray, lengths: np.ndarray, ngram: int) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    """Hashes of every doc's word n-grams (a doc with 1..ngram-1 words: one shingle of all its
    words; an empty doc: none), in doc order, and the number per doc. Not yet sorted or unique.

    A shingle of m words w_0..w_{m-1} (m = ngram, or the word count of a short doc) hashes to
    mix64(sum_k w_k * M**(m-1-k) + m * C mod 2**64): a polynomial over the word hashes."""
    n_docs = len(lengths)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    n_total = int(ends[-1]) if n_docs else 0
    counts = np.where(lengths >= ngram, lengths - (ngram - 1), np.minimum(lengths, 1))
    with np.errstate(over="ignore"):
        # rolling polynomial over all positions; windows that cross a doc's end are dropped
        width = max(n_total - (ngram - 1), 0)
        acc = words[:width].copy()
        for k in range(1, ngram):
            acc *= _NGRAM_MULT
            acc += words[k:k + width]
        acc += _U64(ngram) * _LEN_MULT
        valid = np.ones(width, dtype=bool)
        if ngram > 1:
            # a window starting at p is valid when p + ngram <= the end of p's doc
            late = ends[:, None] - np.arange(1, ngram)[None, :]
            late = late[(late >= starts[:, None]) & (late < width)]
            valid[late] = False
        grams = acc[valid]
        short = np.flatnonzero((lengths > 0) & (lengths < ngram))
        if len(short):
            # a short doc's one shingle: the same polynomial over its m words, tagged with m
            m = lengths[short]
            padded = np.concatenate([words, np.zeros(ngram, dtype=np.uint64)])
            first = starts[short]
            acc_s = padded[first].copy()
            for k in range(1, ngram):
                step = acc_s * _NGRAM_MULT + padded[first + k]
                acc_s = np.where(k < m, step, acc_s)
            acc_s += m.astype(np.uint64) * _LEN_MULT
            # splice them in at their docs' positions
            long_counts = np.where(lengths >= ngram, counts, 0)
            at = np.cumsum(long_counts)[short] - long_counts[short]
            grams = np.insert(grams, at, acc_s)
    return _mix64(grams), counts


def _sort_unique(grams: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each doc's segment and drop repeats: docs are bucketed by length and each bucket is
    padded to a matrix whose rows numpy sorts in one call."""
    n = len(counts)
    seg_start = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=seg_start[1:])
    order = np.argsort(counts, kind="stable")
    sorted_counts = counts[order]
    pieces: list[np.ndarray] = []
    unique_counts = np.zeros(n, dtype=np.int64)
    bucket = 512
    for lo in range(0, n, bucket):
        docs = order[lo:lo + bucket]
        c = sorted_counts[lo:lo + bucket]
        width = int(c[-1])
        if width == 0:
            continue
        mat = np.full((len(docs), width), np.iinfo(np.uint64).max, dtype=np.uint64)
        rows = np.repeat(np.arange(len(docs)), c)
        cols = np.arange(len(rows)) - np.repeat(np.cumsum(c) - c, c)
        mat[rows, cols] = grams[np.repeat(seg_start[docs], c) + cols]
        mat.sort(axis=1)
        # padding sorts last, so a row's first c entries are exactly its doc's values
        keep = np.arange(width) < c[:, None]
        keep[:, 1:] &= mat[:, 1:] != mat[:, :-1]
        unique_counts[docs] = keep.sum(axis=1)
        pieces.append(mat[keep])
    # back to doc order
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(unique_counts, out=offsets[1:])
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    if len(out):
        flat = np.concatenate(pieces)
        docs_sorted = order[unique_counts[order] > 0]
        uc = unique_counts[docs_sorted]
        rank = np.arange(len(flat)) - np.repeat(np.cumsum(uc) - uc, uc)
        out[np.repeat(offsets[docs_sorted], uc) + rank] = flat
    return out, offsets


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _chunks(texts: Sequence[str], budget: int) -> tuple[list[tuple[int, int]], int]:
    """[lo, hi) ranges of whole texts with about `budget` characters each, and the total."""
    sizes = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
    cum = np.cumsum(sizes)
    cuts = np.searchsorted(cum, np.arange(budget, int(cum[-1]), budget), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(texts)]]))
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True)), int(cum[-1])


def shingle(texts: Sequence[str], ngram: int = 5) -> Shingles:
    """Sorted unique 64-bit hashes of each text's word n-grams (`text.split()` words, hashed
    with word_hash()).

    A text with 1..ngram-1 words has one shingle, all its words; an empty text has none.
    """
    _check_positive(ngram=ngram)
    if len(texts) == 0:
        return Shingles(np.empty(0, dtype=np.uint64), np.zeros(1, dtype=np.int64))

    def work(data: bytes, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        words, word_counts = _word_hashes(data, lengths)
        grams, counts = _ngram_hashes(words, word_counts, ngram)
        return _sort_unique(grams, counts)

    chunks, total_chars = _chunks(texts, _CHUNK_CHARS)
    # The chunks' hashes are appended to one array grown in place (ndarray.resize reallocates,
    # which for large arrays remaps pages instead of copying), so the result is never held
    # twice, as concatenating the chunks would. Start at about one shingle per 6 characters.
    hashes = np.empty(total_chars // 6 + 1024, dtype=np.uint64)
    size = 0
    counts: list[np.ndarray] = []

    def append(chunk: tuple[np.ndarray, np.ndarray]) -> None:
        nonlocal size
        h, offsets = chunk
        if size + len(h) > len(hashes):
            hashes.resize(max(size + len(h), len(hashes) * 3 // 2), refcheck=False)
        hashes[size:size + len(h)] = h
        size += len(h)
        counts.append(np.diff(offsets))

    # the calling thread encodes the next chunks (holding the GIL) while the workers hash
    # earlier ones; at most 2 * _THREADS chunks are in flight, so memory stays bounded
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        for lo, hi in chunks:
            if len(pending) >= 2 * _THREADS:
                append(pending.popleft().result())
            pending.append(pool.submit(work, *_encode(texts[lo:hi])))
        while pending:
            append(pending.popleft().result())
    hashes.resize(size, refcheck=False)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(counts), out=offsets[1:])
    return Shingles(hashes, offsets)


def _multipliers(num_perm: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 0x6D696E68])  # "minh"
    return rng.integers(0, 2**64, size=num_perm, dtype=np.uint64, endpoint=False) | _U64(1)


def signatures(sh: Shingles, num_perm: int, seed: int = 0) -> np.ndarray:
    """(n_docs, num_perm) uint32 MinHash signatures.

    Permutation k maps a shingle hash x to (a_k * x mod 2**64) >> 32: multiply-shift hashing
    with a random odd a_k (from a numpy Generator seeded with `seed`); multiplying by an odd
    number is a bijection of the 64-bit values. The usual "+ b_k" is left out: the shingle
    hashes are already uniformly mixed, and the add was a third of the signature time; the
    estimate mean(sig_i == sig_j) stays unbiased with the binomial variance J(1-J)/num_perm.
    The shift is monotone, so the minimum is taken on the 64-bit products and shifted once per
    doc. A doc without shingles gets all-ones (near_duplicates leaves such docs out).
    """
    _check_positive(num_perm=num_perm)
    sig = np.empty((len(sh), num_perm), dtype=np.uint32)

    def emit(lo: int, hi: int, part: np.ndarray) -> None:
        sig[lo:hi] = part

    _minhash(sh, num_perm, seed, emit)
    return sig


def _minhash(sh: Shingles, num_perm: int, seed: int,
             emit: Callable[[int, int, np.ndarray], None]) -> None:
    """Compute the signatures of docs lo..hi-1, span by span, and hand each span's
    (hi - lo, num_perm) uint32 block to emit(lo, hi, block), from two worker threads."""
    a = _multipliers(num_perm, seed)[:, None]
    counts = sh.counts()
    n = len(counts)
    # blocks of whole docs with at most about 2 * _SIG_CHUNK shingles (a longer doc: a block of
    # its own), and spans of 64 blocks, one task each
    bounds = np.searchsorted(sh.offsets, np.arange(0, int(sh.offsets[-1]), _SIG_CHUNK),
                             side="right") - 1
    long_docs = np.flatnonzero(counts > _SIG_CHUNK)
    bounds = np.unique(np.concatenate([[0], bounds, long_docs, long_docs + 1, [n]]))
    spans = [bounds[i:i + 65] for i in range(0, max(len(bounds) - 1, 1), 64)]
    local = threading.local()
    top = np.iinfo(np.uint64).max

    def block(lo: int, hi: int, out: np.ndarray) -> None:
        """out[k] = signature of doc lo + k, as uint64 before the final shift."""
        nonempty = np.flatnonzero(counts[lo:hi] > 0)
        out[counts[lo:hi] == 0] = top
        if len(nonempty) == 0:
            return
        x = sh.hashes[sh.offsets[lo]:sh.offsets[hi]]
        if hi - lo == 1 and len(x) > 4 * _SIG_CHUNK:  # a long doc: a slice at a time
            m = np.full(num_perm, top, dtype=np.uint64)
            for at in range(0, len(x), _SIG_CHUNK):
                with np.errstate(over="ignore"):
                    vals = a * x[at:at + _SIG_CHUNK]
                np.minimum(m, vals.min(axis=1), out=m)
            out[0] = m
            return
        buf = getattr(local, "buf", None)
        if buf is None or buf.shape[1] < len(x):
            buf = local.buf = np.empty((num_perm, max(len(x), _SIG_CHUNK)), dtype=np.uint64)
        # (num_perm, shingles): each permutation's values contiguous, for reduceat
        vals = buf[:, :len(x)]
        with np.errstate(over="ignore"):
            np.multiply(a, x, out=vals)
        starts = (sh.offsets[lo:hi] - sh.offsets[lo])[nonempty]
        out[nonempty] = np.minimum.reduceat(vals, starts, axis=1).T

    def span(edges: np.ndarray) -> None:
        lo, hi = int(edges[0]), int(edges[-1])
        part = np.empty((hi - lo, num_perm), dtype=np.uint64)
        for s, e in zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True):
            block(s, e, part[s - lo:e - lo])
        part >>= _U64(32)
        emit(lo, hi, part.astype(np.uint32))

    if len(spans) > 1:  # the multiply releases the GIL (reduceat does not)
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            for _ in pool.map(span, spans):
                pass
    elif n:
        span(spans[0])


def _band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n_docs) uint64: a hash of each doc's `rows` signature values in each band,
    computed a block of rows at a time (columns of a big signature matrix are far apart)."""
    keys = np.empty((bands, len(sig)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for lo in range(0, len(sig), 8192):
            block = sig[lo:lo + 8192, :bands * rows].astype(np.uint64)
            block = block.reshape(len(block), bands, rows)
            acc = block[:, :, 0] + _U64(1)
            for r in range(1, rows):
                acc *= _NGRAM_MULT
                acc += block[:, :, r]
            acc += np.arange(bands, dtype=np.uint64) * _BAND_MULT  # one band's key space each
            keys[:, lo:lo + 8192] = _mix64(acc).T
    return keys


def _group_pairs(members: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """All pairs within consecutive groups of `members` (group g has sizes[g] members)."""
    if len(sizes) == 0:
        return np.empty((0, 2), dtype=np.int64)
    starts = np.cumsum(sizes) - sizes
    rank = np.arange(len(members)) - np.repeat(starts, sizes)
    n_after = np.repeat(sizes, sizes) - 1 - rank  # pairs each member starts with later members
    left_pos = np.repeat(np.arange(len(members)), n_after)
    step = np.arange(len(left_pos)) - np.repeat(np.cumsum(n_after) - n_after, n_after)
    return np.stack([members[left_pos], members[left_pos + 1 + step]], axis=1)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """np.unique by a plain sort (numpy's np.unique hashes first, which is slower here)."""
    values = np.sort(values)
    if len(values) < 2:
        return values
    keep = np.empty(len(values), dtype=bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


def _group_by_key(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(doc indices ordered by key, start of each run of equal keys in that order).

    The low bits of each key are replaced by the doc's index, so a plain sort of the values
    (several times faster than an argsort) orders and groups the docs at once; keys then agree
    on their remaining 64 - log2(n) bits, and a collision there only adds a candidate pair."""
    n = len(key)
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    bits = max(int(n - 1).bit_length(), 1)
    low = _U64((1 << bits) - 1)
    packed = key & ~low
    packed |= np.arange(n, dtype=np.uint64)
    packed.sort()
    high = packed >> _U64(bits)
    starts = np.flatnonzero(np.concatenate([[True], high[1:] != high[:-1]]))
    return (packed & low).astype(np.int64), starts


def _band_pairs(keys: np.ndarray, band: int, max_group: int) -> tuple[np.ndarray, int]:
    """Pair codes i * n + j (i < j) of the docs sharing band `band`'s key, and the number of
    same-band pairs left out of groups larger than max_group."""
    n = keys.shape[1]
    order, starts = _group_by_key(keys[band])
    sizes = np.diff(np.append(starts, n))
    small = (sizes > 1) & (sizes <= max_group)
    pairs = [_group_pairs(order[np.repeat(small, sizes)], sizes[small])]
    skipped = 0
    for g in np.flatnonzero(sizes > max_group).tolist():
        members = np.sort(order[starts[g]:starts[g] + sizes[g]])
        # the first member with every other, and neighbours in the order of all band keys
        # (docs agreeing on more bands are more alike); about 9 pairs per member
        by_keys = members[np.lexsort(keys[::-1, members])]
        extra = [np.stack([np.full(len(members) - 1, members[0]), members[1:]], axis=1)]
        extra += [np.stack([by_keys[:-d], by_keys[d:]], axis=1) for d in range(1, 9)]
        extra_pairs = np.concatenate(extra)
        skipped += len(members) * (len(members) - 1) // 2 - len(extra_pairs)
        pairs.append(extra_pairs)
    p = np.concatenate(pairs)
    p.sort(axis=1)
    return _sorted_unique(p[:, 0] * n + p[:, 1]), skipped


def _pairs_from_keys(keys: np.ndarray, max_group: int, stacklevel: int) -> np.ndarray:
    n = keys.shape[1]
    if n < 2:
        return np.empty((0, 2), dtype=np.int64)
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:  # sorting releases the GIL
        found = list(pool.map(lambda band: _band_pairs(keys, band, max_group),
                              range(len(keys))))
    skipped = sum(s for _, s in found)
    if skipped > 0:
        warnings.warn(f"candidate_pairs: band groups larger than max_group={max_group} were "
                      f"chained instead of expanded; {skipped} same-band pairs were not listed "
                      "as candidates", RuntimeWarning, stacklevel=stacklevel)
    codes = _sorted_unique(np.concatenate([c for c, _ in found]))
    return np.stack([codes // n, codes % n], axis=1).astype(np.int64)


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, *,
                    max_group: int = MAX_GROUP) -> np.ndarray:
    """(k, 2) int64 pairs i < j, unique and sorted, of the docs whose signatures agree on all
    `rows` values of at least one of `bands` bands (band b: signature columns b*rows ...).

    Each band is hashed to a 64-bit key (a key collision only adds a candidate, which
    verification removes) and the docs are grouped by sorting the keys. A group of more than
    `max_group` docs would add size**2/2 pairs, so its members are instead paired with the
    group's first member and with their 8 nearest neighbours in the order of all their band
    keys, and a RuntimeWarning says how many same-band pairs were left out. (near_duplicates
    first folds docs with identical shingle sets together, the usual source of such groups.)
    """
    _check_positive(bands=bands, rows=rows, max_group=max_group)
    sig = np.asarray(sig)
    if sig.ndim != 2 or sig.shape[1] < bands * rows:
        raise ValueError(f"signatures have shape {sig.shape}; bands*rows = {bands * rows} "
                         "columns are needed")
    return _pairs_from_keys(_band_keys(sig, bands, rows), max_group, stacklevel=3)


def jaccard(sh: Shingles, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard similarity of each pair's shingle sets (0.0 when both are empty).

    Blocks of pairs are laid out as rows (doc i's hashes then doc j's, padded with the maximum);
    sorting the rows puts shared hashes next to each other, so |i & j| is the number of equal
    neighbours among the first |i| + |j| entries.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    out = np.zeros(len(pairs), dtype=np.float64)
    if len(pairs) == 0:
        return out
    counts = sh.counts()
    if pairs.min() < 0 or pairs.max() >= len(counts):
        raise ValueError(f"pair indices must lie in [0, {len(counts)})")
    # bucket pairs by combined size so the padded rows stay narrow
    total = counts[pairs[:, 0]] + counts[pairs[:, 1]]
    order = np.argsort(total, kind="stable")
    maxval = np.iinfo(np.uint64).max
    for lo in range(0, len(pairs), _PAIR_BLOCK):
        idx = order[lo:lo + _PAIR_BLOCK]
        i, j = pairs[idx, 0], pairs[idx, 1]
        ci, cj = counts[i], counts[j]
        width = int((ci + cj).max())
        if width == 0:
            continue
        mat = np.full((len(idx), width), maxval, dtype=np.uint64)
        for doc, c, shift in ((i, ci, np.zeros_like(ci)), (j, cj, ci)):
            rows = np.repeat(np.arange(len(idx)), c)
            rank = np.arange(len(rows)) - np.repeat(np.cumsum(c) - c, c)
            mat[rows, rank + np.repeat(shift, c)] = sh.hashes[np.repeat(sh.offsets[doc], c) + rank]
        mat.sort(axis=1)
        valid = np.arange(1, width) < (ci + cj)[:, None]
        inter = ((mat[:, 1:] == mat[:, :-1]) & valid).sum(axis=1)
        union = ci + cj - inter
        out[idx] = np.divide(inter, union, out=np.zeros(len(idx)), where=union > 0)
    return out


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Connected components of the pair graph: each node's smallest connected index."""
    label = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return label
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        la, lb = label[a], label[b]
        low = np.minimum(la, lb)
        before = label.copy()
        np.minimum.at(label, a, low)
        np.minimum.at(label, b, low)
        np.minimum.at(label, la, low)  # hook the roots too, so long chains collapse fast
        np.minimum.at(label, lb, low)
        while True:  # pointer jumping: follow labels to their roots
            nxt = label[label]
            if np.array_equal(nxt, label):
                break
            label = nxt
        if np.array_equal(label, before):
            return label


CLUSTERS = ("star", "connected")


def near_duplicates(texts: Sequence[str], *, threshold: float = 0.8, ngram: int = 5,
                    bands: int = 20, rows: int = 5, seed: int = 0,
                    cluster: str = "star") -> NearDuplicates:
    """Near-duplicate texts: pairs with exact word-n-gram Jaccard >= threshold, and the doc
    each doc is dropped for (`representative`; itself when it is kept).

    cluster="star": the docs in index order; a doc is dropped when it is in a pair with an
    already kept doc, and its representative is the first (smallest index) such kept doc, so
    `similarity` of a dropped doc is always >= threshold. A doc similar only to dropped docs
    is kept: in a chain a~b, b~c with J(a, c) < threshold, b is dropped and c kept.
    cluster="connected": the pairs joined transitively; each connected component keeps its
    first doc (the smallest index) and drops the rest, however far down the chain (in the
    example, b and c), so a dropped doc's similarity may be below the threshold.

    Candidates come from MinHash LSH with `bands` x `rows` permutations, pinned by the caller
    rather than derived from the threshold: a pair at Jaccard s shares a band with probability
    1 - (1 - s**rows)**bands, which for the default 20 x 5 is 0.9996 at s = 0.8 (and 0.996 at
    0.75; 0.046 at 0.4, so few dissimilar pairs need verifying). Every candidate is verified
    with the exact Jaccard of the shingle sets, so no reported pair is a false positive.
    Docs with identical shingle sets are folded together before LSH (they are duplicates of each
    other without a signature), and empty docs are never duplicates of anything.
    """
    _check_clustering(threshold, cluster)
    _check_positive(ngram=ngram, bands=bands, rows=rows)
    sh = shingle(texts, ngram)
    return near_duplicates_by_keys(sh.counts(), _signature_band_keys(sh, bands, rows, seed),
                                   lambda pairs: jaccard(sh, pairs), threshold=threshold,
                                   cluster=cluster)


def minhash_keys(texts: Sequence[str], *, ngram: int = 5, bands: int = 20, rows: int = 5,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(shingles of each text, (bands, n_texts) uint64 LSH band keys): what
    `near_duplicates_by_keys` needs of each text. Each text's values are its own, so they can be
    computed a batch of texts at a time, in other processes (curation's workers do)."""
    _check_positive(ngram=ngram, bands=bands, rows=rows)
    sh = shingle(texts, ngram)
    return sh.counts(), _signature_band_keys(sh, bands, rows, seed)


def near_duplicates_by_keys(counts: np.ndarray, band_keys: np.ndarray,
                            similarity: Callable[[np.ndarray], np.ndarray], *,
                            threshold: float = 0.8, cluster: str = "star") -> NearDuplicates:
    """`near_duplicates` from each doc's shingle count and band keys (`minhash_keys`), with
    `similarity(pairs)` the exact Jaccard of (k, 2) doc index pairs: the caller holds the
    shingles (or the texts), and is asked only about the pairs LSH proposes."""
    _check_clustering(threshold, cluster)
    n = len(counts)
    # Docs with identical shingle sets have identical signatures: find those by a key of all
    # their band keys, confirm the sets are equal, and send one doc per set through LSH.
    nonempty = np.flatnonzero(counts > 0)
    local_order, starts = _group_by_key(_row_keys(band_keys[:, nonempty]))
    order = nonempty[local_order]  # equal keys: in index order
    same = np.ones(len(order), dtype=bool)
    same[starts] = False
    first = order[np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))]
    ident_pairs = np.stack([first[same], order[same]], axis=1)
    if len(ident_pairs):
        ident_pairs = ident_pairs[similarity(ident_pairs) == 1.0]
    folded = np.zeros(n, dtype=bool)
    folded[ident_pairs[:, 1]] = True
    unique_docs = nonempty[~folded[nonempty]]
    if len(unique_docs) < n:
        band_keys = band_keys[:, unique_docs]
    local = _pairs_from_keys(band_keys, MAX_GROUP, stacklevel=3)
    del band_keys
    cand = unique_docs[local]
    cand.sort(axis=1)
    sim = similarity(cand) if len(cand) else np.zeros(0)
    keep = sim >= threshold
    verified = cand[keep]
    verified_sim = sim[keep]

    all_pairs, all_sim = _expand(verified, verified_sim, ident_pairs, n)
    if cluster == "connected":
        representative = _components(n, all_pairs)
    else:
        representative = _star(n, verified, ident_pairs)
    similarity_out = np.ones(n, dtype=np.float64)
    moved = np.flatnonzero(representative != np.arange(n))
    if len(moved):
        similarity_out[moved] = similarity(np.stack([representative[moved], moved], axis=1))
    return NearDuplicates(representative, similarity_out, all_pairs, all_sim, len(cand))


def _check_clustering(threshold: float, cluster: str) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) \
            or not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}")
    if cluster not in CLUSTERS:
        raise ValueError(f"cluster must be one of {', '.join(CLUSTERS)}, got {cluster!r}")


def _star(n: int, pairs: np.ndarray, ident_pairs: np.ndarray) -> np.ndarray:
    """Each doc's representative under cluster="star", from the verified pairs of distinct
    shingle sets (i < j, one doc per set) and the pairs (first doc of a set, another doc of it).

    Only the first doc of each set of identical docs is decided in order: the others are never
    kept (each is identical to an earlier doc), and a kept doc's neighbours are exactly its set
    leader's, so each follows its leader: the leader itself when the leader is kept, else the
    leader's representative (the first kept doc similar to the leader is the first similar to
    it). The loop runs in Python over the pairs only; docs without an earlier neighbour are kept
    without a step."""
    representative = np.arange(n, dtype=np.int64)
    if len(pairs):
        order = np.lexsort((pairs[:, 0], pairs[:, 1]))  # by later doc, then earlier doc
        # When doc j's pairs come up, every earlier doc is decided: its own pairs (as the later
        # doc) sort before j's. The first kept earlier doc wins: the smallest index.
        for i, j in pairs[order].tolist():
            if representative[j] == j and representative[i] == i:
                representative[j] = i
    if len(ident_pairs):
        leader, follower = ident_pairs[:, 0], ident_pairs[:, 1]
        representative[follower] = representative[leader]
    return representative


def _signature_band_keys(sh: Shingles, bands: int, rows: int, seed: int) -> np.ndarray:
    """_band_keys(signatures(sh, bands * rows, seed), bands, rows), a span of docs at a time:
    the whole signature matrix is never held."""
    keys = np.empty((bands, len(sh)), dtype=np.uint64)

    def emit(lo: int, hi: int, part: np.ndarray) -> None:
        keys[:, lo:hi] = _band_keys(part, bands, rows)

    _minhash(sh, bands * rows, seed, emit)
    return keys


def _expand(pairs: np.ndarray, sim: np.ndarray, ident_pairs: np.ndarray,
            n: int) -> tuple[np.ndarray, np.ndarray]:
    """The verified pairs of distinct shingle sets, repeated for every doc with the same set
    as either side, plus the pairs within each set of identical docs (Jaccard 1), sorted.

    A set shared by more than MAX_GROUP docs would add size**2/2 pairs: it is listed as its
    first doc paired with each of the others (a RuntimeWarning says so), and only its first doc
    stands for it in the other pairs. Clusters are the same either way."""
    leader = np.arange(n, dtype=np.int64)
    leader[ident_pairs[:, 1]] = ident_pairs[:, 0]
    size = np.bincount(leader, minlength=n)
    big = size > MAX_GROUP
    members = np.argsort(leader, kind="stable")  # each leader first, then its followers
    start = np.cumsum(size) - size
    out = [pairs]
    out_sim = [sim]
    grouped = (size[pairs[:, 0]] > 1) | (size[pairs[:, 1]] > 1) if len(pairs) else None
    if grouped is not None and grouped.any():
        x, y = pairs[grouped, 0], pairs[grouped, 1]
        sx = np.where(big[x], 1, size[x])
        sy = np.where(big[y], 1, size[y])
        k = sx * sy
        run = np.repeat(np.arange(len(x)), k)
        step = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
        left = members[start[x][run] + step // sy[run]]
        right = members[start[y][run] + step % sy[run]]
        keep = (step > 0)  # step 0 is the leaders' own pair, listed already
        out.append(np.stack([left[keep], right[keep]], axis=1))
        out_sim.append(sim[grouped][run][keep])
    if len(ident_pairs):
        classes = np.flatnonzero(size > 1)
        small = classes[~big[classes]]
        in_small = np.zeros(n, dtype=bool)
        in_small[small] = True
        block = members[np.repeat(in_small, size)]
        within = [_group_pairs(block, size[small])]
        if big.any():
            warnings.warn(f"near_duplicates: {int(big.sum())} shingle sets are shared by more "
                          f"than {MAX_GROUP} docs each; their docs are listed in pairs with the "
                          "set's first doc only", RuntimeWarning, stacklevel=3)
            in_big = np.isin(ident_pairs[:, 0], np.flatnonzero(big))
            within.append(ident_pairs[in_big])
        within_pairs = np.concatenate(within)
        out.append(within_pairs)
        out_sim.append(np.ones(len(within_pairs)))
    all_pairs = np.concatenate(out).astype(np.int64).reshape(-1, 2)
    all_pairs.sort(axis=1)
    all_sim = np.concatenate(out_sim)
    o = np.lexsort((all_pairs[:, 1], all_pairs[:, 0]))
    return all_pairs[o], all_sim[o]


def _row_keys(keys: np.ndarray) -> np.ndarray:
    """A 64-bit key per doc from its band keys (equal signatures, equal keys)."""
    with np.errstate(over="ignore"):
        out = np.zeros(keys.shape[1], dtype=np.uint64)
        for band_key in keys:
            out *= _NGRAM_MULT
            out += band_key
    return _mix64(out)

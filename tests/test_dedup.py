"""Near-duplicate detection (pedigree.data.dedup) against brute-force Python set computations."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pedigree.data import dedup
from pedigree.data.dedup import (
    candidate_pairs,
    jaccard,
    near_duplicates,
    shingle,
    signatures,
    word_hash,
)

# ---------------------------------------------------------------------------------------------
# brute force references and a small generator


def shingle_set(text: str, ngram: int = 5) -> set[tuple[str, ...]]:
    words = text.split()
    if not words:
        return set()
    if len(words) < ngram:
        return {tuple(words)}
    return {tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}


def exact_jaccard(a: str, b: str, ngram: int = 5) -> float:
    sa, sb = shingle_set(a, ngram), shingle_set(b, ngram)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def words_of(rng: np.random.Generator, n: int, vocab: list[str]) -> list[str]:
    ranks = np.minimum(rng.zipf(1.3, size=n) - 1, len(vocab) - 1)
    return [vocab[i] for i in ranks]


def perturb(words: list[str], rate: float, rng: np.random.Generator,
            vocab: list[str]) -> list[str]:
    out: list[str] = []
    for w in words:
        u = rng.random()
        if u < rate / 3:
            out.append(vocab[int(rng.integers(len(vocab)))])  # substitution
        elif u < 2 * rate / 3:
            continue  # deletion
        elif u < rate:
            out += [w, vocab[int(rng.integers(len(vocab)))]]  # insertion
        else:
            out.append(w)
    return out


def generated_texts(n_originals: int = 80, seed: int = 0) -> list[str]:
    """Originals with perturbed copies at several word-edit rates, templated near misses and
    unrelated texts, shuffled."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    texts: list[list[str]] = []
    for _ in range(n_originals):
        original = words_of(rng, int(rng.integers(40, 100)), vocab)
        texts.append(original)
        for _ in range(int(rng.integers(1, 4))):
            rate = float(rng.choice([0.0, 0.01, 0.03, 0.05, 0.1, 0.2]))
            texts.append(perturb(original, rate, rng, vocab))
    for _ in range(8):  # a template with 3 slots: instances are near, not duplicates
        template = words_of(rng, 60, vocab)
        for _ in range(4):
            t = list(template)
            for pos in (10, 30, 50):
                t[pos] = vocab[int(rng.integers(len(vocab)))]
            texts.append(t)
    texts += [words_of(rng, int(rng.integers(1, 80)), vocab) for _ in range(60)]
    order = rng.permutation(len(texts))
    return [" ".join(texts[i]) for i in order]


def truth_pairs(texts: list[str], threshold: float, ngram: int = 5) -> set[tuple[int, int]]:
    sets = [shingle_set(t, ngram) for t in texts]
    found = set()
    for i, j in itertools.combinations(range(len(texts)), 2):
        union = len(sets[i] | sets[j])
        if union and len(sets[i] & sets[j]) / union >= threshold:
            found.add((i, j))
    return found


BASE = ("the quick brown fox jumps over the lazy dog while the farmer watches from the porch "
        "and drinks a cup of tea before walking down to the river where the boats are tied "
        "to the old wooden pier that his grandfather built many years ago in the spring and "
        "the children played in the meadow behind the barn until the sun went down")


def edit(text: str, positions: dict[int, str]) -> str:
    words = text.split()
    for pos, word in positions.items():
        words[pos] = word
    return " ".join(words)


# ---------------------------------------------------------------------------------------------
# shingles and hashes


def test_shingles_are_the_sorted_unique_word_ngrams():
    texts = [BASE, "", "one", "two words", "a a a a a a a a a", "x  y\tz\nw v u", BASE + " end"]
    sh = shingle(texts)
    assert sh.hashes.dtype == np.uint64 and sh.offsets.dtype == np.int64
    assert len(sh.offsets) == len(texts) + 1 and sh.offsets[0] == 0
    for i, text in enumerate(texts):
        seg = sh.hashes[sh.offsets[i]:sh.offsets[i + 1]]
        assert len(seg) == len(shingle_set(text))
        assert np.all(seg[1:] > seg[:-1])  # sorted, unique
    # equal n-grams hash equally across docs: BASE and BASE + " end" share all of BASE's
    a = set(sh.hashes[sh.offsets[0]:sh.offsets[1]].tolist())
    b = set(sh.hashes[sh.offsets[6]:sh.offsets[7]].tolist())
    assert a < b and len(b - a) == 1


def test_shingles_split_like_str_split():
    # str.split() white space, including the Unicode kinds, separates words the same way
    spaced = ["alpha\u3000beta\xa0gamma\u2003delta\x1cepsilon zeta", "naïve café\u00a0ünïcode"]
    plain = [" ".join(t.split()) for t in spaced]
    a, b = shingle(spaced, 2), shingle(plain, 2)
    assert np.array_equal(a.hashes, b.hashes) and np.array_equal(a.offsets, b.offsets)
    # control bytes that are not white space stay inside words
    c = shingle(["a\x01b c"], 1)
    assert np.array_equal(np.diff(c.offsets), [2])


def test_shingles_do_not_depend_on_chunking(monkeypatch):
    texts = generated_texts(30, seed=2) + ["", "x", BASE * 3]
    whole = shingle(texts)
    monkeypatch.setattr(dedup, "_CHUNK_CHARS", 100)  # many chunks, some of one long text
    pieces = shingle(texts)
    assert np.array_equal(whole.hashes, pieces.hashes)
    assert np.array_equal(whole.offsets, pieces.offsets)


def test_short_docs_have_one_shingle_of_all_their_words():
    sh = shingle(["a b c", "a b c", "a b", "b c", "a b c d e"], 5)
    counts = np.diff(sh.offsets)
    assert counts.tolist() == [1, 1, 1, 1, 1]
    h = sh.hashes
    assert h[0] == h[1]  # same words
    assert len({h[0], h[2], h[3], h[4]}) == 4  # a short shingle is not a prefix of a longer one


def test_word_hashes_are_content_stable():
    # hard-coded: the same values in every process, run and machine (no salted hash())
    assert word_hash("hello") == 5646033622846297696
    assert word_hash("") != word_hash("\x00")
    code = ("from pedigree.data.dedup import word_hash, shingle; "
            "print(word_hash('pedigree'), int(shingle(['a b c d e f'], 5).hashes[0]))")
    outputs = set()
    src = str(Path(dedup.__file__).resolve().parents[2])
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": src}
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)
        outputs.add(run.stdout.strip())
    assert len(outputs) == 1
    pedigree, first = map(int, outputs.pop().split())
    assert pedigree == word_hash("pedigree")
    assert first == int(shingle(["a b c d e f"], 5).hashes[0])


def test_vectorised_word_hashes_match_word_hash():
    text = "Zürich 東京 hello ... x\ty\u2028z" + " word" * 3
    words = text.split()
    data, lengths = dedup._encode([text, "", "a"])
    hashes, counts = dedup._word_hashes(data, lengths)
    assert hashes.tolist() == [word_hash(w) for w in [*words, "a"]]
    assert counts.tolist() == [len(words), 0, 1]


# ---------------------------------------------------------------------------------------------
# signatures, candidates, verification


def test_signatures_estimate_jaccard():
    rng = np.random.default_rng(1)
    vocab = [f"v{i}" for i in range(5000)]
    a = " ".join(words_of(rng, 400, vocab))
    words = a.split()
    b = " ".join(words[:200] + words_of(rng, 200, vocab))  # about a third shared
    sh = shingle([a, a, b])
    sig = signatures(sh, 256, seed=3)
    assert sig.shape == (3, 256) and sig.dtype == np.uint32
    assert np.array_equal(sig[0], sig[1])
    estimate = float(np.mean(sig[0] == sig[2]))
    assert abs(estimate - exact_jaccard(a, b)) < 0.1
    assert np.array_equal(sig, signatures(sh, 256, seed=3))
    assert not np.array_equal(sig, signatures(sh, 256, seed=4))


def test_signatures_are_the_minimum_of_each_permutation(monkeypatch):
    # small blocks, so that blocks of several docs, long docs and empty docs all occur
    monkeypatch.setattr(dedup, "_SIG_CHUNK", 16)
    rng = np.random.default_rng(4)
    vocab = [f"u{i}" for i in range(500)]
    lengths = [0, 0, 3, 30, 0, 200, 7, 12, 0, 90, 15, 16, 17, 5, 0]
    texts = [" ".join(words_of(rng, k, vocab)) for k in lengths]
    sh = shingle(texts)
    sig = signatures(sh, 8, seed=2)
    a = dedup._multipliers(8, 2)
    for i in range(len(texts)):
        x = sh.hashes[sh.offsets[i]:sh.offsets[i + 1]]
        if len(x) == 0:
            expected = np.full(8, np.iinfo(np.uint32).max, dtype=np.uint32)
        else:
            with np.errstate(over="ignore"):
                expected = ((a[:, None] * x[None, :]).min(axis=1) >> np.uint64(32))
        assert np.array_equal(sig[i], expected.astype(np.uint32)), i
    assert np.array_equal(signatures(shingle(["", ""]), 4),
                          np.full((2, 4), np.iinfo(np.uint32).max, dtype=np.uint32))


def test_candidate_pairs_are_the_docs_sharing_a_band():
    rng = np.random.default_rng(2)
    sig = rng.integers(0, 4, size=(60, 6), dtype=np.uint32)  # small values: many equal bands
    pairs = candidate_pairs(sig, bands=3, rows=2)
    expected = [(i, j) for i, j in itertools.combinations(range(60), 2)
                if any(np.array_equal(sig[i, 2 * b:2 * b + 2], sig[j, 2 * b:2 * b + 2])
                       for b in range(3))]
    assert pairs.dtype == np.int64 and pairs.shape == (len(expected), 2)
    assert [tuple(p) for p in pairs.tolist()] == expected  # unique, i < j, sorted


def test_candidate_pairs_bound_huge_groups_and_say_so():
    sig = np.zeros((300, 4), dtype=np.uint32)  # every doc in one group of every band
    with pytest.warns(RuntimeWarning, match="max_group"):
        pairs = candidate_pairs(sig, bands=2, rows=2, max_group=50)
    assert len(pairs) < 300 * 10
    # still one connected group: every doc is paired with the first
    assert set(pairs[pairs[:, 0] == 0, 1].tolist()) == set(range(1, 300))


def test_jaccard_is_exact():
    texts = generated_texts(20, seed=5)
    sh = shingle(texts)
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(texts), size=(300, 2))
    got = jaccard(sh, pairs)
    for (i, j), value in zip(pairs.tolist(), got.tolist(), strict=True):
        assert value == exact_jaccard(texts[i], texts[j])
    empty = shingle(["", "", "a b"])
    assert jaccard(empty, np.array([[0, 1], [0, 2], [2, 2]])).tolist() == [0.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------
# near_duplicates


def test_near_pair_found_far_pair_not():
    near = edit(BASE, {30: "lake"})  # 5 of its ~62 shingles changed
    far = ("a completely different sentence about quantum computers and their many qubits "
           "that need cooling to a few millikelvin in large dilution refrigerators")
    found = near_duplicates([BASE, far, near], threshold=0.8)
    assert exact_jaccard(BASE, near) >= 0.8
    assert found.pairs.tolist() == [[0, 2]]
    assert found.pair_jaccard.tolist() == [exact_jaccard(BASE, near)]
    assert found.representative.tolist() == [0, 1, 0]
    assert found.similarity.tolist() == [1.0, 1.0, exact_jaccard(BASE, near)]
    assert found.candidates >= 1


def test_identical_short_and_empty_docs():
    texts = [BASE, "", "hello world", BASE, "", "hello world", "hello there", BASE, "hello"]
    found = near_duplicates(texts)
    assert found.representative.tolist() == [0, 1, 2, 0, 4, 2, 6, 0, 8]
    assert found.pairs.tolist() == [[0, 3], [0, 7], [2, 5], [3, 7]]
    assert found.pair_jaccard.tolist() == [1.0] * 4
    assert found.similarity.tolist() == [1.0] * len(texts)
    none = near_duplicates(["", "", ""])
    assert none.representative.tolist() == [0, 1, 2] and len(none.pairs) == 0


def test_reported_pairs_are_verified_exactly():
    texts = generated_texts(60, seed=1)
    found = near_duplicates(texts, threshold=0.7)
    assert len(found.pairs) > 20
    assert np.all(found.pairs[:, 0] < found.pairs[:, 1])
    for (i, j), value in zip(found.pairs.tolist(), found.pair_jaccard.tolist(), strict=True):
        assert value == exact_jaccard(texts[i], texts[j])
        assert value >= 0.7


@pytest.mark.parametrize("threshold", [0.8, 0.6])
def test_recall_and_precision_against_all_pairs(threshold):
    texts = generated_texts(100, seed=7)
    truth = truth_pairs(texts, threshold)
    found = near_duplicates(texts, threshold=threshold)
    got = {tuple(p) for p in found.pairs.tolist()}
    assert len(truth) > 50
    assert got <= truth  # precision 1
    assert len(got & truth) / len(truth) >= 0.95


def test_clusters_are_components_with_the_first_doc_kept():
    a = " ".join(f"t{i}" for i in range(100))
    b = edit(a, {20: "x1", 70: "x2"})  # J(a, b) = 86/106
    c = edit(b, {40: "y1", 90: "y2"})  # J(b, c) = 86/106, J(a, c) = 76/116
    assert exact_jaccard(a, b) >= 0.8 and exact_jaccard(b, c) >= 0.8
    assert exact_jaccard(a, c) < 0.8
    other = " ".join(f"o{i}" for i in range(50))
    found = near_duplicates([other, c, a, b])
    assert found.pairs.tolist() == [[1, 3], [2, 3]]
    assert found.representative.tolist() == [0, 1, 1, 1]  # one cluster, its smallest index
    assert found.similarity[2] == exact_jaccard(c, a)  # with the representative, not a neighbour


def test_deterministic():
    texts = generated_texts(40, seed=3)
    one, two = near_duplicates(texts), near_duplicates(texts)
    for field in ("representative", "similarity", "pairs", "pair_jaccard"):
        assert np.array_equal(getattr(one, field), getattr(two, field))
    assert one.candidates == two.candidates


def test_huge_identical_groups_are_bounded(monkeypatch):
    monkeypatch.setattr(dedup, "MAX_GROUP", 5)
    texts = [BASE] * 12 + [edit(BASE, {3: "zebra"})]
    with pytest.warns(RuntimeWarning, match="shared by more than 5"):
        found = near_duplicates(texts)
    assert found.representative.tolist() == [0] * 13
    assert len(found.pairs) < 13 * 12 // 2


@pytest.mark.parametrize("kwargs, message", [
    ({"threshold": 0}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": -0.2}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"threshold": "0.8"}, "threshold"),
    ({"bands": 0}, "bands"),
    ({"rows": 0}, "rows"),
    ({"ngram": 0}, "ngram"),
    ({"rows": 2.5}, "rows"),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        near_duplicates(["a b c"], **kwargs)


def test_invalid_arguments_of_the_steps():
    with pytest.raises(ValueError, match="ngram"):
        shingle(["a"], ngram=0)
    sh = shingle(["a b c"])
    with pytest.raises(ValueError, match="num_perm"):
        signatures(sh, 0)
    with pytest.raises(ValueError, match="bands\\*rows"):
        candidate_pairs(np.zeros((3, 10), dtype=np.uint32), bands=4, rows=3)
    with pytest.raises(ValueError, match="pair indices"):
        jaccard(sh, np.array([[0, 1]]))


def test_threshold_one_finds_only_identical_sets():
    texts = [BASE, edit(BASE, {0: "a"}), BASE, "x y z", "x y z"]
    found = near_duplicates(texts, threshold=1.0)
    assert found.pairs.tolist() == [[0, 2], [3, 4]]


def test_no_texts():
    found = near_duplicates([])
    assert len(found.representative) == 0 and found.pairs.shape == (0, 2)
    assert found.candidates == 0

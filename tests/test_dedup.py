"""Near-duplicate detection (pedigree.data.dedup) against brute-force Python set computations."""

from __future__ import annotations

import itertools
import json
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
from pedigree.data.text import match_text

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


def chain() -> tuple[str, str, str]:
    """a ~ b and b ~ c at Jaccard >= 0.8, but a and c below it."""
    a = " ".join(f"t{i}" for i in range(100))
    b = edit(a, {20: "x1", 70: "x2"})  # J(a, b) = 86/106
    c = edit(b, {40: "y1", 90: "y2"})  # J(b, c) = 86/106, J(a, c) = 76/116
    assert exact_jaccard(a, b) >= 0.8 and exact_jaccard(b, c) >= 0.8
    assert exact_jaccard(a, c) < 0.8
    return a, b, c


def test_connected_clusters_are_components_with_the_first_doc_kept():
    a, b, c = chain()
    other = " ".join(f"o{i}" for i in range(50))
    found = near_duplicates([other, c, a, b], cluster="connected")
    assert found.pairs.tolist() == [[1, 3], [2, 3]]
    assert found.representative.tolist() == [0, 1, 1, 1]  # one cluster, its smallest index
    assert found.similarity[2] == exact_jaccard(c, a)  # with the representative, not a neighbour
    assert found.similarity[2] < 0.8  # the chain: a is dropped for a doc below the threshold


def test_star_drops_a_doc_only_for_a_kept_doc_above_the_threshold():
    a, b, c = chain()
    connected = near_duplicates([a, b, c], cluster="connected")
    assert connected.representative.tolist() == [0, 0, 0]  # b and c dropped
    star = near_duplicates([a, b, c])  # the default
    assert star.representative.tolist() == [0, 0, 2]  # only b dropped: c is not near a
    assert star.similarity.tolist() == [1.0, exact_jaccard(a, b), 1.0]
    assert np.array_equal(star.pairs, connected.pairs)  # the same pairs, fewer rows dropped
    # the middle of the chain first: it is kept and stands for both ends
    assert near_duplicates([b, a, c]).representative.tolist() == [0, 0, 0]
    # a doc near two kept docs goes with the first of them in order
    other = " ".join(f"o{i}" for i in range(100))
    near_both = " ".join(a.split()[:50] + other.split()[:50])
    texts = [a, other, edit(a, {60: "q"}), near_both]
    found = near_duplicates(texts, threshold=0.3)
    assert exact_jaccard(near_both, a) >= 0.3 and exact_jaccard(near_both, other) >= 0.3
    assert found.representative.tolist() == [0, 1, 0, 0]


def star_reference(n: int, pairs: np.ndarray) -> list[int]:
    """Brute force: docs in order, each dropped for the first kept doc it is paired with."""
    neighbours: dict[int, set[int]] = {}
    for i, j in pairs.tolist():
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    rep = list(range(n))
    for j in range(n):
        kept = [i for i in sorted(neighbours.get(j, ())) if i < j and rep[i] == i]
        if kept:
            rep[j] = kept[0]
    return rep


@pytest.mark.parametrize("threshold", [0.8, 0.5])
def test_star_against_brute_force(threshold):
    texts = generated_texts(100, seed=11)
    star = near_duplicates(texts, threshold=threshold)
    connected = near_duplicates(texts, threshold=threshold, cluster="connected")
    assert np.array_equal(star.pairs, connected.pairs)
    rep = star.representative
    assert rep.tolist() == star_reference(len(texts), star.pairs)
    dropped = np.flatnonzero(rep != np.arange(len(texts)))
    assert len(dropped) > 20
    assert np.all(rep[rep] == rep) and np.all(rep[dropped] < dropped)  # kept, earlier docs
    assert np.all(star.similarity[dropped] >= threshold)  # never a chain
    for j in dropped.tolist():
        assert star.similarity[j] == exact_jaccard(texts[rep[j]], texts[j])
    kept = set(np.flatnonzero(rep == np.arange(len(texts))).tolist())
    assert not any(i in kept and j in kept for i, j in star.pairs.tolist())  # none left near
    # connected drops at least as many, in fewer clusters
    assert (connected.representative != np.arange(len(texts))).sum() >= len(dropped)


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


def test_star_with_huge_identical_groups_follows_each_group_leader(monkeypatch):
    monkeypatch.setattr(dedup, "MAX_GROUP", 5)
    a, b, c = chain()
    texts = [a] + [b] * 12 + [c, c]  # the b docs are paired with their set's first doc only
    with pytest.warns(RuntimeWarning, match="shared by more than 5"):
        star = near_duplicates(texts)
    assert star.representative.tolist() == [0] * 13 + [13, 13]
    assert star.similarity.tolist() == [1.0] + [exact_jaccard(a, b)] * 12 + [1.0, 1.0]
    with pytest.warns(RuntimeWarning, match="shared by more than 5"):
        connected = near_duplicates(texts, cluster="connected")
    assert connected.representative.tolist() == [0] * 15
    with pytest.warns(RuntimeWarning, match="shared by more than 5"):  # the group first: kept
        assert near_duplicates([b] * 12 + [a, c]).representative.tolist() == [0] * 14


@pytest.mark.parametrize("kwargs, message", [
    ({"cluster": "chain"}, "cluster"),
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


# ---------------------------------------------------------------------------------------------
# through curation: what a user sees in rejects.jsonl


def curated(files: list[Path], cluster: str = "star", threshold: float = 0.8) -> tuple[
        list[dict], list[dict], dict]:
    """(kept rows of both kinds, rejects without their raw text, report) of one source."""
    from pedigree.config import CurateConfig, NearDedupConfig
    from pedigree.data.curate import curate
    from pedigree.data.sources import Source

    cfg = CurateConfig(tokenizer=None, near_dedup=NearDedupConfig(threshold=threshold,
                                                                  cluster=cluster))
    result = curate([Source("s", tuple(files))], cfg)
    kept = [json.loads(line) for line in result.sft + result.preference]
    rejects = [{k: v for k, v in r.items() if k != "raw"} for r in result.rejects]
    return kept, rejects, result.report()


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_curation_star_and_connected_on_a_chain(tmp_path):
    a, b, c = chain()
    path = write_rows(tmp_path / "chain.jsonl",
                      [{"instruction": "Summarise.", "output": t} for t in (a, b, c)])
    texts = {line: match_text("Summarise.\n" + t) for line, t in zip((1, 2, 3), (a, b, c),
                                                                     strict=True)}
    assert exact_jaccard(texts[1], texts[3]) < 0.8 <= exact_jaccard(texts[2], texts[3])

    kept, rejects, _ = curated([path], "star")
    assert [r["meta"]["line"] for r in kept] == [1, 3]  # only b dropped
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "near_duplicate")]
    assert rejects[0]["duplicate_of"] == kept[0]["id"]
    assert rejects[0]["jaccard"] == round(exact_jaccard(texts[1], texts[2]), 4) >= 0.8
    assert rejects[0]["detail"].startswith(f"Jaccard {rejects[0]['jaccard']} >= ")
    assert len(kept[0]["meta"]["cluster"]) == 1 and "cluster" not in kept[1]["meta"]

    kept, rejects, _ = curated([path], "connected")
    assert [r["meta"]["line"] for r in kept] == [1]  # b and c dropped
    assert [(r["line"], r["reason"]) for r in rejects] == [(2, "near_duplicate"),
                                                           (3, "near_duplicate")]
    assert {r["duplicate_of"] for r in rejects} == {kept[0]["id"]}
    low = rejects[1]
    assert low["jaccard"] == round(exact_jaccard(texts[1], texts[3]), 4) < 0.8
    assert "chain" in low["detail"] and f"{low['jaccard']} < threshold" in low["detail"]
    assert "chain" in rejects[0]["detail"] and ">= threshold" in rejects[0]["detail"]
    assert len(kept[0]["meta"]["cluster"]) == 2


def test_star_rejects_never_name_a_kept_row_below_the_threshold(tmp_path):
    texts = generated_texts(60, seed=4)
    path = write_rows(tmp_path / "gen.jsonl", [{"prompt": "Go.", "completion": t} for t in texts])
    for threshold in (0.8, 0.5):
        kept, rejects, _ = curated([path], "star", threshold)
        near = [r for r in rejects if r["reason"] == "near_duplicate"]
        assert len(near) > 10
        assert all(r["jaccard"] >= threshold for r in near)
        assert {r["duplicate_of"] for r in rejects} <= {r["id"] for r in kept}
        _, chained, _ = curated([path], "connected", threshold)
        assert len(chained) >= len(rejects)


def test_match_text_is_the_prompt_then_the_answer(tmp_path):
    """Words moved across the prompt/answer boundary leave the row's match text the same
    (prompt then answer, in conversation order): a near duplicate at Jaccard 1. In alphabetical
    order of the fields (completion, prompt; chosen, prompt, rejected) the two rows were 0.65
    and 0.58 similar, below the threshold."""
    p = ["please", "summarise", "the", "following", "short", "story", "about"]
    ans = ["a", "fox", "who", "jumps", "over", "a", "lazy", "dog", "near", "the", "river"]
    other = [f"r{i}" for i in range(12)]
    sft = write_rows(tmp_path / "sft.jsonl", [
        {"prompt": " ".join(p), "completion": " ".join(ans)},
        {"prompt": " ".join(p[:-3]), "completion": " ".join(p[-3:] + ans)}])
    _, rejects, _ = curated([sft])
    assert [(r["line"], r["reason"], r["jaccard"]) for r in rejects] == [
        (2, "near_duplicate", 1.0)]
    pref = write_rows(tmp_path / "pref.jsonl", [
        {"prompt": " ".join(p), "chosen": " ".join(ans), "rejected": " ".join(other)},
        {"prompt": " ".join(p[:-3]), "chosen": " ".join(p[-3:] + ans),
         "rejected": " ".join(other)}])
    _, rejects, _ = curated([pref])
    assert [(r["line"], r["reason"], r["jaccard"]) for r in rejects] == [
        (2, "near_duplicate", 1.0)]


def reordered(row: dict, order: str) -> dict:
    keys = sorted(row, reverse=order == "reverse") if order != "as_is" else list(row)
    return {k: row[k] for k in keys}


@pytest.mark.parametrize("cluster", ["star", "connected"])
def test_curation_does_not_depend_on_the_order_of_a_rows_keys(tmp_path, cluster):
    a, b, c = chain()
    texts = generated_texts(30, seed=9)
    rows = [{"instruction": "Summarise.", "input": "", "output": t} for t in (a, b, c)]
    rows += [{"instruction": t[:40], "input": t[40:80], "output": t[80:]} for t in texts]
    rows += [{"prompt": t[:60], "completion": t[60:]} for t in texts[::3]]
    rows += [{"prompt": t[:50], "chosen": t[50:], "rejected": "no " + t[50:]}
             for t in texts[::2]]
    results = []
    for order in ("as_is", "sorted", "reverse"):  # alpaca order; completion before prompt; ...
        folder = tmp_path / order
        folder.mkdir()
        path = write_rows(folder / "rows.jsonl", [reordered(r, order) for r in rows])
        if order == "sorted":
            assert next(iter(json.loads(path.read_text().splitlines()[-1]))) == "chosen"
        kept, rejects, report = curated([path], cluster, threshold=0.6)
        for r in kept:
            r["meta"]["file"] = "rows.jsonl"
        for r in rejects:
            r["file"] = "rows.jsonl"
        report.pop("sources")
        results.append((kept, rejects, report))
    assert results[0][1] and any(r["reason"] == "near_duplicate" for r in results[0][1])
    assert results[0] == results[1] == results[2]

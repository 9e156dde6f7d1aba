"""Curation accounts for every row and catches what it should; the split is deterministic,
group-aware and stable; the command line runs the same code; the sample is reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from pedigree.config import CurateConfig, DataConfig, NearDedupConfig, SourceConfig, SplitConfig
from pedigree.data import sample
from pedigree.data.curate import CurationResult, curate, eval_files, write_curation
from pedigree.data.decontaminate import EvalIndex, EvalItem, eval_items
from pedigree.data.formats import row_id
from pedigree.data.lengths import TokenCounter
from pedigree.data.sources import Source, resolve_sources
from pedigree.data.split import (
    apply_weights,
    read_assignments,
    split_curated,
    split_rows,
    write_assignments,
)
from pedigree.data.text import match_text, repetition
from pedigree.errors import MissingInputError, PedigreeError

REPO = Path(__file__).resolve().parents[1]
NO_LENGTHS = CurateConfig(tokenizer=None)


def rows(result: CurationResult, kind: str = "sft") -> list[dict]:
    return [json.loads(line) for line in result.rows(kind)]


def write_jsonl(path: Path, items: list) -> Path:
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def alpaca(i: int, words: int = 30) -> dict:
    """A distinct alpaca row: long enough for word 5-grams to mean something."""
    text = " ".join(f"w{(i * 7919 + j * 104729) % 100003}" for j in range(words))
    return {"instruction": f"Summarise item {i}.", "input": "", "output": text}


# ----------------------------------------------------------------------------- the sample
def test_committed_sample_is_what_the_generator_writes(tmp_path):
    written = sample.generate(tmp_path)
    for path in written.values():
        rel = path.relative_to(tmp_path)
        assert path.read_bytes() == (REPO / rel).read_bytes(), f"{rel} differs: regenerate it"


def test_sample_fits_the_size_budget():
    total = sum(p.stat().st_size for d in ("data/raw", "data/eval", "data/corpus")
                for p in (REPO / d).glob("*"))
    assert total <= 2_000_000


@pytest.fixture(scope="module")
def sample_result():
    sources = resolve_sources(DataConfig(raw_dir=str(REPO / "data/raw")))
    index = EvalIndex(eval_items(eval_files(REPO / "data/eval")))
    return curate(sources, NO_LENGTHS, index)


def test_every_row_is_accounted_for(sample_result):
    report = sample_result.report()
    lines = sum(1 for p in (REPO / "data/raw").glob("*.jsonl")
                for line in p.read_bytes().split(b"\n") if line.strip())
    assert report["input_rows"] == lines
    assert report["input_rows"] == report["kept_rows"] + sum(report["dropped"].values())
    for name, src in report["sources"].items():
        assert src["input_rows"] == src["kept_rows"] + sum(src["dropped"].values()), name
    assert sum(s["input_rows"] for s in report["sources"].values()) == report["input_rows"]


def test_auto_detection_says_which_format_it_chose(sample_result):
    sources = sample_result.report()["sources"]
    assert set(sources["sft_alpaca.jsonl"]["detected_formats"]) == {"alpaca"}
    assert set(sources["sft_chat.jsonl"]["detected_formats"]) == {"messages"}
    assert set(sources["preferences.jsonl"]["detected_formats"]) == {"preference"}
    assert set(sources["feedback.jsonl"]["detected_formats"]) == {"unpaired_preference"}
    assert set(sources["tasks.jsonl"]["detected_formats"]) == {"task"}


def test_planted_problems_are_caught(sample_result):
    dropped = sample_result.report()["dropped"]
    # What the generator plants: 12 exact duplicates, 8 near duplicates (punctuation differs),
    # 11 eval leaks (one of them a GRPO task), 11 malformed SFT lines, 2 malformed preference
    # pairs, 2 bad feedback rows (a label that is no boolean, a desirable placeholder answer)
    # and a task whose numeric check has no number.
    assert dropped["exact_duplicate"] == 12
    assert dropped["near_duplicate"] == 8
    assert dropped["eval_contamination"] == 11
    assert dropped["invalid_json"] == 1
    assert dropped["placeholder_output"] == 2
    assert dropped["chosen_equals_rejected"] == 1
    assert dropped["unknown_role"] == 1
    assert dropped["no_final_assistant"] == 1
    assert dropped["bad_task"] == 1
    assert sum(dropped.values()) == 12 + 8 + 11 + len(sample.MALFORMED_ALPACA) + len(
        sample.MALFORMED_CHAT) + 2 + len(sample.MALFORMED_FEEDBACK) + len(sample.MALFORMED_TASKS)


def test_rejects_name_file_line_reason_and_keep_the_row(sample_result):
    for reject in sample_result.rejects:
        assert reject["file"].endswith(".jsonl") and reject["line"] >= 1
        assert reject["reason"] and reject["detail"]
        source = Path(reject["file"]).read_text().splitlines()[reject["line"] - 1]
        assert reject["raw"] == source
    kept = {r["id"]: r for r in rows(sample_result)}
    for reject in sample_result.rejects:
        if reject["reason"] in ("exact_duplicate", "near_duplicate"):
            assert reject["duplicate_of"] in kept
        if reject["reason"] == "near_duplicate":
            assert reject["jaccard"] >= 0.8
        if reject["reason"] == "eval_contamination":
            assert reject["eval_item"].startswith(str(REPO / "data/eval/task.jsonl"))
    # Each kept row lists the rows it stands for, so the split keeps them on its side.
    members = Counter(id_ for r in kept.values() for id_ in r["meta"].get("cluster", []))
    assert sum(members.values()) == 12 + 8


def test_kept_rows_are_canonical_and_clean(sample_result):
    eval_prompts = {match_text(json.loads(line)["prompt"])
                    for line in (REPO / "data/eval/task.jsonl").read_text().splitlines()}
    sft, prefs = rows(sample_result), rows(sample_result, "preference")
    unpaired, tasks = rows(sample_result, "unpaired"), rows(sample_result, "task")
    ids = [r["id"] for r in sft + prefs + unpaired + tasks]
    assert len(ids) == len(set(ids))
    for row in sft:
        assert set(row) == {"id", "prompt", "completion", "source", "meta"}
        assert row["completion"][-1]["role"] == "assistant"
        assert row["id"] == row_id({"prompt": row["prompt"], "completion": row["completion"]})
        assert row["source"] in ("sft_alpaca.jsonl", "sft_chat.jsonl")
        user = " ".join(m["content"] for m in row["prompt"] if m["role"] != "system")
        assert match_text(user) not in eval_prompts
    for row in prefs:
        assert set(row) == {"id", "prompt", "chosen", "rejected", "source", "meta"}
        assert row["chosen"] != row["rejected"]
    # Every feedback and task row but the planted ones is kept: none is an eval or SFT prompt.
    assert len(unpaired) == 60 and len(tasks) == 60
    assert Counter(r["label"] for r in unpaired) == {True: 30, False: 30}
    for row in unpaired:
        assert set(row) == {"id", "prompt", "completion", "label", "source", "meta"}
        content = {k: row[k] for k in ("prompt", "completion", "label")}
        assert row["id"] == row_id(content) and row["source"] == "feedback.jsonl"
    assert Counter(r["match"] for r in tasks) == {"numeric": 40, "json_valid": 20}
    for row in tasks:
        checks = {"reference"} if row["match"] == "numeric" else {"schema"}
        assert set(row) == {"id", "prompt", "match", "source", "meta", *checks}
        assert row["meta"]["task"] in ("add", "json") and row["source"] == "tasks.jsonl"
    for row in unpaired + tasks:
        assert match_text(row["prompt"][-1]["content"]) not in eval_prompts


def test_invalid_utf8_and_json_arrays_are_accounted_for(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"instruction": "Say hi", "output": "hi"}\n\n'
                      b'{"instruction": "caf\xe9", "output": "x"}\n')
    array = tmp_path / "b.json"
    array.write_text(json.dumps([{"instruction": "Say yo", "output": "yo"}, {"instruction": "z"}]))
    result = curate([Source("a", (jsonl,)), Source("b", (array,))], NO_LENGTHS)
    reasons = {(Path(r["file"]).name, r["line"]): r["reason"] for r in result.rejects}
    assert reasons == {("a.jsonl", 3): "invalid_utf8", ("b.json", 2): "missing_field"}
    assert len(result.sft) == 2
    assert jsonl.read_bytes().endswith(b'"x"}\n')  # input files are never modified


# ----------------------------------------------------------------------------- filters
def test_placeholder_and_repetitive_answers_are_dropped(tmp_path):
    loop = " ".join(["the answer is yes"] * 10)
    varied = " ".join(f"word{i}" for i in range(40))
    path = write_jsonl(tmp_path / "f.jsonl", [
        {"instruction": "Describe it.", "output": "<No Output>"},
        {"instruction": "Describe it again.", "output": " N/A "},
        {"instruction": "Loop.", "output": loop},
        {"instruction": "Varied.", "output": varied},
        {"instruction": "Short and repetitive is fine.", "output": "no no no no"},
    ])
    result = curate([Source("f", (path,))], NO_LENGTHS)
    assert [r["reason"] for r in result.rejects] == [
        "placeholder_output", "placeholder_output", "repetitive"]
    assert len(result.sft) == 2
    assert repetition(loop) > 0.5 > repetition(varied) == 0.0


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A small word-level tokenizer: one token per word, so lengths are easy to reason about."""
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a b c d e f"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    out = tmp_path_factory.mktemp("tok")
    tok.save(str(out / "tokenizer.json"))
    return out


def test_length_bounds_count_base_tokenizer_tokens(tmp_path, tokenizer_dir):
    path = write_jsonl(tmp_path / "l.jsonl", [
        {"instruction": "a", "output": "b"},  # 2 tokens
        {"instruction": "a b c", "output": "d e f a b"},  # 8 tokens
        {"instruction": "a", "output": "b c d e f a b c d e"},  # 11 tokens
    ])
    cfg = CurateConfig(tokenizer=str(tokenizer_dir), min_tokens=3, max_tokens=10)
    result = curate([Source("l", (path,))], cfg, counter=TokenCounter(tokenizer_dir))
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(1, "too_short"),
                                                                   (3, "too_long")]
    assert "11 tokens > curate.max_tokens=10" in result.rejects[1]["detail"]
    with pytest.raises(MissingInputError, match="tokenizer.json"):
        TokenCounter(tmp_path)


def test_byte_bounds_skip_tokenizing_only_rows_provably_within_bounds(tokenizer_dir):
    counter = TokenCounter(tokenizer_dir)
    # not a byte-level vocabulary: an entry covers at most its own UTF-8 bytes
    assert counter.byte_bounds and counter.max_token_bytes == len("[UNK]")
    texts = [" ".join("abcdefxyz"[(i * j) % 9] * (1 + j % 3) for j in range(i)) for i in range(60)]
    bounded = counter.lengths(texts, min_tokens=4, max_tokens=120)
    exact = counter.count(texts)
    assert -1 in bounded and any(n >= 0 for n in bounded)
    for b, n in zip(bounded, exact, strict=True):
        assert b == n or (b == -1 and 4 <= n <= 120)


def test_byte_level_vocabularies_bound_a_token_by_its_bytes(tmp_path):
    """GPT-2-style byte-level BPE spells a byte as one character ("Ġ" is a space), so its
    longest entry bounds a token's bytes by its length, not four times it: most rows of real
    data are then proved within bounds without tokenizing, and the counts that are made agree."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the cat sat on the mat " * 3, "é è ü 😀 ====== ######## \n\n  tabs\t"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(tmp_path / "tokenizer.json"))
    counter = TokenCounter(tmp_path)
    longest = max(tok.get_vocab(), key=len)
    assert counter.max_token_bytes == len(longest) > 1
    texts = ["".join("ab #=\né😀"[(i * j) % 8] for j in range(i * 3)) for i in range(80)]
    bounded = counter.lengths(texts, min_tokens=3, max_tokens=150)
    exact = counter.count(texts)
    # skipped rows shorter than one entry at 4 bytes a character (that bound would need
    # min_tokens times it)
    skipped = [len(t.encode()) for t, b in zip(texts, bounded, strict=True) if b == -1]
    assert len(skipped) > 20 and min(skipped) < 4 * counter.max_token_bytes
    for b, n in zip(bounded, exact, strict=True):
        assert b == n or (b == -1 and 3 <= n <= 150)


def test_min_tokens_above_max_is_a_config_error():
    with pytest.raises(ValueError, match="min_tokens"):
        CurateConfig(min_tokens=10, max_tokens=5)


# ----------------------------------------------------------------------------- dedup
def test_near_duplicates_are_clustered_and_name_the_kept_row(tmp_path):
    base = alpaca(1, words=40)
    words = base["output"].split()
    # The match text is "summarise item 1 <output>": the output's first word is in 4 of its 39
    # shingles, 35 shared of 43 in all.
    edited = dict(base, output=" ".join(["changed", *words[1:]]))
    first = write_jsonl(tmp_path / "a.jsonl", [base, alpaca(2)])
    second = write_jsonl(tmp_path / "b.jsonl", [alpaca(3), edited, dict(base)])
    result = curate([Source("a", (first,)), Source("b", (second,))], NO_LENGTHS)
    by_line = {(Path(r["file"]).name, r["line"]): r for r in result.rejects}
    assert by_line[("b.jsonl", 2)]["reason"] == "near_duplicate"
    assert by_line[("b.jsonl", 3)]["reason"] == "exact_duplicate"
    kept = rows(result)
    assert len(kept) == 3 and kept[0]["meta"]["line"] == 1  # the first occurrence is kept
    assert {r["duplicate_of"] for r in by_line.values()} == {kept[0]["id"]}
    assert by_line[("b.jsonl", 2)]["jaccard"] == pytest.approx(35 / 43, abs=1e-4)
    report = result.report()
    assert report["sources"]["b"]["dropped"] == {"exact_duplicate": 1, "near_duplicate": 1}
    off = CurateConfig(tokenizer=None, near_dedup=NearDedupConfig(enabled=False))
    assert len(curate([Source("a", (first,)), Source("b", (second,))], off).sft) == 4


def test_dedup_fields_prompt_compares_prompts_only(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [
        {"instruction": "Name a colour.", "output": "Red."},
        {"instruction": "Name a colour.", "output": "Blue."},
    ])
    assert len(curate([Source("p", (path,))], NO_LENGTHS).sft) == 2
    by_prompt = CurateConfig(tokenizer=None, dedup_fields="prompt")
    result = curate([Source("p", (path,))], by_prompt)
    assert [r["reason"] for r in result.rejects] == ["exact_duplicate"]


# ----------------------------------------------------------------------------- unpaired, task
def kto(prompt: str, completion: str, label) -> dict:
    return {"prompt": prompt, "completion": completion, "label": label}


def test_only_desirable_unpaired_answers_are_filtered(tmp_path):
    loop = " ".join(["the answer is yes"] * 10)
    path = write_jsonl(tmp_path / "k.jsonl", [
        kto("Describe it.", "n/a", True),
        kto("Describe it.", "n/a", False),  # a placeholder is a fair undesirable answer
        kto("Loop.", loop, "TRUE"),
        kto("Loop.", loop, "0"),
        kto("Say hi.", "Hello!", "yes"),
    ])
    result = curate([Source("k", (path,))], NO_LENGTHS)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [
        (1, "placeholder_output"), (3, "repetitive"), (5, "wrong_type")]
    assert "'label'" in result.rejects[2]["detail"]
    assert [(r["meta"]["line"], r["label"]) for r in rows(result, "unpaired")] == [
        (2, False), (4, False)]


def test_the_label_is_part_of_an_unpaired_rows_exact_key(tmp_path):
    answer = alpaca(1, words=40)["output"]
    near = " ".join(["changed", *answer.split()[1:]])  # Jaccard 35/41 with `answer`
    path = write_jsonl(tmp_path / "k.jsonl", [
        kto("Summarise it.", answer, True),
        kto("Summarise it.", answer, False),  # the same text, labelled otherwise: a contrast
        kto("  SUMMARISE it. ", answer, 1),  # the first row again
        kto("Summarise it.", near, True),  # a near duplicate of the first
        kto("Summarise it.", near, "false"),  # ... of the second, not of the first
    ])
    result = curate([Source("k", (path,))], NO_LENGTHS)
    by_line = {r["line"]: r["reason"] for r in result.rejects}
    assert by_line == {3: "exact_duplicate", 4: "near_duplicate", 5: "near_duplicate"}
    kept = rows(result, "unpaired")
    assert [r["label"] for r in kept] == [True, False]
    assert {r["line"]: r["duplicate_of"] for r in result.rejects} == {
        3: kept[0]["id"], 4: kept[0]["id"], 5: kept[1]["id"]}
    # Comparing prompts only, each label keeps its own row.
    by_prompt = CurateConfig(tokenizer=None, dedup_fields="prompt")
    assert [r["label"] for r in rows(curate([Source("k", (path,))], by_prompt), "unpaired")] == [
        True, False]


def test_task_rows_are_checked_deduplicated_and_decontaminated(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"prompt": "Add 12 and 30, then say the sum.", "match": "numeric", "reference": "42",
         "task": "add"},
        {"prompt": "add 12 and 30,  then SAY the sum.", "match": "numeric", "reference": "42"},
        {"prompt": "Add 12 and 30, then say the sum.", "match": "exact", "reference": "42"},
        {"prompt": "Give a record of a person.", "match": "json_valid",
         "schema": {"type": "object"}},
        {"prompt": "What is two plus three?", "match": "numeric", "reference": "5"},
        {"prompt": "Add 1 and 1.", "match": "numeric"},
        {"prompt": "Add 1 and 2.", "match": "fuzzy", "reference": "3"},
    ])
    index = EvalIndex([EvalItem("eval.jsonl:1", "What is two plus three?")])
    no_near = CurateConfig(tokenizer=None, near_dedup=NearDedupConfig(enabled=False))
    result = curate([Source("t", (path,))], no_near, index)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [
        (2, "exact_duplicate"), (5, "eval_contamination"), (6, "bad_task"), (7, "bad_task")]
    assert "reference" in result.rejects[2]["detail"] and "match" in result.rejects[3]["detail"]
    kept = rows(result, "task")
    assert [r["meta"]["line"] for r in kept] == [1, 3, 4]  # another check is another row
    assert kept[0]["meta"]["task"] == "add" and kept[0]["reference"] == "42"
    assert kept[2]["schema"] == {"type": "object"} and "reference" not in kept[2]
    # Near duplicates compare words: the same prompt with another check is one.
    result = curate([Source("t", (path,))], NO_LENGTHS, index)
    assert {r["line"]: r["reason"] for r in result.rejects}[3] == "near_duplicate"


def test_every_kind_is_written_and_split(sample_result, tmp_path):
    curated, out = tmp_path / "curated", tmp_path / "split"
    curated.mkdir(), out.mkdir()
    report = write_curation(sample_result, curated)
    assert (report["kept_unpaired_rows"], report["kept_task_rows"]) == (60, 60)
    assert report["kept_rows"] == sum(report[f"kept_{k}_rows"]
                                      for k in ("sft", "preference", "unpaired", "task"))
    assert len((curated / "tasks.jsonl").read_text().splitlines()) == 60
    kinds = split_curated(curated, out, SplitConfig(), {})["kinds"]
    assert set(kinds) == {"sft", "preference", "unpaired", "task"}
    for kind, file in (("unpaired", "unpaired.jsonl"), ("task", "tasks.jsonl")):
        train = [json.loads(line) for line in (out / f"{kind}_train.jsonl").read_text().split("\n")
                 if line]
        validation = [json.loads(line) for line
                      in (out / f"{kind}_validation.jsonl").read_text().split("\n") if line]
        assert train and validation and len(train) + len(validation) == 60
        assert {r["id"] for r in train + validation} == {
            json.loads(line)["id"] for line in (curated / file).read_text().splitlines()}
    # A curation without such rows still writes their (empty) files.
    path = write_jsonl(tmp_path / "a.jsonl", [alpaca(1)])
    only_sft = tmp_path / "only_sft"
    only_sft.mkdir()
    write_curation(curate([Source("a", (path,))], NO_LENGTHS), only_sft)
    assert (only_sft / "unpaired.jsonl").read_text() == (only_sft / "tasks.jsonl").read_text() == ""


# ----------------------------------------------------------------------------- decontamination
def test_decontamination_matches_13_grams_and_names_the_eval_item():
    question = ("Alice has three red apples and gives two of them to Bob who already had "
                "five green pears")
    index = EvalIndex([EvalItem("eval.jsonl:7 (q-7)", question),
                       EvalItem("eval.jsonl:8", "Add the two numbers. 99 + 56"),
                       EvalItem("eval.jsonl:9", "Paris")])
    words = match_text(question).split()
    texts = [
        "prefix " + " ".join(words[2:15]) + " suffix",  # a 13-gram inside: leak
        " ".join(words[:12]),  # only 12 words in common: not a leak
        "please ADD the two numbers: 99+56, thanks",  # the short eval item, whole
        "add the two numbers 99 57",
        "paris",  # a one-word eval text only matches a prompt that is exactly it
        "the capital is paris",
    ]
    matches = index.match([match_text(t) for t in texts], [match_text(t) for t in texts])
    assert [m.item if m else None for m in matches] == [
        "eval.jsonl:7 (q-7)", None, "eval.jsonl:8", None, "eval.jsonl:9", None]
    assert "13-gram" in matches[0].detail
    assert index.summary()["eval_texts_matched"] == 3


def test_eval_files_cover_the_eval_dir_and_named_files(tmp_path):
    extra = write_jsonl(tmp_path / "bench.jsonl", [{"question": "q " * 20}])
    files = eval_files(REPO / "data/eval", [extra])
    assert {f.name for f in files} == {"task.jsonl", "general.jsonl", "general_tasks.jsonl",
                                       "general_chat.jsonl", "judge_calibration.jsonl",
                                       "bench.jsonl"}
    assert eval_files(tmp_path / "missing") == []


# ----------------------------------------------------------------------------- sources
def test_sources_limit_weight_columns_and_source_field(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl(raw / "qa.jsonl", [{"question": f"Question {i}?", "answer": f"Answer {i}."}
                                   for i in range(5)])
    write_jsonl(raw / "more.jsonl", [alpaca(i) for i in range(4)])
    data = DataConfig(raw_dir=str(raw), sources=[
        SourceConfig(path="qa.jsonl", name="qa", limit=3,
                     columns={"prompt": "question", "completion": "answer"}),
        SourceConfig(path="more.jsonl", weight=2.5),
    ])
    result = curate(resolve_sources(data), NO_LENGTHS)
    report = result.report()
    qa = report["sources"]["qa"]
    assert qa["input_rows"] == 3 and qa["truncated_by_limit"] is True
    assert qa["detected_formats"] == {"prompt_completion": 3}
    assert report["sources"]["more.jsonl"]["weight"] == 2.5
    assert report["sources"]["more.jsonl"]["truncated_by_limit"] is False
    assert Counter(r["source"] for r in rows(result)) == {"qa": 3, "more.jsonl": 4}
    assert rows(result)[0]["prompt"] == [{"role": "user", "content": "Question 0?"}]


def test_source_config_errors_name_the_key(tmp_path):
    with pytest.raises(MissingInputError, match=r"data.sources\[0\].path = nope.jsonl"):
        resolve_sources(DataConfig(raw_dir=str(tmp_path), sources=[{"path": "nope.jsonl"}]))
    write_jsonl(tmp_path / "a.jsonl", [alpaca(1)])
    twice = [{"path": "a.jsonl", "name": "x"}, {"path": "a.jsonl", "name": "x"}]
    with pytest.raises(PedigreeError, match="unique"):
        resolve_sources(DataConfig(raw_dir=str(tmp_path), sources=twice))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingInputError, match="no .jsonl"):
        resolve_sources(DataConfig(raw_dir=str(tmp_path / "empty")))


# ----------------------------------------------------------------------------- split
def test_split_is_deterministic_disjoint_and_salted():
    data = [{"id": f"{i:064x}"} for i in range(2000)]
    split = split_rows(data, 0.1, "s")
    assert split == split_rows(data, 0.1, "s")
    assert not {r["id"] for r in split.train} & {r["id"] for r in split.validation}
    assert 150 < len(split.validation) < 250
    assert split_rows(data, 0.1, "t").validation != split.validation


def test_split_is_stable_as_data_grows_even_when_clusters_change():
    data = [{"id": f"{i:064x}"} for i in range(1000)]
    table: dict[str, str] = {}
    first = split_rows(data, 0.1, "s", table)
    side = {r["id"]: "validation" for r in first.validation} | {
        r["id"]: "train" for r in first.train}
    # New rows arrive; one of them is a near duplicate that curation now keeps in place of an
    # old validation row (the old row is listed in its cluster): it must stay in validation.
    old_val = first.validation[0]["id"]
    newcomer = {"id": "f" * 64, "meta": {"cluster": [old_val]}}
    grown = [r for r in data if r["id"] != old_val] + [newcomer] + [
        {"id": f"{i:064x}"} for i in range(1000, 1500)]
    second = split_rows(grown, 0.1, "s", table)
    assert second.inherited == 1000
    now = {r["id"]: "validation" for r in second.validation} | {
        r["id"]: "train" for r in second.train}
    assert all(now[i] == s for i, s in side.items() if i != old_val)
    assert now[newcomer["id"]] == "validation"
    # Without the table the newcomer would have drawn its own side from its own hash.
    assert split_rows(grown, 0.1, "s").inherited == 0


def test_stratified_split_gives_each_source_its_share():
    data = [{"id": f"a{i:063x}", "source": "big"} for i in range(900)] + [
        {"id": f"b{i:063x}", "source": "small"} for i in range(20)]
    split = split_rows(data, 0.1, "s", stratify="source")
    val = Counter(r["source"] for r in split.validation)
    assert val == {"big": 90, "small": 2}


def test_weights_apply_to_training_rows_only(tmp_path):
    train = [{"id": f"{i:064x}", "source": "a"} for i in range(1000)] + [
        {"id": f"{i:064x}", "source": "b"} for i in range(1000, 1200)]
    weighted = apply_weights(train, {"a": 0.5, "b": 2.0}, "s")
    counts = Counter(r["source"] for r in weighted)
    assert 430 < counts["a"] < 570 and counts["b"] == 400
    assert weighted == apply_weights(train, {"a": 0.5, "b": 2.0}, "s")


def test_split_curated_writes_files_and_table(tmp_path):
    curated = tmp_path / "curated"
    curated.mkdir()
    write_jsonl(curated / "sft.jsonl", [{"id": f"{i:064x}", "source": "a"} for i in range(100)])
    (curated / "report.json").write_text(json.dumps({"sources": {"a": {"weight": 2.0}}}))
    out = tmp_path / "split"
    out.mkdir()
    report = split_curated(curated, out, SplitConfig(), {})
    counts = report["kinds"]["sft"]
    assert counts["train_rows_weighted"] == 2 * counts["train_rows"]
    table = read_assignments(out / "assignments.tsv")
    assert len(table) == 100 and set(table.values()) == {"train", "validation"}
    assert not (out / "preference_train.jsonl").exists()


def test_split_errors_are_clear(tmp_path):
    with pytest.raises(PedigreeError, match="one side empty"):
        split_rows([{"id": "a"}], 0.1, "s")
    bad = tmp_path / "assignments.tsv"
    write_assignments(bad, {"a": "train"})
    bad.write_text(bad.read_text() + "b\ttest\n")
    with pytest.raises(PedigreeError, match=r"assignments.tsv:3"):
        read_assignments(bad)


# ----------------------------------------------------------------------------- command line
def pedigree(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pedigree.cli", *args], cwd=cwd,
                          capture_output=True, text=True, check=False)


def test_cli_curate_and_split_run_the_library_on_any_files(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [
        {"question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(40)])
    leak = write_jsonl(tmp_path / "bench.jsonl", [{"question": "What is 3 plus 3?"}])
    done = pedigree("curate", str(qa), "--out", "cur", "--columns",
                    "prompt=question,completion=answer", "--against", str(leak),
                    "--workers", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "kept 39 of 40 rows" in done.stdout and "eval_contamination" in done.stdout
    report = json.loads((tmp_path / "cur/report.json").read_text())
    assert report["dropped"] == {"eval_contamination": 1}
    done = pedigree("split", "cur", "--out", "split", "--val-fraction", "0.2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first = (tmp_path / "split/sft_validation.jsonl").read_text()
    assert first and (tmp_path / "split/assignments.tsv").exists()
    # Running again reads the table back and gives the same split.
    assert pedigree("split", "cur", "--out", "split", "--val-fraction", "0.2",
                    cwd=tmp_path).returncode == 0
    assert (tmp_path / "split/sft_validation.jsonl").read_text() == first


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    done = pedigree("curate", "missing.jsonl", "--out", "x", cwd=tmp_path)
    assert done.returncode == 1 and "missing.jsonl" in done.stderr
    assert "Traceback" not in done.stderr
    write_jsonl(tmp_path / "a.jsonl", [alpaca(1)])
    done = pedigree("curate", "a.jsonl", "--out", "x", "--columns", "bogus", cwd=tmp_path)
    assert done.returncode == 2 and "--columns" in done.stderr  # a bad option value: usage
    assert "Traceback" not in done.stderr and not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- real data
def test_curation_on_real_alpaca_data():
    """The shared alpaca_5000.json (when present): a JSON array nobody here wrote."""
    path = REPO.parent / "shared/data/alpaca_5000.json"
    if not path.exists():
        pytest.skip("../shared/data/alpaca_5000.json not available")
    result = curate([Source("alpaca", (path,))], NO_LENGTHS)
    report = result.report()
    assert report["input_rows"] == 5000
    assert report["input_rows"] == report["kept_rows"] + sum(report["dropped"].values())
    reasons = Counter(r["reason"] for r in result.rejects)
    assert reasons["placeholder_output"] + reasons["empty_content"] >= 2  # the 2 empty outputs
    assert report["kept_sft_rows"] > 4900

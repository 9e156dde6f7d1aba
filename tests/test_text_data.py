"""Plain text for continued pretraining: format text, `.txt` files (one document a line), and
documents curated like every other row (dedup, decontamination, repetition, length bounds) and
split with their duplicates kept together."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
import zstandard
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from pedigree import data_layouts as layouts
from pedigree.config import CurateConfig, DataConfig, SourceConfig, SplitConfig
from pedigree.data.curate import curate, eval_files, summary, write_curation
from pedigree.data.decontaminate import EvalIndex, EvalItem, eval_items
from pedigree.data.formats import Normalised, RowError, detect_format, normalise_row
from pedigree.data.lengths import TokenCounter
from pedigree.data.readers import read_rows, readable_suffix
from pedigree.data.sources import Source, resolve_sources, sources_from_paths
from pedigree.data.split import read_assignments, split_curated
from pedigree.data.text import match_text, normalise_text

REPO = Path(__file__).resolve().parents[1]
DOMAIN = REPO / "data/text/domain.txt"
NO_LENGTHS = CurateConfig(tokenizer=None)
TRANSCRIPT = {"text": "### Human: Say hi. ### Assistant: Hi there."}


def doc(i: int, words: int = 30) -> str:
    """A distinct document: long enough for word 5-grams to mean something."""
    return " ".join(f"w{(i * 7919 + j * 104729) % 100003}" for j in range(words))


def kept(result, kind: str = "text") -> list[dict]:
    return [json.loads(line) for line in result.rows(kind)]


# ----------------------------------------------------------------------------- format text
def test_format_text_reads_one_document():
    assert normalise_row({"text": "A plain document.", "id": 7}, "text") == Normalised(
        "text", "text", {"text": "A plain document."})
    mapped = normalise_row({"body": "Prose."}, "text", {"text": "body"})
    assert mapped.content == {"text": "Prose."}


@pytest.mark.parametrize(("row", "reason", "named"), [
    ({}, "missing_field", "'text'"),
    ({"text": None}, "missing_field", "'text'"),
    ({"text": " \n\t"}, "empty_content", "'text'"),
    ({"text": ["a", "list"]}, "wrong_type", "'text'"),
    ({"text": 42}, "wrong_type", "'text'"),
])
def test_format_text_errors_name_the_field(row, reason, named):
    with pytest.raises(RowError) as err:
        normalise_row(row, "text")
    assert err.value.reason == reason and named in err.value.detail


def test_format_text_is_chosen_never_detected():
    assert "text" in layouts.FORMATS and "text" not in layouts.BY_NAME
    assert layouts.check_format("text") == "text"
    # Under auto a {"text"} row stays guanaco's transcript layout, as before.
    assert detect_format(TRANSCRIPT) == "transcript"
    assert normalise_row(TRANSCRIPT, "auto").kind == "sft"
    assert ("text", "text.jsonl") in layouts.CURATED_FILES


# ----------------------------------------------------------------------------- .txt files
TEXT = b"\xef\xbb\xbfFirst document.\r\n\n   \nSecond  document, as it is. \nthird \xff bad\nlast"


def test_a_txt_line_is_a_document_and_blank_lines_are_not_rows(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(TEXT)
    rows = list(read_rows(path, "a.txt"))
    assert [(r.line, r.value) for r in rows if not r.error] == [
        (1, {"text": "First document."}), (4, {"text": "Second  document, as it is. "}),
        (6, {"text": "last"})]
    bad = next(r for r in rows if r.error)
    assert (bad.line, bad.error.reason, bad.text) == (5, "invalid_utf8", "third \ufffd bad")


def test_compressed_txt_reads_as_txt(tmp_path):
    (tmp_path / "a.txt").write_bytes(TEXT)
    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(TEXT))
    (tmp_path / "a.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(TEXT))
    plain = [(r.line, r.value) for r in read_rows(tmp_path / "a.txt", "a")]
    for name in ("a.txt.gz", "a.txt.zst"):
        assert readable_suffix(tmp_path / name) == name[1:]
        assert [(r.line, r.value) for r in read_rows(tmp_path / name, "a")] == plain, name


def test_a_txt_source_is_format_text_under_auto(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "domain.txt").write_text(f"{doc(1)}\n{doc(2)}\n")
    (raw / "chat.jsonl").write_text(json.dumps(TRANSCRIPT) + "\n")
    sources = resolve_sources(DataConfig(raw_dir=str(raw)))
    assert {s.name: s.format for s in sources} == {"chat.jsonl": "auto", "domain.txt": "text"}
    result = curate(sources, NO_LENGTHS)
    assert [r["text"] for r in kept(result)] == [doc(1), doc(2)]
    assert kept(result)[0]["meta"] == {
        "file": (raw / "domain.txt").as_posix(), "format": "text", "line": 1}
    assert len(result.sft) == 1  # the JSONL {"text"} row: a transcript
    report = result.report()
    assert (report["kept_text_rows"], report["kept_sft_rows"]) == (2, 1)
    assert "1 SFT, 0 preference, 0 unpaired, 0 task, 2 text" in summary(report)

    # Named on the command line, and as a configured source; a format given is kept.
    assert sources_from_paths([raw / "domain.txt"])[0].format == "text"
    assert sources_from_paths([raw / "domain.txt"], "transcript")[0].format == "transcript"
    named = resolve_sources(DataConfig(raw_dir=str(raw), sources=[
        SourceConfig(path="domain.txt"), SourceConfig(path="chat.jsonl", format="text")]))
    assert [s.format for s in named] == ["text", "text"]
    assert kept(curate(named, NO_LENGTHS))[-1]["text"] == TRANSCRIPT["text"]
    # A directory of .txt and JSONL files is one source: auto, row by row, as before.
    assert resolve_sources(DataConfig(raw_dir=str(raw), sources=[
        SourceConfig(path=".")]))[0].format == "auto"


# ----------------------------------------------------------------------------- curation
@pytest.mark.parametrize("fields", ["row", "prompt"])
def test_the_sample_domain_text_loses_exactly_its_planted_problems(fields):
    cfg = CurateConfig(tokenizer=None, dedup_fields=fields)  # a document is compared whole
    index = EvalIndex(eval_items(eval_files(REPO / "data/eval")))
    result = curate(sources_from_paths([DOMAIN]), cfg, index)
    lines = DOMAIN.read_text("utf-8").split("\n")[:-1]
    assert len(lines) == 150 and len(result.text) == 144
    assert Counter(r["reason"] for r in result.rejects) == {
        "exact_duplicate": 3, "near_duplicate": 2, "eval_contamination": 1}
    by_id = {r["id"]: r["text"] for r in kept(result)}
    for r in result.rejects:
        assert r["raw"] == lines[r["line"] - 1]
        if r["reason"] == "exact_duplicate":  # case and spacing differ
            assert normalise_text(r["raw"]) == normalise_text(by_id[r["duplicate_of"]])
        elif r["reason"] == "near_duplicate":  # a word added, or commas dropped
            assert r["raw"] != by_id[r["duplicate_of"]] and r["jaccard"] >= 0.8
            assert match_text(r["raw"]).startswith(match_text(by_id[r["duplicate_of"]]))
        else:  # an eval prompt on one line, with its answer
            prompts = [json.loads(line)["prompt"] for line in
                       (REPO / "data/eval/task.jsonl").read_text().splitlines()]
            assert any(p.replace("\n\n", " ") in r["raw"] for p in prompts)
            assert r["eval_item"].startswith((REPO / "data/eval/task.jsonl").as_posix())
    assert [r["meta"]["line"] for r in kept(result)] == [
        n for n in range(1, 151) if n not in {r["line"] for r in result.rejects}]
    cluster = {i for r in kept(result) for i in r["meta"].get("cluster", [])}
    assert len(cluster) == 5  # the kept originals stand for their duplicates


def test_a_repetitive_document_is_dropped(tmp_path):
    loop = "the cat sat on the mat and " * 6
    short = "yes yes yes yes yes yes"  # under 16 words: not checked, as answers are not
    path = tmp_path / "a.txt"
    path.write_text(f"{doc(1)}\n{loop}\n{short}\n")
    result = curate(sources_from_paths([path]), NO_LENGTHS)
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(2, "repetitive")]
    assert "of the document's word 3-grams repeat (> curate.max_repetition=0.7)" in \
        result.rejects[0]["detail"]
    assert [r["text"] for r in kept(result)] == [doc(1), short]


def test_length_bounds_count_the_documents_tokens(tmp_path):
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a b c d e f"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    tok.save(str(tmp_path / "tokenizer.json"))
    path = tmp_path / "a.txt"
    path.write_text("a b\na b c d e\na b c d e f a b c d e\n")  # 2, 5 and 11 tokens
    cfg = CurateConfig(tokenizer=str(tmp_path), min_tokens=3, max_tokens=10)
    result = curate(sources_from_paths([path]), cfg, counter=TokenCounter(tmp_path))
    assert [(r["line"], r["reason"]) for r in result.rejects] == [(1, "too_short"),
                                                                   (3, "too_long")]
    assert "11 tokens > curate.max_tokens=10" in result.rejects[1]["detail"]


def test_a_document_matches_eval_text_only_by_its_words():
    # A document has no prompt (""): an eval text of no words must not match it, nor a short
    # eval text that a prompt would have to equal.
    index = EvalIndex([EvalItem("eval:1", "[]"), EvalItem("eval:2", "Paris"),
                       EvalItem("eval:3", "Add the two numbers. 99 + 56")])
    texts = [match_text("Paris is lovely."), match_text("Sums: add the two numbers 99 + 56.")]
    assert [m and m.item for m in index.match(texts, ["", ""])] == [None, "eval:3"]


# ----------------------------------------------------------------------------- split
def test_text_rows_split_with_their_duplicates(tmp_path):
    docs = [doc(i) for i in range(40)]
    lines = docs + [d + " again" for d in docs[:10]] + [d.upper() for d in docs[10:15]]
    path = tmp_path / "a.txt"
    path.write_text("\n".join(lines) + "\n")
    result = curate(sources_from_paths([path]), NO_LENGTHS)
    assert len(result.text) == 40 and len(result.rejects) == 15
    curated, out = tmp_path / "curated", tmp_path / "split"
    curated.mkdir(), out.mkdir()
    write_curation(result, curated)
    report = split_curated(curated, out, SplitConfig(validation_fraction=0.25, stratify="task"),
                           {})
    assert set(report["kinds"]) == {"text"}
    sides = {side: [json.loads(line) for line in
                    (out / f"text_{side}.jsonl").read_text().splitlines()]
             for side in ("train", "validation")}
    assert sides["train"] and sides["validation"]
    assert sorted(r["text"] for rows in sides.values() for r in rows) == sorted(docs)
    table = read_assignments(out / "assignments.tsv")
    clusters = [r for rows in sides.values() for r in rows if r["meta"].get("cluster")]
    assert len(clusters) == 15
    for side, rows in sides.items():
        for r in rows:
            assert {table[i] for i in [r["id"], *r["meta"].get("cluster", [])]} == {side}


def test_a_curation_without_documents_writes_an_empty_text_file(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": doc(i)}) + "\n"
                            for i in range(20)))
    curated, out = tmp_path / "curated", tmp_path / "split"
    curated.mkdir(), out.mkdir()
    report = write_curation(curate([Source("a", (path,))], NO_LENGTHS), curated)
    assert report["kept_text_rows"] == 0 and (curated / "text.jsonl").read_text() == ""
    # The split leaves a kind without rows out, as it does every kind.
    assert set(split_curated(curated, out, SplitConfig(), {})["kinds"]) == {"sft"}
    assert not (out / "text_train.jsonl").exists()

"""Curation accounts for every row; the split is deterministic and stable; the sample is
reproducible from its generator."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pedigree.config import CurateConfig
from pedigree.data import sample
from pedigree.data.curate import curate, eval_prompt_keys, normalise_text, raw_files
from pedigree.data.formats import RowError, normalise, row_id
from pedigree.data.split import split_rows

REPO = Path(__file__).resolve().parents[1]


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
    files = raw_files(REPO / "data/raw")
    return curate(files, CurateConfig(), eval_keys=eval_prompt_keys(REPO / "data/eval"))


def test_every_row_is_accounted_for(sample_result):
    report = sample_result.report()
    lines = sum(1 for p in raw_files(REPO / "data/raw")
                for line in p.read_bytes().split(b"\n") if line.strip())
    assert report["input_rows"] == lines
    assert report["input_rows"] == report["kept_rows"] + sum(report["dropped"].values())
    for source, counts in report["sources"].items():
        kept = counts.get("kept_sft", 0) + counts.get("kept_preference", 0)
        assert counts["input_rows"] == kept + counts.get("rejected", 0), source


def test_planted_problems_are_caught(sample_result):
    dropped = sample_result.report()["dropped"]
    # What the generator plants: 12 exact duplicates, 10 eval leaks, 11 malformed SFT lines,
    # 2 malformed preference pairs.
    assert dropped["exact_duplicate"] == 12
    assert dropped["eval_contamination"] == 10
    assert dropped["invalid_json"] == 1
    assert dropped["placeholder_output"] == 1
    assert dropped["chosen_equals_rejected"] == 1
    assert dropped["unknown_role"] == 1
    assert dropped["no_final_assistant"] == 1
    assert sum(dropped.values()) == 12 + 10 + len(sample.MALFORMED_ALPACA) + len(
        sample.MALFORMED_CHAT) + 2


def test_rejects_name_file_line_reason_and_keep_the_row(sample_result):
    for reject in sample_result.rejects:
        assert reject["file"].endswith(".jsonl") and reject["line"] >= 1
        assert reject["reason"] and reject["detail"]
        source = (REPO / reject["file"]).read_text().splitlines()[reject["line"] - 1]
        assert reject["raw"] == source
    duplicates = [r for r in sample_result.rejects if r["reason"] == "exact_duplicate"]
    kept_ids = {r["id"] for r in sample_result.sft}
    assert all(d["duplicate_of"] in kept_ids for d in duplicates)


def test_kept_rows_are_canonical_and_clean(sample_result):
    eval_keys = eval_prompt_keys(REPO / "data/eval")
    ids = [r["id"] for r in sample_result.sft + sample_result.preference]
    assert len(ids) == len(set(ids))
    for row in sample_result.sft:
        assert set(row) == {"id", "prompt", "completion", "source", "meta"}
        assert row["completion"][-1]["role"] == "assistant"
        assert row["id"] == row_id({"prompt": row["prompt"], "completion": row["completion"]})
        user = " ".join(m["content"] for m in row["prompt"] if m["role"] != "system")
        assert normalise_text(user) not in eval_keys
    for row in sample_result.preference:
        assert set(row) == {"id", "prompt", "chosen", "rejected", "source", "meta"}
        assert row["chosen"] != row["rejected"]


def test_formats_normalise_to_the_same_row():
    alpaca = {"instruction": "Add the two numbers.", "input": "1 + 2", "output": "3"}
    messages = {"messages": [{"role": "user", "content": "Add the two numbers.\n\n1 + 2"},
                             {"role": "assistant", "content": "3"}]}
    pc = {"prompt": "Add the two numbers.\n\n1 + 2", "completion": "3"}
    rows = [normalise(r, "auto") for r in (alpaca, messages, pc)]
    assert rows[0] == rows[1] == rows[2]
    assert rows[0][0] == "sft"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"instruction": "x"}, "missing_field"),
        ({"instruction": ["x"], "output": "y"}, "wrong_type"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "no_final_assistant"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "unknown_role"),
        ({"prompt": "p", "chosen": "a", "rejected": "a"}, "chosen_equals_rejected"),
        ({"text": "free text"}, "unknown_format"),
        ("just a string", "not_an_object"),
    ],
)
def test_bad_rows_have_reasons(row, reason):
    with pytest.raises(RowError) as err:
        normalise(row, "auto")
    assert err.value.reason == reason


def test_invalid_utf8_and_json_arrays(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"instruction": "Say hi", "output": "hi"}\n\n'
                      b'{"instruction": "caf\xe9", "output": "x"}\n')
    array = tmp_path / "b.json"
    array.write_text(json.dumps([{"instruction": "Say yo", "output": "yo"}, {"instruction": "z"}]))
    result = curate([jsonl, array], CurateConfig())
    reasons = {(r["file"].split("/")[-1], r["line"]): r["reason"] for r in result.rejects}
    assert reasons == {("a.jsonl", 3): "invalid_utf8", ("b.json", 2): "missing_field"}
    assert len(result.sft) == 2


def test_split_is_deterministic_stable_and_disjoint():
    rows = [{"id": f"{i:064x}"} for i in range(2000)]
    train, val = split_rows(rows, 0.1, "s")
    assert (train, val) == split_rows(rows, 0.1, "s")
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    assert 150 < len(val) < 250
    # Adding rows never moves an existing row to the other side.
    more_train, more_val = split_rows(rows + [{"id": f"{i:064x}"} for i in range(2000, 3000)],
                                      0.1, "s")
    assert {r["id"] for r in val} <= {r["id"] for r in more_val}
    assert {r["id"] for r in train} <= {r["id"] for r in more_train}
    # Another salt draws another split.
    assert split_rows(rows, 0.1, "t")[1] != val


def test_split_refuses_an_empty_side():
    with pytest.raises(ValueError, match="one side empty"):
        split_rows([{"id": "a"}], 0.1, "s")


def test_curation_on_real_alpaca_data():
    """The shared alpaca_5000.json (when present): a JSON array nobody here wrote."""
    path = REPO.parent / "shared/data/alpaca_5000.json"
    if not path.exists():
        pytest.skip("../shared/data/alpaca_5000.json not available")
    result = curate([path], CurateConfig())
    report = result.report()
    assert report["input_rows"] == 5000
    assert report["input_rows"] == report["kept_rows"] + sum(report["dropped"].values())
    reasons = Counter(r["reason"] for r in result.rejects)
    assert reasons["placeholder_output"] + reasons["empty_content"] >= 2  # the 2 empty outputs
    assert report["kept_sft_rows"] > 4900

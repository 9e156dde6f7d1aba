"""sft.replay: general rows curated like data/raw (decontaminated against the eval sets) and
mixed into the SFT rows at a fixed share, deterministically."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from pedigree.config import CurateConfig, ReplayConfig
from pedigree.data.curate import CurationError
from pedigree.data.replay import curated_replay, mix_replay, replay_count, replay_sha256
from pedigree.errors import PedigreeError

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = REPO / "data/eval"


def _rows(n: int, tag: str) -> list[dict]:
    return [{"prompt": f"{tag} {i}", "completion": str(i)} for i in range(n)]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("n", "fraction", "k"), [(48, 0.25, 16), (90, 0.1, 10), (10, 0.0, 0),
                                                  (3, 0.01, 0)])
def test_the_replayed_share_is_the_fraction(n, fraction, k):
    assert replay_count(n, fraction) == k
    mixed, replayed = mix_replay(_rows(n, "task"), _rows(100, "general"), fraction, seed=0)
    assert replayed == k and len(mixed) == n + k
    assert sum(r["prompt"].startswith("general") for r in mixed) == k
    assert mixed[:n] == _rows(n, "task")  # the task rows untouched, in order


def test_the_sample_is_seeded():
    train, general = _rows(40, "task"), _rows(100, "general")
    assert mix_replay(train, general, 0.2, 1) == mix_replay(train, general, 0.2, 1)
    assert mix_replay(train, general, 0.2, 1) != mix_replay(train, general, 0.2, 2)


def test_a_small_source_is_replayed_evenly():
    mixed, k = mix_replay(_rows(90, "task"), _rows(7, "general"), 0.25, seed=3)
    counts = Counter(r["prompt"] for r in mixed[90:])
    assert k == 30 and len(counts) == 7
    assert max(counts.values()) - min(counts.values()) <= 1  # every row before any repeats


def test_no_replay_rows_for_a_share_is_an_error():
    with pytest.raises(PedigreeError, match="kept no SFT rows"):
        mix_replay(_rows(40, "task"), [], 0.2, seed=0)


def test_the_shipped_replay_data_is_kept_whole():
    rows, report = curated_replay(ReplayConfig(source=str(REPO / "data/replay")), CurateConfig(),
                                  EVAL_DIR)
    assert len(rows) == 60 and report["dropped"] == {}
    assert all(r["completion"][-1]["role"] == "assistant" for r in rows)


def test_replay_rows_that_leak_an_eval_item_or_repeat_are_dropped(tmp_path):
    probe = json.loads((EVAL_DIR / "general_chat.jsonl").read_text().splitlines()[0])
    general = {"instruction": "Name a colour of the sea on a sunny afternoon.", "output": "Blue."}
    src = _write(tmp_path / "replay.jsonl", [
        general, general, {"instruction": probe["prompt"], "output": probe["reference"]},
        *({"instruction": f"Say the number {i} in words, please.", "output": str(i)}
          for i in range(5))])
    rows, report = curated_replay(ReplayConfig(source=str(src)), CurateConfig(), EVAL_DIR)
    assert len(rows) == 6
    assert report["dropped"] == {"exact_duplicate": 1, "eval_contamination": 1}


def test_preference_rows_are_refused(tmp_path):
    src = _write(tmp_path / "replay.jsonl",
                 [{"prompt": "Which is warmer, summer or winter?", "chosen": "Summer.",
                   "rejected": "Winter."}])
    with pytest.raises(PedigreeError, match="1 preference rows; replay takes SFT rows only"):
        curated_replay(ReplayConfig(source=str(src)), CurateConfig(), EVAL_DIR)


def test_a_bad_replay_file_names_the_line(tmp_path):
    src = _write(tmp_path / "replay.jsonl", ["{not json"])
    with pytest.raises(CurationError, match=r"replay\.jsonl:1"):
        curated_replay(ReplayConfig(source=str(src)), CurateConfig(), EVAL_DIR)


def test_the_replay_hash_follows_the_bytes(tmp_path):
    src = _write(tmp_path / "replay.jsonl", _rows(3, "general"))
    before = replay_sha256(ReplayConfig(source=str(src)))
    _write(src, _rows(4, "general"))
    assert replay_sha256(ReplayConfig(source=str(src))) != before

"""Curation on every core: the per-row steps run on parts of the data in worker processes, and
the outputs are the same bytes as one process makes (rows, rejects, report), whatever the
layout of the data, its faults, or the number of workers."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pedigree.config import CurateConfig
from pedigree.data import curate as curate_module
from pedigree.data import curate_parts
from pedigree.data.curate import curate, eval_files, write_curation
from pedigree.data.decontaminate import EvalIndex, eval_items
from pedigree.data.lengths import TokenCounter
from pedigree.data.pool import worker_count
from pedigree.data.readers import InputError
from pedigree.data.sources import Source, sources_from_paths

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "models" / "base"


def words(i: int, n: int = 14) -> str:
    return " ".join(f"w{(i * 7919 + j * 104729) % 100003}" for j in range(n))


def write_lines(path: Path, lines: list[str], newline: str = "\n", bom: bool = False) -> Path:
    path.write_bytes(("\ufeff" if bom else "").encode() + newline.join(lines).encode() + b"\n")
    return path


def dataset(tmp_path: Path) -> list[Source]:
    """Every layout curation splits or reads whole, with the faults a worker must report as one
    process does: bad JSON, bad UTF-8, blank lines, exact and near duplicates across parts, an
    eval leak, a limited source."""
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = []
    for i in range(400):
        lines.append(json.dumps({"instruction": f"Task {i % 150}: {words(i % 150)}",
                                 "output": words(i % 150 + 7)}))  # rows 150.. repeat earlier
        if i % 37 == 0:
            lines.append("{not json")
        if i % 53 == 0:
            lines.append("")
        if i % 61 == 0:  # a near duplicate: one word changed
            lines.append(json.dumps({"instruction": f"Task {i}: {words(i)}",
                                     "output": words(i + 7) + " changed"}))
    leak = next(item.text for item in eval_items(eval_files(REPO / "data" / "eval"))
                if len(item.text.split()) >= 13)
    lines.append(json.dumps({"instruction": "Say this again", "output": leak}))
    big = write_lines(raw / "big.jsonl", lines, newline="\r\n", bom=True)
    with open(big, "ab") as f:
        f.write(b'{"instruction": "bad \xff byte", "output": "x"}\n')
    text = write_lines(raw / "docs.txt", [words(i, 40) for i in range(60)] + [words(3, 40)])
    gz = raw / "more.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps({"prompt": words(i + 500),
                                                     "completion": words(i + 600)}) + "\n"
                                         for i in range(40)).encode()))
    parquet = raw / "table.parquet"
    pq.write_table(pa.table({"instruction": [words(i + 900) for i in range(30)] + [words(7)],
                             "output": [words(i + 950) for i in range(30)] + [words(14)]}),
                   parquet)
    limited = write_lines(raw / "limited.jsonl", [
        json.dumps({"instruction": words(i + 2000), "output": words(i + 2100)})
        for i in range(50)])
    return [*sources_from_paths([big, text, gz, parquet]), Source("limited", (limited,),
                                                                 limit=30)]


def outputs(sources: list[Source], cfg: CurateConfig, out: Path, **kw) -> dict[str, str]:
    index = EvalIndex(eval_items(eval_files(REPO / "data" / "eval")), 13, 5)
    counter = TokenCounter(BASE) if (BASE / "tokenizer.json").is_file() else None
    result = curate(sources, cfg, index, counter, **kw)
    out.mkdir()
    write_curation(result, out)
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(out.iterdir())}


def test_any_number_of_workers_curates_the_same_bytes(tmp_path, monkeypatch):
    sources = dataset(tmp_path)
    cfg = CurateConfig(tokenizer=str(BASE), min_kept_fraction=0)
    one = outputs(sources, cfg.model_copy(update={"workers": 1}), tmp_path / "one")
    report = json.loads((tmp_path / "one" / "report.json").read_text())
    # The data has what each step drops, so every step's merge across parts is compared.
    assert {"invalid_json", "invalid_utf8", "exact_duplicate", "near_duplicate",
            "eval_contamination"} <= set(report["dropped"])
    assert report["sources"]["limited"]["truncated_by_limit"]

    # Any data is "large", and parts are 2 kB: the big file is cut into many spans.
    monkeypatch.setattr(curate_module, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(curate_parts, "PART_BYTES", 2048)
    for workers in (2, 3):
        told: list[str] = []
        cfg_n = cfg.model_copy(update={"workers": workers})
        assert outputs(sources, cfg_n, tmp_path / f"w{workers}", progress=told.append) == one
        parts = int(told[-1].split("/")[1].split()[0])
        assert parts > 10 and f"{workers} worker processes" in told[-1]
    near = cfg.model_copy(update={"workers": 2, "near_dedup": cfg.near_dedup.model_copy(
        update={"cluster": "connected"})})
    assert (outputs(sources, near, tmp_path / "connected")
            == outputs(sources, near.model_copy(update={"workers": 1}), tmp_path / "c1"))


def test_workers_run_in_other_processes(tmp_path, monkeypatch):
    """The pool is real: parts are checked in processes other than this one."""
    pids = tmp_path / "pids"
    pids.mkdir()
    check = curate_parts.check_part

    def spy(state, part):
        (pids / str(os.getpid())).touch()  # a forked worker sees this function and directory
        return check(state, part)

    monkeypatch.setattr(curate_module, "check_part", spy)
    monkeypatch.setattr(curate_module, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(curate_parts, "PART_BYTES", 2048)
    rows = [json.dumps({"instruction": words(i), "output": words(i + 1)}) for i in range(200)]
    source = Source("s", (write_lines(tmp_path / "s.jsonl", rows),))
    result = curate([source], CurateConfig(tokenizer=None, workers=2))
    seen = {int(p.name) for p in pids.iterdir()}
    assert len(result.sft) == 200
    assert seen and os.getpid() not in seen


def test_a_file_that_breaks_in_a_worker_fails_the_run_naming_it(tmp_path, monkeypatch):
    good = write_lines(tmp_path / "good.jsonl", [json.dumps({"instruction": words(i),
                                                            "output": words(i + 1)})
                                                for i in range(100)])
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(good.read_bytes())[:-40])  # cut off: truncated download
    sources = [Source("good", (good,)), Source("broken", (broken,))]
    cfg = CurateConfig(tokenizer=None)
    with pytest.raises(InputError) as alone:
        curate(sources, cfg.model_copy(update={"workers": 1}))
    monkeypatch.setattr(curate_module, "POOL_MIN_BYTES", 0)
    with pytest.raises(InputError) as pooled:
        curate(sources, cfg.model_copy(update={"workers": 2}))
    assert str(pooled.value) == str(alone.value)
    assert "broken.jsonl.gz" in str(pooled.value) and "truncated" in str(pooled.value)


def test_the_default_is_every_core_this_process_may_use():
    assert CurateConfig().workers is None
    assert worker_count(None) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3
    with pytest.raises(ValidationError, match="workers"):
        CurateConfig(workers=0)

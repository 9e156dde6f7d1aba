"""The whole pipeline run twice from clean gives byte-identical outputs on CPU.

Two scratch projects from the same tree and the same commit (tests/scratch.py pins the commit's
date), each `dvc repro` from nothing: curated data, splits, every manifest and every weight file
must be the same bytes. Anything that differs is listed by path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from pedigree.lineage import sha256_file
from tests.scratch import OUTS, new_project, run

pytestmark = pytest.mark.slow


def _files(project: Path) -> dict[str, str]:
    """Every file of every stage output, with its sha256."""
    out = {}
    for rel in OUTS.values():
        for path in sorted((project / rel).rglob("*")):
            if path.is_file():
                out[path.relative_to(project).as_posix()] = sha256_file(path)
    return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path]:
    # Both copies first, then both runs: the same tree even if the checkout is edited meanwhile.
    projects = [new_project(tmp_path_factory.mktemp(name)) for name in ("first", "second")]
    for project in projects:
        run([sys.executable, "-m", "dvc", "repro"], project)
    return projects[0], projects[1]


def test_two_runs_from_clean_are_byte_identical(two_runs):
    first, second = (_files(p) for p in two_runs)
    assert set(first) == set(second), sorted(set(first) ^ set(second))
    differ = sorted(path for path in first if first[path] != second[path])
    assert not differ, differ
    # The comparison covered what the promise names, not an empty tree.
    for must in ("data/curated/sft.jsonl", "data/split/sft_train.jsonl",
                 "data/split/assignments.tsv", "models/base/model.safetensors",
                 "models/sft/adapter_model.safetensors", "models/align/adapter_model.safetensors",
                 "models/merged/model.safetensors", "models/quantized/gguf-q8_0/model-Q8_0.gguf",
                 *(f"{rel}/lineage.json" for rel in OUTS.values())):
        assert must in first, must


def _lock_without_perf(project: Path) -> dict:
    """dvc.lock minus perf/*.json: wall time and peak memory, measurements that differ run to
    run and so are kept out of the stage outputs (and their manifests) by design."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        stage["outs"] = [o for o in stage["outs"] if not o["path"].startswith("perf/")]
    return lock


def test_dvc_lock_is_identical_but_for_the_perf_measurements(two_runs):
    first, second = (_lock_without_perf(p) for p in two_runs)
    assert first == second
    assert len(first["stages"]) == len(OUTS)

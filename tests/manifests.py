"""Stage manifests made up for the tests: a lineage chain written to disk, and manifests to log to
MLflow (imported also by the child processes the tracking tests start)."""

from __future__ import annotations

from pathlib import Path

from pedigree import lineage


def fake_chain(root: Path) -> None:
    """raw -> curated -> split, as manifests only."""
    specs = [("data/curated", "curate", []), ("data/split", "split", ["data/curated"])]
    for path, stage, ups in specs:
        (root / path).mkdir(parents=True)
        (root / path / "rows.jsonl").write_text(stage)
        lineage.write_manifest(root / path, {
            "schema_version": 1, "stage": stage, "inputs": [{"path": "data/raw/a.jsonl",
                                                             "sha256": "a" * 64}],
            "outputs": [], "outputs_sha256": stage[0] * 64, "params": {}, "params_sha256": "p" * 64,
            "upstream": [{"path": u, "stage": "curate", "outputs_sha256": "c" * 64} for u in ups],
            "roots": {"data_sha256": "d" * 64, "base_model": None},
            "code": {"git_commit": None, "dirty": None, "source_sha256": "s" * 64}, "seed": 1,
            "versions": {"python": "3.11.7"}, "compute": None, "details": {},
        })


def logged_manifest(i: int) -> dict:
    """The manifest of stage `i`'s run, as `tracking.log_stage_run` takes it: distinct hashes
    and params per `i`."""
    return {
        "stage": f"stage{i}", "outputs_sha256": f"{i:x}" * 64, "params_sha256": "p" * 64,
        "roots": {"data_sha256": "d" * 64, "base_model": None},
        "code": {"git_commit": None, "source_sha256": "s" * 64}, "upstream": [],
        "params": {"sft": {"learning_rate": 0.001 * (i + 1), "lora": {"r": i + 1}}},
    }

"""Content hashes, manifests, atomic stage outputs, MLflow tags, and a torch-free lineage CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pedigree import lineage
from pedigree.errors import PedigreeError
from pedigree.stage import stage_run

REPO = Path(__file__).resolve().parents[1]


def test_dir_hash_depends_on_names_and_bytes_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, order in ((a, ["x", "y/z"]), (b, ["y/z", "x"])):
        for name in order:
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(name)
    assert lineage.sha256_dir(a) == lineage.sha256_dir(b)
    (b / "x").write_text("X")
    assert lineage.sha256_dir(a) != lineage.sha256_dir(b)
    (b / "x").write_text("x")
    (b / "x").rename(b / "w")
    assert lineage.sha256_dir(a) != lineage.sha256_dir(b)


def test_conflicting_roots_are_refused():
    up = [{"stage": "sft", "roots": {"data_sha256": "a" * 64}},
          {"stage": "split", "roots": {"data_sha256": "b" * 64}}]
    with pytest.raises(lineage.LineageConflictError, match="lineage conflict"):
        lineage.merge_roots(up, {})
    assert issubclass(lineage.LineageConflictError, PedigreeError)  # a user error: no traceback


def _write_params(root: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def _run_fake_stage(root: Path) -> dict:
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/a.jsonl").write_text('{"x": 1}\n')
    with stage_run("curate", out="data/curated", inputs=["data/raw"],
                   params=["curate", "tracking"]) as run:
        (run.dir / "rows.jsonl").write_text("row\n")
        run.roots["data_sha256"] = lineage.sha256_dir(root / "data/raw")
    return lineage.read_manifest(root / "data/curated")


def test_manifest_is_complete_and_byte_identical_on_rerun(in_tmp_repo):
    _write_params(in_tmp_repo)
    first = _run_fake_stage(in_tmp_repo)
    first_bytes = (in_tmp_repo / "data/curated/lineage.json").read_bytes()
    assert first["inputs"] == [{"path": "data/raw/a.jsonl",
                                "sha256": lineage.sha256_file(in_tmp_repo / "data/raw/a.jsonl")}]
    assert first["outputs"][0]["path"] == "data/curated/rows.jsonl"
    assert first["params"]["curate"]["max_tokens"] == 2048
    assert first["params_sha256"] == lineage.sha256_json(first["params"])
    assert first["code"]["files"][0] == "stages/curate.py"
    assert first["versions"]["torch"].startswith("2.13.0")
    # Same inputs, same params: the same bytes.
    import shutil

    shutil.rmtree(in_tmp_repo / "data")
    _run_fake_stage(in_tmp_repo)
    assert (in_tmp_repo / "data/curated/lineage.json").read_bytes() == first_bytes


def test_failed_stage_leaves_no_output(in_tmp_repo):
    _write_params(in_tmp_repo)
    (in_tmp_repo / "in.txt").write_text("x")
    with pytest.raises(RuntimeError, match="boom"):
        with stage_run("split", out="data/split", inputs=["in.txt"], params=["split"]) as run:
            (run.dir / "half.jsonl").write_text("half")
            raise RuntimeError("boom")
    assert not (in_tmp_repo / "data/split").exists()
    assert list((in_tmp_repo / "data").iterdir()) == []  # no temp directory left either


def test_missing_input_is_named(in_tmp_repo):
    _write_params(in_tmp_repo)
    with pytest.raises(FileNotFoundError, match="data/split: input of this stage is missing"):
        with stage_run("sft", out="models/sft", inputs=["data/split"], params=["sft"]):
            pass


def test_tracking_logs_tags_params_and_datasets(tmp_path, monkeypatch):
    import mlflow

    from pedigree import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "lr-sweep-1")
    manifest = {
        "stage": "sft", "outputs_sha256": "o" * 64, "params_sha256": "p" * 64,
        "roots": {"data_sha256": "d" * 64,
                  "base_model": {"id": "org/m", "revision": "r" * 40, "sha256": "b" * 64}},
        "code": {"git_commit": "c" * 40, "source_sha256": "s" * 64},
        "upstream": [{"path": "data/split", "stage": "split", "outputs_sha256": "u" * 64}],
        "params": {"sft": {"learning_rate": 0.002, "lora": {"r": 16}}},
    }
    run_id = tracking.log_stage_run(
        root=tmp_path, experiment="t", manifest=manifest, output_path="models/sft",
        metrics={"val_loss": 1.5}, history=[(10, {"loss": 2.0})],
        datasets={"data/split": "u" * 64}, artifacts=[],
    )
    run = mlflow.MlflowClient(tracking.tracking_uri(tmp_path)).get_run(run_id)
    tags = run.data.tags
    assert tags["pedigree.data_sha256"] == "d" * 64
    assert tags["pedigree.base_model.revision"] == "r" * 40
    assert tags["pedigree.upstream.split"] == "u" * 64
    assert tags["mlflow.source.git.commit"] == "c" * 40
    assert tags["pedigree.dvc_experiment"] == "lr-sweep-1"
    assert run.data.params == {"sft.learning_rate": "0.002", "sft.lora.r": "16"}
    assert run.data.metrics["val_loss"] == 1.5
    (ds,) = run.inputs.dataset_inputs
    assert (ds.dataset.name, ds.dataset.digest) == ("data/split", "u" * 32)
    assert (tmp_path / "mlflow.db").is_file()


def test_queued_experiments_log_to_the_repository_store(tmp_path, monkeypatch):
    """DVC runs a queued experiment in a temporary copy with DVC_ROOT set to the repository: the
    default store is the repository's, not the copy's."""
    from pedigree import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "repo"))
    assert tracking.tracking_uri(tmp_path / "copy") == f"sqlite:///{tmp_path}/repo/mlflow.db"
    monkeypatch.delenv("DVC_ROOT")
    assert tracking.tracking_uri(tmp_path / "copy") == f"sqlite:///{tmp_path}/copy/mlflow.db"


def _fake_chain(root: Path) -> None:
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
        })


def test_lineage_cli_walks_back_without_importing_torch(tmp_path):
    _fake_chain(tmp_path)
    code = ("import sys; from pedigree.cli import main; rc = main(['lineage', "
            "'data/split/rows.jsonl']); "
            "assert 'torch' not in sys.modules and 'mlflow' not in sys.modules, 'heavy import'; "
            "sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout
    assert out.index("data/split  (stage split)") < out.index("data/curated  (stage curate)")
    assert "d" * 64 in out
    as_json = subprocess.run([sys.executable, "-m", "pedigree.cli", "lineage", "data/split",
                              "--format", "json"], cwd=tmp_path, capture_output=True,
                             text=True, check=True).stdout
    assert [m["stage"] for m in json.loads(as_json)] == ["split", "curate"]


def test_lineage_of_a_non_artifact_fails_clearly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pedigree.cli", "lineage", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "not a pipeline artifact" in proc.stderr


def test_a_broken_manifest_is_named_not_a_traceback(tmp_path):
    _fake_chain(tmp_path)
    (tmp_path / "data/split/lineage.json").write_text('{"stage": "split"')
    proc = subprocess.run([sys.executable, "-m", "pedigree.cli", "lineage", "data/split"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "data/split/lineage.json: not valid JSON" in proc.stderr
    (tmp_path / "data/split/lineage.json").write_text('{"stage": "split"}')
    with pytest.raises(lineage.ManifestError, match="missing inputs, outputs"):
        lineage.read_manifest(tmp_path / "data/split")

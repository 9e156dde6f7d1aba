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
from tests.manifests import fake_chain

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


# Stages read their contract from dvc.yaml; these scratch stages have small ones of their own.
SCRATCH_DVC_YAML = """
stages:
  curate:
    cmd: python stages/curate.py
    deps: [stages/curate.py, src/pedigree/stage.py, "${data.raw_dir}"]
    params: [curate, tracking]
    outs: [data/curated]
  split:
    cmd: python stages/split.py
    deps: [stages/split.py, in.txt]
    params: [split]
    outs: [{data/split: {persist: true}}]
  sft:
    cmd: python stages/sft.py
    deps: [stages/sft.py, data/split]
    params: [sft]
    outs: [models/sft, {perf/sft.json: {cache: false}}]
"""


def _write_params(root: Path, raw_dir: str = "data/raw") -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    raw["data"]["raw_dir"] = raw_dir
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    (root / "dvc.yaml").write_text(SCRATCH_DVC_YAML)


def _run_fake_stage(root: Path, raw_dir: str = "data/raw") -> dict:
    (root / raw_dir).mkdir(parents=True)
    (root / raw_dir / "a.jsonl").write_text('{"x": 1}\n')
    with stage_run("curate") as run:
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
    with pytest.raises(RuntimeError, match="boom"), stage_run("split") as run:
        (run.dir / "half.jsonl").write_text("half")
        raise RuntimeError("boom")
    assert not (in_tmp_repo / "data/split").exists()
    assert list((in_tmp_repo / "data").iterdir()) == []  # no temp directory left either


def test_missing_input_is_named(in_tmp_repo):
    _write_params(in_tmp_repo)
    with pytest.raises(FileNotFoundError, match="data/split: input of this stage is missing"):
        with stage_run("sft"):
            pass
    assert not (in_tmp_repo / "models").exists()  # not even an empty temporary directory


def test_the_contract_is_read_from_dvc_yaml(in_tmp_repo):
    """Output, inputs (with `${key}` resolved from params.yaml, as DVC does) and recorded params
    are dvc.yaml's; an input a param names is added by the script, once."""
    _write_params(in_tmp_repo, raw_dir="elsewhere/raw")
    manifest = _run_fake_stage(in_tmp_repo, raw_dir="elsewhere/raw")
    assert [i["path"] for i in manifest["inputs"]] == ["elsewhere/raw/a.jsonl"]
    assert sorted(manifest["params"]) == ["curate", "tracking"]
    assert manifest["outputs"][0]["path"] == "data/curated/rows.jsonl"
    assert manifest["code"]["files"] == ["stages/curate.py", "src/pedigree/stage.py"]
    (in_tmp_repo / "in.txt").write_text("x")
    (in_tmp_repo / "template.jinja").write_text("{{ x }}")
    with stage_run("split", extra_inputs=["in.txt", "template.jinja"]) as run:
        (run.dir / "rows.jsonl").write_text("row\n")
    paths = [i["path"] for i in lineage.read_manifest(in_tmp_repo / "data/split")["inputs"]]
    assert paths == ["in.txt", "template.jinja"]


def test_every_stage_contract_matches_the_script(monkeypatch):
    """The repository's stages: each writes one directory of its own, outside the code, and no
    stage script restates its output, inputs or params (stage_run takes only extra inputs)."""
    from pedigree.pipeline import stage_contract

    monkeypatch.chdir(REPO)
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    outs = {}
    for name in spec:
        contract = stage_contract(name)
        out = Path(contract.out)
        assert not out.is_absolute() and ".." not in out.parts and not out.suffix, out
        assert out.parts[0] not in ("stages", "src", "conf", "tests"), out
        outs[name] = out
        assert contract.code[0] == f"stages/{name}.py"
        assert "data/raw" not in contract.code and contract.inputs
        script = (REPO / contract.code[0]).read_text()
        assert script.count("stage_run(") == 1 and f'stage_run("{name}"' in script
        assert "out=" not in script and "params=[" not in script
    # Distinct, and none inside another's: a stage's hash covers only what it wrote.
    for name, out in outs.items():
        for other, theirs in outs.items():
            assert name == other or not out.is_relative_to(theirs), (name, other)


def test_unknown_stage_or_unset_variable_is_a_clear_error(in_tmp_repo):
    from pedigree.pipeline import stage_contract

    _write_params(in_tmp_repo)
    with pytest.raises(PedigreeError, match="no stage 'align'"):
        stage_contract("align")
    (in_tmp_repo / "dvc.yaml").write_text(SCRATCH_DVC_YAML.replace("data.raw_dir", "data.nope"))
    with pytest.raises(PedigreeError, match=r"\$\{data.nope\}, which params.yaml does not set"):
        stage_contract("curate")


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


def test_lineage_cli_walks_back_without_importing_torch(tmp_path):
    fake_chain(tmp_path)
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
    fake_chain(tmp_path)
    (tmp_path / "data/split/lineage.json").write_text('{"stage": "split"')
    proc = subprocess.run([sys.executable, "-m", "pedigree.cli", "lineage", "data/split"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "data/split/lineage.json: not valid JSON" in proc.stderr
    (tmp_path / "data/split/lineage.json").write_text('{"stage": "split"}')
    with pytest.raises(lineage.ManifestError, match="missing schema_version, inputs, outputs"):
        lineage.read_manifest(tmp_path / "data/split")
    newer = {**json.loads((tmp_path / "data/curated/lineage.json").read_text()),
             "schema_version": 2}
    (tmp_path / "data/split/lineage.json").write_text(json.dumps(newer))
    with pytest.raises(lineage.ManifestError, match="schema_version 2; this pedigree reads "
                                                     "version 1"):
        lineage.read_manifest(tmp_path / "data/split")

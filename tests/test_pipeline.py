"""The whole DAG end to end with `dvc repro`, on the micro configuration, in a scratch clone.

One module-scoped run; the tests then check what a user would: every stage ran and wrote a
manifest rooted in the raw data hash, a second repro does nothing, an eval-only change re-runs only
eval, MLflow has a tagged run per stage, lineage prints the chain, and `dvc exp run -S` composes
params from conf/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.scratch import (
    OUTPUTS,
    SECRETS,
    STAGES,
    commit,
    env,
    free_port,
    manifest,
    new_project,
    run,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = new_project(tmp_path_factory.mktemp("clone"))
    run([sys.executable, "-m", "dvc", "repro"], root)
    return root


def test_every_stage_ran_and_wrote_a_manifest(project):
    for stage in STAGES:
        m = manifest(project, stage)
        assert m["stage"] == stage
        assert m["schema_version"] == 1
        for key in ("inputs", "outputs", "roots", "params", "params_sha256", "code", "versions",
                    "seed"):
            assert key in m, (stage, key)
        assert m["code"]["git_commit"] and len(m["code"]["git_commit"]) == 40
        assert m["code"]["dirty"] is False
        assert "timestamp" not in json.dumps(m)
        # Where the float work ran (README: Determinism); curate and split do none, nor does
        # cpt when it is off (the default).
        if stage in ("curate", "split", "cpt"):
            assert m["compute"] is None, stage
        else:
            assert m["compute"]["device"] == "cpu" and m["compute"]["threads"] >= 1, stage
    lock = (project / "dvc.lock").read_text()
    assert all(f"  {stage}:" in lock for stage in STAGES)


def test_no_planted_secret_is_written_or_logged(project):
    """The whole pipeline ran with credentials in its environment: no manifest, model card,
    MLflow param, tag or artifact, DVC file or log holds any of them."""
    values = [v.encode() for v in SECRETS.values()]
    leaks = []
    for path in project.rglob("*"):
        if path.is_relative_to(project / "tests"):
            continue  # the tests themselves hold the planted values
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            leaks += [f"{path.relative_to(project)}" for v in values if v in data]
    leaks += ["output of a command" for out in OUTPUTS for v in SECRETS.values() if v in out]
    assert not leaks, leaks
    assert (project / "mlflow.db").is_file() and OUTPUTS


def test_manifests_are_rooted_in_the_raw_data_hash(project):
    data_hash = run([sys.executable, "-m", "pedigree.cli", "hash", "data/raw"], project).strip()
    base_root = manifest(project, "base")["roots"]["base_model"]
    for stage in STAGES[1:]:
        roots = manifest(project, stage)["roots"]
        assert roots["data_sha256"] == data_hash, stage
        if stage not in ("curate", "split"):
            assert roots["base_model"] == base_root, stage
    # The base model is built from the corpus, not from data/raw: it claims no data root.
    assert manifest(project, "base")["roots"]["data_sha256"] is None
    assert base_root["id"] == "pedigree/tiny-llama" and len(base_root["sha256"]) == 64


def test_outputs_hashes_match_the_files(project):
    from pedigree.lineage import sha256_file

    for stage in STAGES:
        for out in manifest(project, stage)["outputs"]:
            assert sha256_file(project / out["path"]) == out["sha256"], out["path"]


def test_stages_did_their_jobs(project):
    report = json.loads((project / "data/curated/report.json").read_text())
    assert report["input_rows"] == report["kept_rows"] + sum(report["dropped"].values())
    assert report["dropped"]["exact_duplicate"] > 0 and report["dropped"]["near_duplicate"] > 0
    assert report["decontamination"]["eval_texts_matched"] > 0
    # The split's assignments table is kept for the next run (persist in dvc.yaml).
    assert (project / "data/split/assignments.tsv").read_text().startswith("id\tsplit\n")
    sft = json.loads((project / "models/sft/metrics.json").read_text())
    assert sft["val_loss"] < sft["val_loss_base"]  # fine-tuning lowered the task loss
    assert manifest(project, "align")["details"]["policy"]["align"] == "dpo"
    parity = json.loads((project / "models/merged/parity.json").read_text())
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["top1_agreement"] == 1.0
    quant = json.loads((project / "models/quantized/report.json").read_text())["gguf-q8_0"]
    assert (project / "models/quantized" / quant["file"]).stat().st_size == quant["size_bytes"]
    assert quant["size_ratio_to_merged"] < 0.5
    assert quant["passed"] and quant["perplexity_ratio"] <= quant["max_perplexity_ratio"]
    assert (project / "models/quantized/gguf-q8_0/Modelfile").read_text().startswith("# Written")
    card = (project / "models/quantized/gguf-q8_0/README.md").read_text()
    assert manifest(project, "curate")["roots"]["data_sha256"] in card and "gguf-q8_0" in card
    quantize_metrics = json.loads((project / "metrics/quantize.json").read_text())
    assert quantize_metrics["gguf-q8_0"]["passed"] is True
    assert {"README.md", "generation_config.json", "chat_template.jinja"} <= {
        p.name for p in (project / "models/merged").iterdir()}
    metrics = json.loads((project / "metrics/eval.json").read_text())
    assert set(metrics) == {"base", "sft", "aligned", "merged", "gguf-q8_0", "prompted-0shot",
                            "prompted-1shot", "prompted-3shot"}
    assert metrics["sft"]["val_loss"] < metrics["base"]["val_loss"]
    assert abs(metrics["merged"]["val_loss"] - metrics["aligned"]["val_loss"]) < 1e-4


def test_training_curves_for_dvc_plots(project):
    plots = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], project))
    for name in ("sft_loss", "align_loss"):
        values = plots["data"][name][0]["content"]["data"]["values"]
        assert values and all(float(v["loss"]) > 0 for v in values), name
    files = {v["filename"] for v in plots["data"]["sft_loss"][0]["content"]["data"]["values"]}
    assert files == {"train_loss.csv", "val_loss.csv"}
    assert not (project / "checkpoints/sft").exists()  # cleared after a finished run


def test_second_repro_does_nothing(project):
    out = run([sys.executable, "-m", "dvc", "repro"], project)
    assert "Running stage" not in out
    assert "up to date" in out


def test_a_second_repro_at_once_is_refused_and_nothing_is_corrupt(project, tmp_path):
    log = tmp_path / "first.log"
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the first run
        first = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-f", "-s", "eval"],
                                 cwd=project, env=env(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while not (project / ".metrics.tmp").exists() and first.poll() is None \
                and time.time() < deadline:
            time.sleep(0.05)  # until the eval stage is writing its output
        assert first.poll() is None, "the first repro ended before the second could start"
        second = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project,
                                env=env(), capture_output=True, text=True, timeout=300)
        assert first.wait(timeout=600) == 0, log.read_text()[-3000:]
    # DVC's lock on the outputs the first run holds refuses the second, in one clear message.
    assert second.returncode != 0, second.stdout
    assert "is busy, it is being blocked by" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    audit = subprocess.run([sys.executable, "-m", "pedigree.cli", "audit", "--no-mlflow"],
                           cwd=project, env=env(), capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stderr


def test_lineage_prints_the_chain_to_the_raw_data(project):
    out = run([sys.executable, "-m", "pedigree.cli", "lineage", "models/quantized"], project)
    for path in ("models/quantized", "models/merged", "models/sft", "models/base",
                 "data/split", "data/curated"):
        assert f"{path}  (stage" in out
    assert manifest(project, "curate")["roots"]["data_sha256"] in out
    mermaid = run([sys.executable, "-m", "pedigree.cli", "lineage",
                   "models/quantized/gguf-q8_0", "--format", "mermaid"], project)
    assert mermaid.startswith("graph LR") and "-->" in mermaid
    # Each stage's MLflow run(s), found by the artifact's hash tag (SQLite read, no MLflow import).
    chain = json.loads(run([sys.executable, "-m", "pedigree.cli", "lineage", "models/quantized",
                            "--format", "json"], project))
    assert all(m["mlflow_runs"] for m in chain), [(m["stage"], m["mlflow_runs"]) for m in chain]


def test_mlflow_has_a_tagged_run_per_stage(project):
    import mlflow

    data_hash = manifest(project, "curate")["roots"]["data_sha256"]
    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pedigree")
    runs = client.search_runs([exp.experiment_id])
    by_stage = {r.data.tags["pedigree.stage"]: r for r in runs}
    assert set(by_stage) == set(STAGES)
    for stage, r in by_stage.items():
        m = manifest(project, stage)
        assert r.data.tags["pedigree.outputs_sha256"] == m["outputs_sha256"]
        assert r.data.tags["pedigree.git_commit"] == m["code"]["git_commit"]
        if stage != "base":
            assert r.data.tags["pedigree.data_sha256"] == data_hash
        assert r.data.tags["pedigree.base_model.id"] in ("pedigree/tiny-llama", "none")
    sft = by_stage["sft"]
    assert sft.data.params["sft.lora.r"] == "16"
    assert "val_loss" in sft.data.metrics
    digests = {d.dataset.name: d.dataset.digest for d in sft.inputs.dataset_inputs}
    assert digests["data/split"] == manifest(project, "split")["outputs_sha256"][:32]
    # Curation and split log what they read and their counts.
    report = json.loads((project / "data/curated/report.json").read_text())
    curate = by_stage["curate"]
    assert curate.data.metrics["input_rows"] == report["input_rows"]
    assert curate.data.metrics["dropped.near_duplicate"] == report["dropped"]["near_duplicate"]
    datasets = {d.dataset.name for d in curate.inputs.dataset_inputs}
    assert {"data/raw", "data/eval", "models/base/tokenizer.json"} <= datasets
    assert by_stage["split"].data.metrics["sft_validation_rows"] > 0


def test_eval_only_change_reruns_only_eval(project):
    params = project / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("max_new_tokens: 8", "max_new_tokens: 6"))
    try:
        out = run([sys.executable, "-m", "dvc", "repro"], project)
    finally:
        params.write_text(original)
    assert "Running stage 'eval'" in out
    for stage in STAGES[:-1]:
        assert f"Running stage '{stage}'" not in out
    run([sys.executable, "-m", "dvc", "repro"], project)  # back to the committed params


def test_dvc_exp_run_composes_params_from_conf(project):
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock"], project)
    out = run([sys.executable, "-m", "dvc", "exp", "run", "-n", "lr-test",
               "-S", "experiment=micro", "-S", "sft.learning_rate=0.001"], project)
    assert "Running stage 'sft'" in out
    assert "Running stage 'base'" not in out  # unchanged upstream stages are reused
    show = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], project)
    assert "lr-test" in show
    assert "learning_rate: 0.001" in (project / "params.yaml").read_text()


def _audit(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pedigree.cli", "audit"], cwd=project,
                          env=env(), capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture
def planted(project, tmp_path) -> Path:
    """A copy of the finished project (its own mlflow.db) to plant one fault in."""
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True, ignore=shutil.ignore_patterns(".dvc"))
    shutil.copytree(project / ".dvc", copy / ".dvc", symlinks=True,
                    ignore=shutil.ignore_patterns("cache", "tmp"))
    return copy


def test_audit_passes_on_a_finished_run(project):
    proc = _audit(project)
    assert proc.returncode == 0, proc.stderr
    assert "manifests, dvc.lock and MLflow runs agree" in proc.stdout


def _retag(project: Path, stage: str, **tags: str | None) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pedigree")
    digest = manifest(project, stage)["outputs_sha256"]  # the runs that made the current output
    runs = client.search_runs([exp.experiment_id], f"tags.`pedigree.outputs_sha256` = '{digest}'")
    assert runs
    for found in runs:
        for key, value in tags.items():
            if value is None:
                client.delete_run(found.info.run_id)
            else:
                client.set_tag(found.info.run_id, f"pedigree.{key}", value)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_manifest(project: Path) -> None:
    path = project / "models/sft/lineage.json"
    m = json.loads(path.read_text())
    m["params"]["sft"]["learning_rate"] = 0.5  # claim other params than the ones used
    path.write_text(json.dumps(m, indent=2))


def _edit_lock(project: Path) -> None:
    lock = (project / "dvc.lock").read_text()
    start = lock.index("- path: models/merged")
    md5 = lock.index("md5: ", start) + len("md5: ")
    (project / "dvc.lock").write_text(lock[:md5] + "0" * 32 + lock[md5 + 32:])


@pytest.mark.parametrize(("fault", "plant", "expected"), [
    ("one byte changed", lambda p: _flip_byte(p / "models/sft/adapter_model.safetensors"),
     "models/sft: models/sft/adapter_model.safetensors has sha256"),
    ("manifest edited by hand", _edit_manifest, "models/sft: lineage.json was edited: params"),
    ("manifest and dvc.lock disagree", _edit_lock,
     "models/merged: dvc.lock records md5 000000"),
    ("artifact without a run", lambda p: _retag(p, "align", removed=None),
     "models/align: no MLflow run tagged"),
    ("run tagged with other data", lambda p: _retag(p, "merge", data_sha256="f" * 64),
     "models/merged: MLflow run"),
])
def test_audit_catches_planted_faults(planted, fault, plant, expected):
    plant(planted)
    proc = _audit(planted)
    assert proc.returncode == 1, (fault, proc.stdout, proc.stderr)
    first = proc.stderr.splitlines()[0]
    assert first.startswith("audit failed: ") and expected in first, (fault, proc.stderr)


def test_mlflow_server_serves_the_runs_and_their_lineage(project):
    """`mlflow server` on the project's store, queried over REST as a team server would be."""
    import signal
    import time
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}", "--workers", "1"],
        cwd=project, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its own process group: workers die with it
    base = f"http://127.0.0.1:{port}"

    def call(path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(base + path, data=data,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")

    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.5)
        exp = call("/api/2.0/mlflow/experiments/get-by-name?experiment_name=pedigree")
        runs = call("/api/2.0/mlflow/runs/search",
                    {"experiment_ids": [exp["experiment"]["experiment_id"]],
                     "max_results": 1000})["runs"]
        tags = {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]}
                for r in runs}
        current = {stage: next(i for i, t in tags.items()
                               if t.get("pedigree.outputs_sha256")
                               == manifest(project, stage)["outputs_sha256"])
                   for stage in STAGES}
        for stage, run_id in current.items():
            for up in manifest(project, stage)["upstream"]:
                linked = tags[run_id][f"pedigree.upstream_run.{up['stage']}"]
                assert tags[linked]["pedigree.outputs_sha256"] == up["outputs_sha256"], stage
        inputs = call(f"/api/2.0/mlflow/runs/get?run_id={current['sft']}")["run"]["inputs"]
        digests = {d["dataset"]["name"]: d["dataset"]["digest"] for d in inputs["dataset_inputs"]}
        assert len(digests["data/split"]) == 32
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    # Its workers exit too (they may take a few seconds to finish shutting down).
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True,
                         check=False).stdout and time.monotonic() < deadline:
        time.sleep(0.5)
    leftover = subprocess.run(["pgrep", "-g", str(server.pid)], capture_output=True, check=False)
    if leftover.stdout:
        os.killpg(server.pid, signal.SIGKILL)
    assert leftover.stdout == b"", "mlflow server workers outlived the server"


def test_a_team_shares_the_artifacts_through_an_s3_remote(project, tmp_path):
    """`dvc push` to an S3 API (moto's server on 127.0.0.1), then `git clone` and `dvc pull`
    elsewhere: the clone audits, traces its lineage and has nothing to re-run."""
    import signal
    import urllib.request

    import boto3

    port = free_port()
    server = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    # moto accepts any key; these are the planted ones (scratch.SECRETS): never written down.
    keys = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no moto server"
                time.sleep(0.3)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing-key-id",
                     aws_secret_access_key=env()["AWS_SECRET_ACCESS_KEY"]).create_bucket(
            Bucket="team-artifacts")
        dvc = [sys.executable, "-m", "dvc"]
        run([*dvc, "remote", "add", "-d", "team", "s3://team-artifacts/pedigree"], project)
        run([*dvc, "remote", "modify", "team", "endpointurl", endpoint], project)
        commit(project, "a DVC remote for the team")
        pushed = run([*dvc, "push"], project, **keys)
        assert "pushed" in pushed

        clone = tmp_path / "teammate"
        run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
        assert not (clone / "models").exists()  # git holds no artifact
        run([*dvc, "pull"], clone, **keys)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    for stage in STAGES:
        assert manifest(clone, stage) == manifest(project, stage), stage
    assert "Data and pipelines are up to date" in run([*dvc, "status"], clone)
    repro = run([*dvc, "repro"], clone)
    assert "Running stage" not in repro and "Data and pipelines are up to date" in repro
    cli = [sys.executable, "-m", "pedigree.cli"]
    assert "audit passed" in run([*cli, "audit", "--no-mlflow"], clone)
    # Against the team's tracking store (here the pusher's; in practice `mlflow server`).
    tracked = run([*cli, "audit"], clone,
                  MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}")
    assert "audit passed" in tracked
    chain = run([*cli, "lineage", "metrics"], clone)
    for path in ("metrics", "models/merged", "models/sft", "models/base", "data/curated"):
        assert f"{path}  (stage" in chain
    assert manifest(project, "curate")["roots"]["data_sha256"] in chain
    config = (clone / ".dvc" / "config").read_text()
    assert endpoint in config and env()["AWS_SECRET_ACCESS_KEY"] not in config


def test_report_renders_in_headless_chromium(project, tmp_path):
    """The report of a finished run, opened in Debian's chromium: graph and charts drawn."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium; `make test` tries)")
    from PIL import Image

    run([sys.executable, "-m", "pedigree.cli", "report", "--out", "report.html"], project)
    url = (project / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,2400"]
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for element in ('id="lineage-graph"', 'id="eval-table"', 'id="sft-curve"', 'id="align-curve"',
                    'class="mlflow-run"', 'href="models/merged/README.md"',
                    'id="side-by-side"'):
        assert element in dom, element
    shot = tmp_path / "report.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 50  # text, boxes, bars and curves: far from a blank page
    top = image.crop((0, 0, 1200, 700)).getcolors(maxcolors=1 << 20) or []
    assert any(c == (31, 119, 180) for _, c in top) or any(c == (238, 244, 251) for _, c in top)


# --- evals, the gate and promotion ---------------------------------------------------------

def test_eval_writes_gate_summary_and_one_plot_per_metric(project):
    gate = json.loads((project / "metrics/gate.json").read_text())
    assert gate["candidate"] == "merged" and isinstance(gate["passed"], bool)
    assert gate["candidate_sha256"] == manifest(project, "merge")["outputs_sha256"]
    assert {c["check"] for c in gate["checks"]} == {"task gain over base",
                                                    "general probe vs base",
                                                    "gain over prompting"}
    assert all(r.startswith(("pass: ", "FAIL: ", "no champion")) for r in gate["reasons"])
    summary = json.loads((project / "metrics/summary.json").read_text())
    assert summary["gate_passed"] == int(gate["passed"]) and "task_gain" in summary["sft"]
    metrics = json.loads((project / "metrics/eval.json").read_text())
    for model in ("base", "sft", "aligned", "merged", "gguf-q8_0"):
        for key in ("task_loss", "task_normalised_match", "general_task_score",
                    "pref_accuracy"):
            assert key in metrics[model], (model, key)
    # The base well prompted: a system prompt and 0, 1, 3 examples from the training split.
    baselines = json.loads((project / "metrics/baselines.json").read_text())
    assert list(baselines) == ["prompted-0shot", "prompted-1shot", "prompted-3shot"]
    train = {json.loads(line)["id"] for line in
             (project / "data/split/sft_train.jsonl").read_text().splitlines()}
    three = baselines["prompted-3shot"]["shots"]
    assert all(len(ids) == 3 and set(ids) <= train for ids in three.values())
    assert all(baselines["prompted-1shot"]["shots"][t] == ids[:1] for t, ids in three.items())
    for name in baselines:
        assert "task_loss" in metrics[name] and "general_loss" not in metrics[name]
    [prompting] = [c for c in gate["checks"] if c["check"] == "gain over prompting"]
    best = max(baselines, key=lambda b: -metrics[b]["task_loss"])
    assert prompting["reference"] == best and prompting["n"] == 16
    assert summary["task_gain_over_prompting"] == prompting["difference"]
    answers = [json.loads(line) for line in
               (project / "metrics/answers.jsonl").read_text().splitlines()]
    assert set(answers[0]["answers"]) == set(metrics)
    shown = json.loads(run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], project))
    assert "metrics/summary.json" in json.dumps(shown) and "perf/sft.json" in json.dumps(shown)
    plots = json.loads(run([sys.executable, "-m", "dvc", "plots", "show", "--json"], project))
    charts = [name for name in plots["data"] if name.startswith("metrics/plots/")]
    assert "metrics/plots/task_loss.json" in charts and "metrics/plots/general_loss.json" in charts
    rows = plots["data"]["metrics/plots/task_loss.json"][0]["content"]["data"]["values"]
    assert {r["model"] for r in rows} == set(metrics)


@pytest.fixture
def promotable(project, tmp_path) -> Path:
    """A copy of the finished project with its DVC cache (so `dvc repro` there re-runs only
    what changed) and its own mlflow.db."""
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, symlinks=True, ignore=shutil.ignore_patterns("tmp"))
    return copy


def _promote(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pedigree.cli", "promote", *args], cwd=project,
                          env=env(), capture_output=True, text=True, timeout=300, check=False)


def _set_gate(project: Path, **values) -> None:
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["gate"].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_promote_refuses_a_failed_gate_then_promotes_and_gates_against_the_champion(promotable):
    from mlflow.tracking import MlflowClient

    project = promotable
    _set_gate(project, min_task_gain=50.0)  # no model gains 50 nats: the gate fails
    out = run([sys.executable, "-m", "dvc", "repro"], project)
    assert "Running stage 'eval'" in out and "Running stage 'merge'" not in out
    assert "gate: FAILED" in out  # a failed gate is a result, not a failed stage
    proc = _promote(project)
    assert proc.returncode == 1 and "refused: the gate failed" in proc.stderr, proc.stderr
    assert "FAIL: task_loss" in proc.stderr

    _set_gate(project, min_task_gain=0.0, general_tolerance={"general_loss": 100.0})
    run([sys.executable, "-m", "dvc", "repro"], project)
    assert json.loads((project / "metrics/gate.json").read_text())["passed"] is True
    dry = _promote(project, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "'pedigree' version 1" in dry.stdout and "no champion -> version 1" in dry.stdout
    assert json.loads((project / "champion.json").read_text()) == {"champion": None}

    done = _promote(project)
    assert done.returncode == 0, done.stderr
    client = MlflowClient(f"sqlite:///{project / 'mlflow.db'}")
    version = client.get_model_version_by_alias("pedigree", "champion")
    assert str(version.version) == "1"
    merged = manifest(project, "merge")
    assert version.tags["pedigree.outputs_sha256"] == merged["outputs_sha256"]
    assert version.tags["pedigree.root.data_sha256"] == merged["roots"]["data_sha256"]
    assert version.tags["pedigree.root.base_model.id"] == "pedigree/tiny-llama"
    assert version.source.endswith("/models/merged") and version.run_id
    champion = json.loads((project / "champion.json").read_text())["champion"]
    assert champion["version"] == "1" and champion["items"]["task_loss"]

    # The same model again: nothing to promote.
    again = _promote(project)
    assert again.returncode == 1 and "already the champion" in again.stderr
    # The next eval gates against the champion (champion.json is an eval dependency).
    out = run([sys.executable, "-m", "dvc", "repro"], project)
    assert "Running stage 'eval'" in out and "Running stage 'sft'" not in out
    gate = json.loads((project / "metrics/gate.json").read_text())
    assert gate["champion"]["version"] == "1"
    assert any(c["check"] == "regression vs champion" for c in gate["checks"])

    # A new candidate is promoted as version 2; version 1 stays registered.
    _set_gate(project, min_task_gain=0.0, general_tolerance={"general_loss": 100.0},
              champion_tolerance={"task_loss": 100.0})
    run([sys.executable, "-m", "dvc", "repro"], project)
    params = (project / "params.yaml").read_text()
    (project / "params.yaml").write_text(params.replace("max_steps: 4", "max_steps: 5", 1))
    run([sys.executable, "-m", "dvc", "repro"], project)  # a new DPO -> a new merged model
    done = _promote(project)
    assert done.returncode == 0, done.stderr
    assert str(client.get_model_version_by_alias("pedigree", "champion").version) == "2"
    assert {str(v.version) for v in client.search_model_versions("name = 'pedigree'")} == {
        "1", "2"}

    # The judge, through an OpenAI-compatible server on 127.0.0.1 serving the merged model, its
    # key read from the environment (the planted PEDIGREE_API_KEY) and written nowhere.
    champion = json.loads((project / "champion.json").read_text())["champion"]
    tasks = [json.loads(line)["id"] for line in
             (project / "data/eval/task.jsonl").read_text().splitlines()][:16]
    assert sorted(champion["answers"]) == sorted(tasks)
    import yaml

    from tests.judge_server import model_answer, serve

    params = yaml.safe_load((project / "params.yaml").read_text())
    with serve(model_answer(project / "models/merged")) as server:
        params["eval"]["judge"] = {"enabled": True, "endpoint": {
            "url": server["url"], "model": "micro", "api_key_env": "PEDIGREE_API_KEY"}}
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        out = run([sys.executable, "-m", "dvc", "repro"], project)
    assert "Running stage 'eval'" in out and "Running stage 'merge'" not in out
    judged = json.loads((project / "metrics/judge.json").read_text())
    assert judged["judge"]["endpoint"] == server["url"]
    base, champ = judged["against"]["base"], judged["against"]["champion"]
    assert base["n"] == 16 and 0 <= base["win_rate"] <= 1
    assert champ["ties"] == champ["n"] == 16  # the champion is this very model
    assert judged["calibration"]["n"] == 24 and 0 <= judged["calibration"]["agreement"] <= 1
    items = json.loads((project / "metrics/items.json").read_text())
    assert set(items["merged"]["judge_win_rate.base"]) == set(tasks)
    asked = server["requests"]
    assert len(asked) > 0 and {r["authorization"] for r in asked} == {
        "Bearer " + SECRETS["PEDIGREE_API_KEY"]}
    for path in project.rglob("*"):  # what the pipeline wrote (tests/ plants the secrets)
        if path.is_file() and not {".git", "tests"} & set(path.parts) \
                and path.stat().st_size < 50_000_000:
            assert SECRETS["PEDIGREE_API_KEY"].encode() not in path.read_bytes(), path


def test_promote_refuses_when_the_lineage_does_not_audit(promotable):
    _set_gate(promotable, min_task_gain=0.0, general_tolerance={"general_loss": 100.0},
              champion_tolerance={})
    run([sys.executable, "-m", "dvc", "repro"], promotable)
    _flip_byte(promotable / "models/sft/adapter_model.safetensors")
    proc = _promote(promotable)
    assert proc.returncode == 1
    assert "refused: the lineage audit failed" in proc.stderr
    assert "models/sft/adapter_model.safetensors" in proc.stderr


def test_queued_grid_and_report_compare(project):
    """`dvc exp run --queue` with a 2x1 grid (method x learning rate; two experiments keep
    `make test` inside its time budget), `dvc queue start`, then the method table."""
    commit(project, "sweep")
    run([sys.executable, "-m", "dvc", "exp", "run", "--queue", "-S", "experiment=micro",
         "-S", "sft=lora,full", "-S", "sft.learning_rate=0.0025"], project)
    run([sys.executable, "-m", "dvc", "queue", "start"], project)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = run([sys.executable, "-m", "dvc", "queue", "status"], project)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(5)
    assert "Failed" not in status and status.count("Success") >= 2, status
    table = run([sys.executable, "-m", "pedigree.cli", "report", "--compare"], project)
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:2] == ["experiment", "sft.method"]
    for column in ("task gain", "general loss change", "trainable params", "train s",
                   "peak RSS GiB", "gate"):
        assert column in header
    grid = {(row.split("|")[2].strip(), row.split("|")[3].strip()) for row in lines[1:]}
    assert {("lora", "0.0025"), ("full", "0.0025")} <= grid
    full = next(r for r in lines[1:] if r.split("|")[2].strip() == "full")
    lora = next(r for r in lines[1:] if r.split("|")[2].strip() == "lora")
    params = header.index("trainable params") + 1
    count = lambda row: int(row.split("|")[params].strip().replace(",", ""))
    assert count(full) > count(lora)  # full fine-tuning trains every weight
    # Queued experiments run in temporary copies but log to the project's own MLflow store.
    import sqlite3

    with sqlite3.connect(project / "mlflow.db") as con:
        names = {row[0] for row in con.execute(
            "SELECT value FROM tags WHERE key = 'pedigree.dvc_experiment'")}
    assert len(names) >= 2, names


def test_pedigree_sweep_grid_returns_the_best(project):
    """`pedigree sweep -m`: a Hydra multirun, each job a DVC experiment in its own temporary
    workspace, upstream stages reused, the objective returned, the best one printed (a 2x1 grid:
    the product of two axes with two jobs, inside `make test`'s time budget)."""
    commit(project, "grid")
    out = run([sys.executable, "-m", "pedigree.cli", "sweep", "-m", "experiment=micro",
               "sft.lora.r=4,8", "sft.learning_rate=0.003"], project)
    sweep = out.split("[sweep] ")[1].split(":")[0]
    jobs = [json.loads(p.read_text()) for p in sorted((project / "sweeps" / sweep).glob("job-*"))]
    assert len(jobs) == 2 and {tuple(j["overrides"][1:]) for j in jobs} == {
        (f"sft.lora.r={r}", "sft.learning_rate=0.003") for r in (4, 8)}
    best = min(jobs, key=lambda j: j["value"])
    assert f"best: {best['experiment']}" in out and f"dvc exp apply {best['experiment']}" in out
    shown = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], project)
    assert all(j["experiment"] in shown for j in jobs)
    # The workspace was not touched, and MLflow has the jobs' SFT runs tagged with the sweep.
    assert "sft.lora.r=4" not in (project / "params.yaml").read_text()
    import sqlite3

    with sqlite3.connect(project / "mlflow.db") as con:
        stages = [row[0] for row in con.execute(
            "SELECT s.value FROM tags t JOIN tags s ON s.run_uuid = t.run_uuid "
            "WHERE t.key = 'pedigree.sweep' AND t.value = ? AND s.key = 'pedigree.stage'",
            (sweep,))]
    assert stages.count("sft") == 2 and "base" not in stages and "curate" not in stages

    # The same sweep again resumes: finished jobs are read back; a job whose record is missing
    # (as when a run is killed after its experiment landed) has its experiment replaced.
    (project / "sweeps" / sweep / "job-1.json").unlink()
    again = run([sys.executable, "-m", "pedigree.cli", "sweep", "-m", "experiment=micro",
                 "sft.lora.r=4,8", "sft.learning_rate=0.003"], project)
    assert again.count("(finished in an earlier run of this sweep)") == 1, again
    rerun = json.loads((project / "sweeps" / sweep / "job-1.json").read_text())
    assert rerun == jobs[1]  # deterministic training: the same objective
    assert f"best: {best['experiment']}" in again


# --- new base models: base check and rebase, offline against a local "hub" -----------------

def _hub_snapshot(mirror: Path, repo_id: str, revision: str, pretrain_steps: int) -> Path:
    """A revision of a micro model in a Hugging Face cache layout (what snapshot_download reads
    offline), and refs/main pointing at it."""
    from pedigree.train.tiny import build_tiny
    from tests.conftest import micro_build_config

    repo = mirror / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    build_tiny(micro_build_config(pretrain_steps=pretrain_steps), seed=0, out_dir=snapshot)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


LOOSE_GATE = ["gate.min_task_gain=0.0", "gate.general_tolerance.general_loss=100.0",
              "gate.general_tolerance.general_task_score=1.0"]


def test_base_check_and_rebase_onto_a_new_revision(project, tmp_path, monkeypatch):
    mirror = tmp_path / "hub"
    rev1, rev2 = "1" * 40, "2" * 40
    first = _hub_snapshot(mirror, "pedigree/micro-hub", rev1, pretrain_steps=20)
    monkeypatch.setenv("HF_HUB_CACHE", str(mirror))  # env() passes it to every command
    (project / "conf/model/hubmicro.yaml").write_text(
        "name: hubmicro\nsource: hub\nid: pedigree/micro-hub\n"
        f"revision: '{rev1}'\npath: null\ntrust_remote_code: false\nbuild: null\n")
    commit(project, "hub")
    cli = [sys.executable, "-m", "pedigree.cli"]
    check = subprocess.run(cli + ["base", "check", "--format", "json"], cwd=project, env=env(),
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)[0]["changed"] is False

    # The pipeline on the pinned revision, promoted to champion.
    # The micro preset's training settings; its model.build is the embedded model's, not this one's.
    sets = [a for o in ["experiment=micro", "model.build=null", *LOOSE_GATE]
            for a in ("--set", o)]
    out = run(cli + ["rebase", "hubmicro", "--promote", *sets], project)
    assert "re-ran: base" in out and "no champion yet" in out
    champion = json.loads((project / "champion.json").read_text())["champion"]
    assert champion["roots"]["base_model"]["revision"] == rev1

    # A second revision appears: more pretraining, the same tokenizer.
    second = _hub_snapshot(mirror, "pedigree/micro-hub", rev2, pretrain_steps=25)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    check = subprocess.run(cli + ["base", "check"], cwd=project, env=env(),
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 10, check.stderr
    assert f"hubmicro: pedigree/micro-hub has a newer revision: {rev1[:12]} -> {rev2}" in \
        check.stdout
    assert "modified: model.safetensors" in check.stdout
    assert f"pedigree rebase hubmicro --revision {rev2}" in check.stdout

    out = run(cli + ["rebase", "hubmicro", "--revision", rev2, *sets], project)
    ran = out.split("[rebase] re-ran: ")[1].splitlines()[0]
    reused = out.split("[rebase] reused: ")[1].splitlines()[0]
    assert "base" in ran and "sft" in ran and "eval" in ran
    assert "curate" in reused and "split" in reused  # the same tokenizer: curation reused
    assert "| metric | base | champion | candidate | gate |" in out
    assert f"champion: 'pedigree' version {champion['version']}" in out
    gate = json.loads((project / "metrics/gate.json").read_text())
    assert any(c["check"] == "regression vs champion" for c in gate["checks"])
    assert manifest(project, "base")["roots"]["base_model"]["revision"] == rev2
    # A schedule runs the same rebase again until the pin moves: the experiment of that name
    # is replaced (DVC refuses a name that exists), and nothing changed, so nothing re-runs.
    again = run(cli + ["rebase", "hubmicro", "--revision", rev2, *sets], project)
    assert "[rebase] re-ran: nothing" in again, again[-3000:]
    assert "| metric | base | champion | candidate | gate |" in again


def test_continued_pretraining_runs_under_the_whole_dag(tmp_path):
    """cpt.enabled with the sample's domain text in data/raw: curated as documents, the cpt
    stage trains, and every stage after it sits on models/cpt (SFT starts from it, merge folds
    onto it with parity, eval adds its row, gguf-lora ships it as the GGUF base under the
    adapters), with the lineage and audit intact."""
    root = new_project(tmp_path / "cpt", "cpt.enabled=true", "cpt.max_steps=4",
                       "cpt.block_size=64", "cpt.eval_steps=4", "cpt.learning_rate=3e-3",
                       "quantize.formats=[gguf-q8_0,gguf-lora]")
    shutil.copy2(root / "data/text/domain.txt", root / "data/raw/domain.txt")
    commit(root, "domain text")
    run([sys.executable, "-m", "dvc", "repro"], root)
    assert json.loads((root / "data/curated/report.json").read_text())["kept_text_rows"] == 144
    cpt = json.loads((root / "models/cpt/metrics.json").read_text())
    assert cpt["val_loss"] < cpt["val_loss_base"]
    assert manifest(root, "sft")["details"]["start_model"] == "models/cpt"
    assert "cpt" in {u["stage"] for u in manifest(root, "merge")["upstream"]} or \
        "cpt" in {u["stage"] for u in manifest(root, "align")["upstream"]}
    parity = json.loads((root / "models/merged/parity.json").read_text())
    assert parity["max_abs_logit_diff"] <= 1e-4  # the adapters fold onto models/cpt
    evals = json.loads((root / "metrics/eval.json").read_text())
    assert evals["cpt"]["task_loss"] != evals["base"]["task_loss"]
    lora = json.loads((root / "models/quantized/report.json").read_text())["gguf-lora"]
    assert lora["base"] == "models/cpt" and lora["chain"] == ["models/sft", "models/align"]
    assert lora["passed"] and lora["size_bytes"] == lora["base_bytes"] + lora["adapter_bytes"]
    assert lora["peft"]["top1_agreement"] >= 0.95 and lora["template_parity"]["passed"]
    card = (root / "models/quantized/gguf-lora/README.md").read_text()
    assert "--lora adapter-F32.gguf" in card and "--lora-modules my-model=./peft" in card
    assert abs(evals["gguf-lora"]["task_loss"] - evals["merged"]["task_loss"]) < 0.01
    assert {"cpt", "sft", "align", "merge"} <= {u["stage"] for u in manifest(root, "quantize")[
        "upstream"]}
    run([sys.executable, "-m", "pedigree.cli", "audit", "--no-mlflow"], root)

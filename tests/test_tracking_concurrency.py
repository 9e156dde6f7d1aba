"""The default SQLite store: eight processes logging stage runs at once all land; a process
killed while creating the store leaves none half-made."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.manifests import logged_manifest

WRITERS = 8


def _log(i: int, root: str, barrier) -> None:
    from pedigree import tracking

    barrier.wait()  # all eight start writing together, onto a store that does not exist yet
    tracking.log_stage_run(
        root=Path(root), experiment="concurrent", manifest=logged_manifest(i),
        output_path=f"out{i}", metrics={"val_loss": 1.0 + i},
        history=[(s, {"loss": 2.0 - s / 10}) for s in range(5)],
        datasets={"data/split": "u" * 64}, artifacts=[])


def test_eight_writers_at_once_all_land(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_log, args=(i, str(tmp_path), barrier)) for i in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * WRITERS

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("concurrent")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == WRITERS
    for run in runs:
        i = int(run.data.tags["pedigree.stage"].removeprefix("stage"))
        assert run.data.tags["pedigree.outputs_sha256"] == f"{i:x}" * 64
        assert run.data.params == {"sft.learning_rate": str(0.001 * (i + 1)),
                                   "sft.lora.r": str(i + 1)}
        assert run.data.metrics["val_loss"] == 1.0 + i
        assert len(client.get_metric_history(run.info.run_id, "loss")) == 5


# Runs in a child: MLflow's schema migrations stop halfway and the process is SIGKILLed there.
_KILLED_MIDWAY = """
import os, signal, sys
from pathlib import Path
import mlflow.store.db.utils as db_utils
from alembic import command
from alembic.script import ScriptDirectory
from pedigree import tracking
from tests.manifests import logged_manifest

def upgrade_halfway_then_die(engine):
    config = db_utils._get_alembic_config(str(engine.url))
    revisions = list(ScriptDirectory.from_config(config).walk_revisions())  # head first
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revisions[len(revisions) // 2].revision)
    os.kill(os.getpid(), signal.SIGKILL)

db_utils._upgrade_db = upgrade_halfway_then_die
tracking.log_stage_run(root=Path(sys.argv[1]), experiment="killed", manifest=logged_manifest(0),
                       output_path="out0", metrics={}, history=[], datasets={}, artifacts=[])
"""


def test_a_kill_while_creating_the_store_leaves_no_half_made_store(tmp_path, monkeypatch):
    import mlflow

    from pedigree import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    killed = subprocess.run([sys.executable, "-c", _KILLED_MIDWAY, str(tmp_path)], env=env, check=False,
                            cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (tmp_path / "mlflow.db").exists()  # the half-migrated schema stayed aside
    assert list(tmp_path.glob("mlflow.db.partial*"))

    run_id = tracking.log_stage_run(
        root=tmp_path, experiment="killed", manifest=logged_manifest(1), output_path="out1",
        metrics={"val_loss": 2.0}, history=[], datasets={}, artifacts=[])
    assert not list(tmp_path.glob("mlflow.db.partial*"))  # the stray creation was cleared
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(run_id).data.metrics == {"val_loss": 2.0}
    assert tracking.runs_for_output(tmp_path, logged_manifest(1)["outputs_sha256"]) == [run_id]

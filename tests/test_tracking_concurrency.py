"""Eight processes logging stage runs to the default SQLite store at once: all complete."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

WRITERS = 8


def _log(i: int, root: str, barrier) -> None:
    from pedigree import tracking

    manifest = {
        "stage": f"stage{i}", "outputs_sha256": f"{i:x}" * 64, "params_sha256": "p" * 64,
        "roots": {"data_sha256": "d" * 64, "base_model": None},
        "code": {"git_commit": None, "source_sha256": "s" * 64}, "upstream": [],
        "params": {"sft": {"learning_rate": 0.001 * (i + 1), "lora": {"r": i + 1}}},
    }
    barrier.wait()  # all eight start writing together, onto a store that does not exist yet
    tracking.log_stage_run(
        root=Path(root), experiment="concurrent", manifest=manifest, output_path=f"out{i}",
        metrics={"val_loss": 1.0 + i}, history=[(s, {"loss": 2.0 - s / 10}) for s in range(5)],
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

"""MLflow: one run per stage execution, tagged so that runs and artifacts find each other.

Default store: SQLite at the repository root, by absolute path, so every process (and every queued
DVC experiment) logs to the same place; `MLFLOW_TRACKING_URI` points at a team server instead.
Weights are referenced by hash in tags, never copied into the artifact store.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from pedigree import lineage

TAG_PREFIX = "pedigree."
SWEEP_ENV = "PEDIGREE_SWEEP_ID"  # set by `pedigree sweep` in its jobs: tags their runs
# MLflow keeps dataset digests in a 36-character column; 32 hex of the sha256 fit (128 bits).
DIGEST_CHARS = 32
_PARAM_VALUE_LIMIT = 6000  # characters MLflow accepts per param value


def store_root(root: Path) -> Path:
    """Where the default store lives: the repository, also for a queued DVC experiment, which
    runs in a temporary copy with DVC_ROOT pointing at the repository it came from."""
    return Path(os.environ.get("DVC_ROOT") or root)


def tracking_uri(root: Path) -> str:
    default = f"sqlite:///{(store_root(root) / 'mlflow.db').resolve()}"
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def runs_for_output(root: Path, outputs_sha256: str) -> list[str]:
    """Ids of the active runs tagged with an artifact's hash, oldest first. The default SQLite
    store is read directly (no MLflow import: `pedigree lineage` answers at once); any other
    store goes through the MLflow client."""
    uri = tracking_uri(root)
    key = TAG_PREFIX + "outputs_sha256"
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            return []
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            rows = con.execute(
                "SELECT r.run_uuid FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = ? AND t.value = ? AND r.lifecycle_stage = 'active' "
                "ORDER BY r.start_time", (key, outputs_sha256)).fetchall()
        return [row[0] for row in rows]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, f"tags.`{key}` = '{outputs_sha256}'")
    return [run.info.run_id for run in sorted(runs, key=lambda r: r.info.start_time)]


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as dotted keys with JSON-ish string values, the way MLflow stores them."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = text[:_PARAM_VALUE_LIMIT]
    return flat


def stage_tags(manifest: dict[str, Any], output_path: str) -> dict[str, str]:
    """The tags that tie a run to its artifact, its roots, its code and its upstream runs."""
    roots = manifest["roots"]
    base = roots.get("base_model") or {}
    tags = {
        "stage": manifest["stage"],
        "output_path": output_path,
        "outputs_sha256": manifest["outputs_sha256"],
        "params_sha256": manifest["params_sha256"],
        "data_sha256": roots.get("data_sha256") or "none",
        "base_model.id": base.get("id") or "none",
        "base_model.revision": base.get("revision") or "none",
        "base_model.sha256": base.get("sha256") or "none",
        **({"base_model.gguf_sha256": base["gguf"]["file_sha256"],
            "base_model.gguf_quantization": base["gguf"]["quantization"],
            "base_model.gguf_origin": lineage.gguf_origin(base["gguf"])}
           if base.get("gguf") else {}),
        "git_commit": manifest["code"]["git_commit"] or "none",
        "code_sha256": manifest["code"]["source_sha256"],
    }
    for up in manifest["upstream"]:
        tags[f"upstream.{up['stage']}"] = up["outputs_sha256"]
    if os.environ.get("DVC_EXP_NAME"):  # a DVC experiment (`dvc exp run`, queued or not)
        tags["dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    if os.environ.get(SWEEP_ENV):  # a job of `pedigree sweep`
        tags["sweep"] = os.environ[SWEEP_ENV]
    out = {TAG_PREFIX + k: v for k, v in tags.items()}
    if manifest["code"]["git_commit"]:
        out["mlflow.source.git.commit"] = manifest["code"]["git_commit"]
    return out


@contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """Exclusive use of the default SQLite store across processes (parallel DVC experiments,
    sweep jobs), created complete if missing: SQLite allows one writer, and MLflow creating or
    migrating the schema from two processes at once fails ("duplicate column name"). A server
    store needs no lock."""
    uri = tracking_uri(root)
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///"))
    lock = db.with_name(db.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # blocks until the other writer is done
        try:
            _create_store(db)
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_store(db: Path) -> None:
    """Create the SQLite store, if missing, beside its path and rename it into place complete.

    MLflow builds its schema in dozens of migrations that pysqlite commits one by one: a process
    killed among them leaves a store MLflow can never open again ("table guardrails already
    exists"). Built aside, a killed creation leaves only a stray file, removed here next time.
    Called under the store lock, so no other process is creating it."""
    if db.is_file():
        return
    from mlflow.store.db.utils import _initialize_tables, create_sqlalchemy_engine

    partial = db.with_name(db.name + ".partial")
    for stale in db.parent.glob(partial.name + "*"):  # and its -journal, from a killed creation
        stale.unlink()
    engine = create_sqlalchemy_engine(f"sqlite:///{partial}")
    try:
        _initialize_tables(engine)  # what MLflow's store does on an empty database
    finally:
        engine.dispose()
    os.replace(partial, db)


def log_stage_run(
    *,
    root: Path,
    experiment: str,
    manifest: dict[str, Any],
    output_path: str,
    metrics: dict[str, float],
    history: list[tuple[int, dict[str, float]]],
    datasets: dict[str, str],
    artifacts: list[Path],
) -> str:
    """Record one finished stage as an MLflow run; returns the run id.

    `datasets` maps an input path to its content hash; `history` holds (step, metrics) pairs for
    training curves; `artifacts` are small files (manifest, reports, adapters) to attach.
    """
    with store_lock(root):
        return _log_stage_run(root, experiment, manifest, output_path, metrics, history,
                              datasets, artifacts)


def _log_stage_run(root, experiment, manifest, output_path, metrics, history, datasets,
                   artifacts) -> str:
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    mlflow.set_tracking_uri(tracking_uri(root))
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        # Without an explicit location, artifacts land in ./mlruns of whatever the cwd is.
        location = (store_root(root) / "mlartifacts").resolve().as_uri()
        if os.environ.get("MLFLOW_TRACKING_URI"):
            location = None  # a server decides where its artifacts go
        mlflow.create_experiment(experiment, artifact_location=location)
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name=manifest["stage"]) as run:
        mlflow.set_tags(stage_tags(manifest, output_path))
        # Link to the runs that made this stage's inputs: the latest run tagged with each
        # upstream output's hash (the UI shows them as tags on this run).
        for up in manifest["upstream"]:
            made_by = runs_for_output(root, up["outputs_sha256"])
            if made_by:
                mlflow.set_tag(f"{TAG_PREFIX}upstream_run.{up['stage']}", made_by[-1])
        mlflow.log_params(flatten(manifest["params"]))
        if metrics:
            mlflow.log_metrics(metrics)
        for step, values in history:
            mlflow.log_metrics(values, step=step)
        for path, digest in datasets.items():
            source = LocalArtifactDatasetSource(str((root / path).resolve()))
            dataset = MetaDataset(source, name=path, digest=digest[:DIGEST_CHARS])
            mlflow.log_input(dataset, context=manifest["stage"])
        for artifact in artifacts:
            mlflow.log_artifact(str(artifact))
        return run.info.run_id

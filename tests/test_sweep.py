"""`pedigree sweep`: presets compose, the objective is read back, the best job is picked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pedigree.errors import PedigreeError
from pedigree.sweep import best, objective_value, sweep_id

REPO = Path(__file__).resolve().parents[1]


def _hydra_cfg(*overrides: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "pedigree.sweep", "--config-dir", str(REPO / "conf"),
         "--config-name", "config", "--cfg", "hydra", *overrides],
        capture_output=True, text=True, check=True, timeout=120).stdout


@pytest.mark.parametrize("overrides, targets", [
    (["hydra/sweeper=tpe"], ["hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
                             "optuna.samplers.TPESampler"]),
    (["hydra/launcher=local"], ["core_plugins.basic_launcher.BasicLauncher"]),
    (["hydra/launcher=parallel"], ["hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                                   "n_jobs: 2"]),
    (["hydra/launcher=slurm"], ["hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
                                "timeout_min: 240"]),
])
def test_presets_compose_with_their_plugins(overrides, targets):
    cfg = _hydra_cfg(*overrides)
    for target in targets:
        assert target in cfg, (overrides, target)


def _shown(name: str, val_loss: float | None) -> list[dict]:
    metrics = {} if val_loss is None else {
        "models/sft/metrics.json": {"data": {"val_loss": val_loss}},
        "metrics/summary.json": {"data": {"sft": {"task_gain": 2.5}}}}
    return [{"rev": "workspace", "name": None, "data": {"metrics": {}}, "experiments": None},
            {"rev": "a" * 40, "name": "main", "data": {"metrics": {}}, "experiments": [
                {"revs": [{"rev": "b" * 40, "name": name, "data": {"metrics": metrics},
                           "experiments": None}]}]}]


def test_objective_is_read_from_the_experiment():
    shown = _shown("sweep-1-0", 2.25)
    assert objective_value(shown, "sweep-1-0", "models/sft/metrics.json:val_loss") == 2.25
    assert objective_value(shown, "sweep-1-0", "metrics/summary.json:sft.task_gain") == 2.5
    with pytest.raises(PedigreeError, match="no val_loss in metrics/eval.json"):
        objective_value(shown, "sweep-1-0", "metrics/eval.json:val_loss")
    with pytest.raises(PedigreeError, match="experiment sweep-1-9 not found"):
        objective_value(shown, "sweep-1-9", "models/sft/metrics.json:val_loss")


def test_best_and_sweep_id():
    results = [{"value": 2.0, "job": 0}, {"value": 1.5, "job": 1}, {"value": 3.0, "job": 2}]
    assert best(results, "minimize")["job"] == 1 and best(results, "maximize")["job"] == 2
    assert sweep_id(["-m", "a=1,2"], "c" * 40) == sweep_id(["-m", "a=1,2"], "c" * 40)
    assert sweep_id(["-m", "a=1,2"], "c" * 40) != sweep_id(["-m", "a=1,3"], "c" * 40)


def test_cli_takes_hydra_spelling():
    from pedigree.cli import build_parser

    args = build_parser().parse_args(["sweep", "-m", "experiment=micro", "sft.lora.r=4,8",
                                      "hydra/sweeper=tpe"])
    assert args.overrides == ["experiment=micro", "sft.lora.r=4,8", "hydra/sweeper=tpe"]
    assert args.objective == "models/sft/metrics.json:val_loss"

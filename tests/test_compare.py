"""`pedigree report --compare`: the method table from `dvc exp show --json` output."""

from __future__ import annotations

import pytest

from pedigree.compare import experiment_rows, table
from pedigree.errors import PedigreeError


def _rev(rev: str, name: str | None, method: str | None, lr: float, gain: float | None,
         trainable: int, seconds: float, passed: int = 0) -> dict:
    metrics = {}
    if gain is not None:  # an experiment still queued has no metrics yet
        metrics = {
            "metrics/summary.json": {"data": {"gate_passed": passed, "sft": {
                "task_gain": gain, "task_score_gain": 0.0, "general_loss_change": 1.5,
                "general_task_score_change": -0.25, "general_chat_score_change": -0.1}}},
            "models/sft/metrics.json": {"data": {"trainable_params": float(trainable),
                                                 "saved_weights_bytes": 4.0 * trainable}},
            "perf/sft.json": {"data": {"seconds": seconds, "peak_rss_gib": 0.81}},
        }
    params = {"params.yaml": {"data": {"sft": {"method": method, "learning_rate": lr,
                                               "max_steps": 150}, "seed": 42}}}
    return {"rev": rev, "name": name, "error": None, "experiments": None,
            "data": {"rev": rev, "params": params, "metrics": metrics}}


def _shown() -> list[dict]:
    baseline = _rev("531c5c52" + "0" * 32, "main", "lora", 2e-3, 7.5, 311296, 36.0)
    baseline["experiments"] = [
        {"name": "olden-baby", "executor": None,
         "revs": [_rev("a" * 40, "olden-baby", "full", 3e-4, 6.9, 3_400_000, 40.2, 1)]},
        {"name": "queued-one", "executor": "workspace",
         "revs": [_rev("b" * 40, "queued-one", "dora", 2e-3, None, 0, 0)]},
        # still running: DVC shows it with the workspace's (stale) metrics
        {"name": "running-one", "executor": {"state": "running", "name": "tempdir"},
         "revs": [_rev("d" * 40, "running-one", "loha", 2e-3, 7.5, 311296, 36.0)]},
        {"name": "soft-one", "executor": None,
         "revs": [_rev("c" * 40, "soft-one", "prompt_tuning", 2e-3, 1.0, 9216, 20.0)]},
    ]
    return [_rev("workspace", None, "lora", 2e-3, 7.5, 311296, 36.0), baseline]


def test_rows_come_from_every_finished_experiment():
    rows = experiment_rows(_shown())
    assert [r["name"] for r in rows] == ["workspace", "main", "olden-baby", "soft-one"]
    assert rows[2]["params"]["sft.method"] == "full" and rows[2]["perf"]["seconds"] == 40.2


def test_table_has_the_varied_params_and_every_figure():
    text = table(experiment_rows(_shown()))
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["experiment", "sft.method", "sft.learning_rate"]  # what differs
    assert "sft.max_steps" not in header and "seed" not in header  # what does not
    full = [c.strip() for c in lines[-2].strip("|").split("|")]
    assert full[:3] == ["olden-baby", "full", "0.0003"]
    values = dict(zip(header, full, strict=True))
    assert values["task gain"] == "+6.900" and values["trainable params"] == "3,400,000"
    assert values["general loss change"] == "+1.500" and values["gate"] == "pass"
    assert values["train s"] == "40.2" and values["general chat change"] == "-0.100"
    assert values["saved MB"] == "13.60" and values["merges"] == "yes"
    soft = dict(zip(header, [c.strip() for c in lines[-1].strip("|").split("|")], strict=True))
    assert soft["merges"] == "no" and soft["saved MB"] == "0.04"  # beside the base, kilobytes
    assert "forgot" in text  # the legend says how to read the signs


def test_no_results_is_a_clear_error():
    with pytest.raises(PedigreeError, match="no experiment has eval results yet"):
        table(experiment_rows([_rev("workspace", None, "lora", 2e-3, None, 0, 0)]))

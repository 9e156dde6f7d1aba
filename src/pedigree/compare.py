"""`pedigree report --compare`: DVC experiments side by side, one row per experiment.

Reads `dvc exp show --json` (the workspace, HEAD and every experiment on it, queued runs
included once they finished), and for each: the SFT method and the params that differ between
experiments, the SFT model's task gain and general-probe change over the base
(metrics/summary.json), its trainable parameters (models/sft/metrics.json), training time and
peak memory (perf/sft.json), and whether the promotion gate passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pedigree.errors import PedigreeError
from pedigree.tracking import flatten


def _sft(key: str):
    return lambda r: r["summary"].get("sft", {}).get(key)


# (header, getter on an experiment row, format): "signed" for gains and changes.
COLUMNS = (
    ("task gain", _sft("task_gain"), "signed"),
    ("task score gain", _sft("task_score_gain"), "signed"),
    ("general loss change", _sft("general_loss_change"), "signed"),
    ("general task change", _sft("general_task_score_change"), "signed"),
    ("trainable params", lambda r: r["sft"].get("trainable_params"), "count"),
    ("train s", lambda r: r["perf"].get("seconds"), "{:.1f}"),
    ("peak RSS GiB", lambda r: r["perf"].get("peak_rss_gib"), "{:.2f}"),
    ("gate", lambda r: {1: "pass", 0: "fail"}.get(r["summary"].get("gate_passed")), "{}"),
)


def experiment_nodes(entries: list[dict[str, Any]]):
    """Every revision in `dvc exp show --json` output: baselines and their experiments."""
    for entry in entries:
        yield entry
        for group in entry.get("experiments") or []:
            yield from experiment_nodes(group.get("revs") or [])


def file_contents(section: dict[str, Any] | None) -> dict[str, Any]:
    return {path: (value or {}).get("data") or {} for path, value in (section or {}).items()}


def experiment_rows(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows, seen = [], set()
    for node in experiment_nodes(shown):
        data = node.get("data") or {}
        metrics = file_contents(data.get("metrics"))
        if not metrics.get("metrics/summary.json") or node.get("error"):
            continue  # not run yet, failed, or from before the evals wrote a summary
        name = node.get("name") or node.get("rev", "?")[:7]
        if node.get("rev") == "workspace":
            name = "workspace"
        key = (name, json.dumps(metrics, sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        rows.append({
            "name": name,
            "params": flatten(file_contents(data.get("params")).get("params.yaml", {})),
            "summary": metrics["metrics/summary.json"],
            "sft": metrics.get("models/sft/metrics.json", {}),
            "perf": metrics.get("perf/sft.json", {}),
        })
    return rows


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "signed":
        return f"{value:+.3f}"
    if fmt == "count":
        return f"{value:,.0f}"
    return fmt.format(value)


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table; the params that differ between experiments become columns."""
    if not rows:
        raise PedigreeError("no experiment has eval results yet: run `dvc exp run` "
                            "(or `dvc exp run --queue ...` and `dvc queue start`) first")
    keys = sorted({k for r in rows for k in r["params"]})
    # sft.partial and sft.quant are settings of one method each: they differ between methods
    # only because each method's conf file sets its own, and the method column says it.
    varied = [k for k in keys if len({r["params"].get(k) for r in rows}) > 1
              and not k.startswith(("sft.partial", "sft.quant"))]
    varied = ["sft.method", *(k for k in varied if k != "sft.method")]  # the method first
    header = ["experiment", *varied, *(name for name, _, _ in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["name"], *(r["params"].get(k, "-") for k in varied),
                 *(_cell(get(r), fmt) for _, get, fmt in COLUMNS)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    notes = ("task gain: the SFT model's gain over the base on gate.task_metric (positive = "
             "better); general loss change: nats/token on general text vs the base (positive = "
             "forgot); general task change: cloze prompts the base completes (negative = forgot)")
    return "\n".join(lines) + "\n\n" + notes + "\n"


def show_experiments(root: Path) -> list[dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=root,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise PedigreeError(f"dvc exp show failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def has_experiment(shown: list[dict[str, Any]], name: str) -> bool:
    return any(node.get("name") == name for node in experiment_nodes(shown))


def remove_experiment(root: Path, name: str) -> None:
    """Drop an experiment so a run of the same name can take its place (DVC refuses a name that
    exists on the same commit)."""
    done = subprocess.run([sys.executable, "-m", "dvc", "exp", "remove", name], cwd=root,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise PedigreeError(f"dvc exp remove {name} failed: {done.stderr.strip()}")


def compare(root: Path) -> str:
    return table(experiment_rows(show_experiments(root)))

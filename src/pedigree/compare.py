"""`pedigree report --compare`: DVC experiments side by side, one row per experiment.

Reads `dvc exp show --json` (the workspace, HEAD and every experiment on it, queued runs
included once they finished), and for each: the SFT method and the params that differ between
experiments, the SFT model's task gain and general-probe change over the base and the
candidate's gain over the best prompted baseline (metrics/summary.json), its trainable parameters and the size of what it saved
(models/sft/metrics.json), whether it folds into the base, training time and peak memory
(perf/sft.json), and whether the promotion gate passed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pedigree.config import SOFT_PROMPT_METHODS
from pedigree.errors import PedigreeError
from pedigree.experiments import experiment_nodes, node_metrics, node_params, show_experiments
from pedigree.perf import PERF_FILE
from pedigree.pipeline import stage_out
from pedigree.tracking import flatten


def _sft(key: str):
    return lambda r: r["summary"].get("sft", {}).get(key)


def _saved_mb(row: dict[str, Any]) -> float | None:
    size = row["sft"].get("saved_weights_bytes")
    return None if size is None else size / 1e6


def _merges(row: dict[str, Any]) -> str | None:
    """Whether merge folds the method into the base weights; a soft prompt ships beside it."""
    method = row["params"].get("sft.method")
    return None if method is None else ("no" if method in SOFT_PROMPT_METHODS else "yes")


# (header, getter on an experiment row, format): "signed" for gains and changes.
COLUMNS = (
    ("task gain", _sft("task_gain"), "signed"),
    ("task score gain", _sft("task_score_gain"), "signed"),
    ("gain over prompting", lambda r: r["summary"].get("task_gain_over_prompting"), "signed"),
    ("general loss change", _sft("general_loss_change"), "signed"),
    ("general task change", _sft("general_task_score_change"), "signed"),
    ("general chat change", _sft("general_chat_score_change"), "signed"),
    ("trainable params", lambda r: r["sft"].get("trainable_params"), "count"),
    ("saved MB", _saved_mb, "{:.2f}"),
    ("merges", _merges, "{}"),
    ("train s", lambda r: r["perf"].get("seconds"), "{:.1f}"),
    ("peak RSS GiB", lambda r: r["perf"].get("peak_rss_gib"), "{:.2f}"),
    ("gate", lambda r: {1: "pass", 0: "fail"}.get(r["summary"].get("gate_passed")), "{}"),
)


def experiment_rows(shown: list[dict[str, Any]], root: Path = Path(".")) -> list[dict[str, Any]]:
    # The metrics files as `dvc exp show` keys them: paths inside the stage outputs.
    summary = f"{stage_out('eval', root).as_posix()}/summary.json"
    sft = f"{stage_out('sft', root).as_posix()}/metrics.json"
    rows, seen = [], set()
    for node in experiment_nodes(shown, finished=True):
        metrics = node_metrics(node)
        if not metrics.get(summary) or node.get("error"):
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
            "params": flatten(node_params(node)),
            "summary": metrics[summary],
            "sft": metrics.get(sft, {}),
            "perf": metrics.get(PERF_FILE.format(stage="sft"), {}),
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
             "better); gain over prompting: the candidate's over the best prompted baseline (the gate's "
             "check); general loss change: nats/token on general text vs the base (positive = "
             "forgot); general task change: cloze prompts the base completes (negative = forgot); "
             "general chat change: chat questions the base answers (negative = forgot); saved "
             "MB: the SFT output's weights on disk (the adapter; every trained weight for "
             "partial and full); merges: whether merge folds it into the base (a soft prompt "
             "ships beside it)")
    return "\n".join(lines) + "\n\n" + notes + "\n"


def compare(root: Path) -> str:
    return table(experiment_rows(show_experiments(root), root))

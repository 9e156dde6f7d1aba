"""What the eval stage writes into metrics/: the files `dvc metrics`, `dvc plots`, the report
and `pedigree promote` read. Written with sorted keys, so equal results are equal bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pedigree.eval_metrics import DVC_PLOTS
from pedigree.evals.gate import higher_is_better
from pedigree.records import Gate, write_gate

# One chart each in `dvc plots show` (metrics/plots/<metric>.json), when the models report it:
# the metrics the registry (eval_metrics.py) marks dvc_plot.
PLOTTED = DVC_PLOTS


def plot_tables(metrics: dict[str, dict[str, float]]) -> dict[str, list[dict[str, Any]]]:
    """{metric: [{"model": name, "value": v}, ...]} in evaluation order, for bar charts."""
    return {m: [{"model": name, "value": values[m]} for name, values in metrics.items()
                if m in values]
            for m in PLOTTED if any(m in values for values in metrics.values())}


def summary(metrics: dict[str, dict[str, float]], gate: Gate) -> dict[str, Any]:
    """Gains over the base per model, positive = better, plus the gate's verdict: the figures
    `dvc exp show` and `pedigree report --compare` put side by side."""
    base, task = metrics["base"], gate["task_metric"]
    sign = 1 if higher_is_better(task, gate.get("lower_is_better", ())) else -1
    out: dict[str, Any] = {"gate_passed": int(gate["passed"])}
    for name in ("cpt", "sft", "aligned", "merged", gate["candidate"]):
        if name not in metrics or name in out:
            continue
        m = metrics[name]
        figures = {"task_gain": sign * (m[task] - base[task]),
                   "task_score_gain": m["task_score"] - base["task_score"],
                   # forgetting: positive = worse than the base on general text
                   "general_loss_change": m["general_loss"] - base["general_loss"]}
        for probe in ("general_task_score", "general_chat_score"):
            if probe in m:
                figures[f"{probe}_change"] = m[probe] - base[probe]
        out[name] = figures
    prompting = next((c for c in gate["checks"] if c["check"] == "gain over prompting"
                      and "difference" in c), None)
    if prompting is not None:  # the candidate against the best prompted baseline
        best = metrics[prompting["reference"]]
        out["prompted"] = {"task_gain": sign * (best[task] - base[task]),
                           "task_score_gain": best["task_score"] - base["task_score"]}
        out["task_gain_over_prompting"] = prompting["difference"]
    for check in gate["checks"]:
        if check["check"] == "judge win rate" and "value" in check:
            out["judge_win_rate_base"] = check["value"]
    return out


def _dump(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def write_outputs(out: Path, *, metrics: dict[str, dict[str, float]],
                  items: dict[str, dict[str, dict[str, float]]], gate: Gate,
                  baselines: dict[str, Any], judged: dict[str, Any] | None) -> None:
    """`baselines`: how each prompted baseline prompted (baselines.json); `judged`: the judge's
    record (judge.json), None when it did not run."""
    (out / "baselines.json").write_text(_dump(baselines))
    if judged is not None:
        (out / "judge.json").write_text(_dump(judged))
    (out / "eval.json").write_text(_dump(metrics))  # {model: {metric: value}}: dvc metrics
    (out / "summary.json").write_text(_dump(summary(metrics, gate)))  # dvc metrics too
    (out / "items.json").write_text(_dump(items))  # {model: {metric: {item id: value}}}
    write_gate(gate, out)
    (out / "plots").mkdir()
    for metric, rows in plot_tables(metrics).items():
        (out / "plots" / f"{metric}.json").write_text(_dump(rows))

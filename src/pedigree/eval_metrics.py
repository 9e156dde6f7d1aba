"""The registry of eval metrics: each metric the eval stage reports per model, its direction and
what it measures, plus the two families of metrics named by pattern.

Every list of metric names is read from here: the config schema (`gate.task_metric`, the gate
tolerances), the gate's direction of comparison (evals/gate.py), the charts `dvc plots show` draws
(evals/outputs.py), the report's charts (report.py) and the tags on a promoted model
(promote.py). No torch here: config.py validates against it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    description: str
    dvc_plot: bool = False  # a bar chart across models in `dvc plots show` (metrics/plots/)
    report_chart: bool = False  # a bar chart across models in `pedigree report`
    promotion_tag: bool = False  # an MLflow tag `pedigree.eval.<name>` on a promoted version


@dataclass(frozen=True)
class Family:
    """Metrics named by a pattern: `prefix` then the parts the pattern names."""

    pattern: str
    prefix: str
    higher_is_better: bool | None  # None: as the metric's own name and declaration say
    description: str


_METRICS = (
    Metric("task_score", True, "greedy answers to data/eval/task.jsonl scored by each row's "
           "`match`", dvc_plot=True, report_chart=True, promotion_tag=True),
    Metric("task_exact_match", True, "the same answers, every row by exact match"),
    Metric("task_normalised_match", True, "the same answers, every row by normalised match"),
    Metric("task_json_valid", True, "the answers that expect JSON: they parse (and validate "
           "against the row's schema)", dvc_plot=True),
    Metric("task_loss", False, "loss (nats/token) of the task rows' reference answers",
           dvc_plot=True, report_chart=True, promotion_tag=True),
    Metric("task_perplexity", False, "exp(task_loss)"),
    Metric("val_loss", False, "completion loss on the held-out SFT rows", dvc_plot=True,
           report_chart=True),
    Metric("val_perplexity", False, "exp(val_loss)"),
    Metric("general_loss", False, "loss on data/eval/general.jsonl: the forgetting probe",
           dvc_plot=True, report_chart=True, promotion_tag=True),
    Metric("general_perplexity", False, "exp(general_loss)"),
    Metric("general_task_score", True, "cloze prompts of data/eval/general_tasks.jsonl the base "
           "model completes", dvc_plot=True, report_chart=True, promotion_tag=True),
    Metric("general_chat_score", True, "questions of data/eval/general_chat.jsonl the instruct "
           "base answers correctly", dvc_plot=True, report_chart=True, promotion_tag=True),
    Metric("pref_accuracy", True, "held-out preference pairs whose chosen answer has the higher "
           "summed log-probability", dvc_plot=True, promotion_tag=True),
)

METRICS: dict[str, Metric] = {m.name: m for m in _METRICS}
NAMES: tuple[str, ...] = tuple(METRICS)

FAMILIES = (
    Family("task_score.<task>", "task_score.", True, "task_score on one task's rows"),
    Family("judge_win_rate.<opponent>", "judge_win_rate.", True,
           "the pairwise judge's verdicts on the task prompts: 1 the candidate's answer is "
           "better, 0.5 a tie, 0 worse, against the base or the champion (eval.judge)"),
    Family("harness.<task>.<metric>", "harness.", None,
           "lm-evaluation-harness: lower is better where the harness declares it, or the name "
           "ends in loss or perplexity"),
)

DVC_PLOTS = tuple(m.name for m in _METRICS if m.dvc_plot)
REPORT_CHARTS = tuple(m.name for m in _METRICS if m.report_chart)
PROMOTION_TAGS = tuple(m.name for m in _METRICS if m.promotion_tag)


def family(name: str) -> Family | None:
    return next((f for f in FAMILIES if name.startswith(f.prefix)), None)


def is_known(name: str) -> bool:
    return name in METRICS or family(name) is not None


def check_known(name: str) -> str:
    """The name, or a ValueError listing the metrics and patterns the registry knows."""
    if not is_known(name):
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(NAMES)}, "
                         + ", ".join(f.pattern for f in FAMILIES))
    return name


def higher_is_better(name: str) -> bool:
    """The registry's direction; for a name it does not fix (harness metrics), lower is better
    when the last part of the name ends in loss or perplexity."""
    if name in METRICS:
        return METRICS[name].higher_is_better
    fam = family(name)
    if fam is not None and fam.higher_is_better is not None:
        return fam.higher_is_better
    return not name.split(".")[-1].endswith(("loss", "perplexity"))

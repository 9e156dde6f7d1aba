"""The promotion gate: is the candidate better than the base, better than the base well prompted,
and no worse than the champion?

Every comparison is paired: the two models' per-item values (task rows, general texts, held-out
pairs) are matched by item id and the difference is the mean of the per-item differences, with
the standard error sd(d) / sqrt(n). Differences are signed so that positive means the candidate
is better. Losses are compared as the mean of per-row mean losses (the items), which can differ
slightly from the token-weighted figure in eval.json.

No torch here: `pedigree promote` reads the result without loading a model.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from pedigree import eval_metrics
from pedigree.config import GateConfig
from pedigree.records import GATE_VERSION, ChampionRef, Gate

Items = dict[str, dict[str, float]]  # metric -> {item id: value}


def higher_is_better(metric: str, lower_is_better: Collection[str] = ()) -> bool:
    """Our own metrics go the way the registry (eval_metrics.py) says; `lower_is_better` names
    the others that are, as lm-evaluation-harness declares them (bits_per_byte, ter, a task's own
    metric)."""
    return metric not in lower_is_better and eval_metrics.higher_is_better(metric)


def paired_difference(metric: str, candidate: Items, reference: Items,
                      lower_is_better: Collection[str] = ()) -> dict[str, Any]:
    """Mean and standard error of (candidate - reference) over the items both have, signed so
    that positive is better."""
    a, b = candidate.get(metric), reference.get(metric)
    if not a or not b:
        missing = "candidate" if not a else "reference"
        return {"metric": metric, "n": 0, "error": f"the {missing} has no {metric}"}
    sign = 1.0 if higher_is_better(metric, lower_is_better) else -1.0
    diffs = [sign * (a[i] - b[i]) for i in sorted(set(a) & set(b))
             if not (math.isnan(a[i]) or math.isnan(b[i]))]
    n = len(diffs)
    if n == 0:
        return {"metric": metric, "n": 0, "error": f"no {metric} items in common"}
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else 0.0
    return {"metric": metric, "n": n, "unpaired": max(len(a), len(b)) - n,
            "difference": mean, "se": se}


def _fmt(x: float) -> str:
    return f"{x:+.4g}"


def check_base(cfg: GateConfig, candidate: Items, base: Items,
               lower_is_better: Collection[str] = ()) -> list[dict[str, Any]]:
    """The task metric must improve by min_task_gain; the general probe must not worsen beyond
    its tolerance."""
    checks = []
    diff = paired_difference(cfg.task_metric, candidate, base, lower_is_better)
    diff.update(check="task gain over base", required=cfg.min_task_gain)
    if "error" in diff:
        diff.update(passed=False, reason=f"task gain: {diff['error']}")
    else:
        diff["passed"] = diff["difference"] >= cfg.min_task_gain
        diff["reason"] = (f"{cfg.task_metric}: {_fmt(diff['difference'])} over the base "
                          f"(needs >= {cfg.min_task_gain:g})")
    checks.append(diff)
    for metric, tolerance in sorted(cfg.general_tolerance.items()):
        diff = paired_difference(metric, candidate, base, lower_is_better)
        diff.update(check="general probe vs base", allowed=-tolerance)
        if "error" in diff:
            diff.update(passed=False, reason=f"general probe: {diff['error']}")
        else:
            diff["passed"] = diff["difference"] >= -tolerance
            diff["reason"] = (f"{metric}: {_fmt(diff['difference'])} vs the base "
                              f"(may worsen by at most {tolerance:g})")
        checks.append(diff)
    return checks


def check_champion(cfg: GateConfig, candidate: Items, champion: Items,
                   lower_is_better: Collection[str] = ()) -> list[dict[str, Any]]:
    """No metric may regress by more than max(its absolute tolerance, k standard errors)."""
    checks = []
    for metric, tolerance in sorted(cfg.champion_tolerance.items()):
        diff = paired_difference(metric, candidate, champion, lower_is_better)
        diff["check"] = "regression vs champion"
        if "error" in diff:  # a metric neither side measured (e.g. no preference pairs)
            diff.update(passed=True, reason=f"{metric}: not compared ({diff['error']})")
        else:
            allowed = max(tolerance, cfg.standard_errors * diff["se"])
            diff.update(allowed=-allowed, passed=diff["difference"] >= -allowed)
            diff["reason"] = (f"{metric}: {_fmt(diff['difference'])} vs the champion "
                              f"(may regress by at most max({tolerance:g}, "
                              f"{cfg.standard_errors:g} x SE {diff['se']:.3g}) = {allowed:.3g})")
        checks.append(diff)
    return checks


def best_prompted(task_metric: str, items: dict[str, Items], baselines: Collection[str],
                  lower_is_better: Collection[str] = ()) -> str | None:
    """The prompted baseline with the best mean task metric (None: none measured it). Picking
    the best on the same items favours prompting: the fine-tune has the harder bar."""
    sign = 1.0 if higher_is_better(task_metric, lower_is_better) else -1.0
    means = {name: sign * sum(v.values()) / len(v) for name in baselines
             if (v := items.get(name, {}).get(task_metric))}
    return max(sorted(means), key=means.__getitem__) if means else None


def check_prompting(cfg: GateConfig, items: dict[str, Items], baselines: Collection[str],
                    lower_is_better: Collection[str] = ()) -> list[dict[str, Any]]:
    """The candidate must beat the best prompted baseline (the base with a system prompt and
    k examples) by min_gain_over_prompting: otherwise a prompt would have done."""
    if cfg.min_gain_over_prompting is None or not baselines:
        return []
    best = best_prompted(cfg.task_metric, items, baselines, lower_is_better)
    if best is None:
        return [{"check": "gain over prompting", "passed": False, "reason": f"gain over "
                 f"prompting: no prompted baseline measured {cfg.task_metric} (they measure the "
                 "task scores and task_loss); set gate.min_gain_over_prompting=null"}]
    diff = paired_difference(cfg.task_metric, items[cfg.candidate], items[best], lower_is_better)
    diff.update(check="gain over prompting", reference=best, required=cfg.min_gain_over_prompting)
    if "error" in diff:
        diff.update(passed=False, reason=f"gain over prompting: {diff['error']}")
    else:
        diff["passed"] = diff["difference"] >= cfg.min_gain_over_prompting
        diff["reason"] = (f"{cfg.task_metric}: {_fmt(diff['difference'])} (SE {diff['se']:.3g}) "
                          f"over the best prompted baseline, {best} (needs >= "
                          f"{cfg.min_gain_over_prompting:g})")
    return [diff]


def check_win_rate(cfg: GateConfig, judged: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The judge's win rate of the candidate over the base must reach min_win_rate."""
    if cfg.min_win_rate is None:
        return []
    against = (judged or {}).get("base")
    if not against or "win_rate" not in against:
        return [{"check": "judge win rate", "passed": False, "reason": "judge win rate over "
                 "the base: not measured (eval.judge)"}]
    rate = against["win_rate"]
    return [{"check": "judge win rate", "metric": "judge_win_rate.base", "reference": "base",
             "value": rate, "ci95": against["ci95"], "n": against["n"],
             "required": cfg.min_win_rate, "passed": rate >= cfg.min_win_rate,
             "reason": f"judge win rate over the base: {rate:.3g} (95 % CI "
             f"{against['ci95'][0]:.3g}-{against['ci95'][1]:.3g}, {against['n']} prompts; "
             f"needs >= {cfg.min_win_rate:g})"}]


def export_check(candidate: str, quantize_report: dict[str, Any]) -> list[dict[str, Any]]:
    """A quantized candidate must have passed the quantize stage's own checks (parity against
    the merged model); the merged model has none here. A precondition for `decide`."""
    if candidate not in quantize_report:
        return []
    ok = quantize_report[candidate]["passed"]
    return [{"check": "export checks", "passed": ok, "reason": f"{candidate}: quantize checks "
             f"{'passed' if ok else 'failed'} (models/quantized/report.json)"}]


def decide(cfg: GateConfig, items: dict[str, Items], champion: dict[str, Any] | None,
           candidate_sha256: str, preconditions: list[dict[str, Any]] | None = None,
           lower_is_better: Collection[str] = (), baselines: Collection[str] = (),
           judged: dict[str, Any] | None = None) -> Gate:
    """The gate record: every check with its reason, and `passed` when all pass.
    `preconditions`: checks the caller made ({"check", "passed", "reason"}), e.g. that a
    quantized candidate passed its export checks. `lower_is_better`: metrics whose names do not
    say so (see higher_is_better); kept in the record for whoever reads it later. `baselines`:
    the prompted baselines among `items`; `judged`: the judge's win rates ({opponent: figures})."""
    candidate = items[cfg.candidate]
    checks = [*(preconditions or []),
              *check_base(cfg, candidate, items["base"], lower_is_better),
              *check_prompting(cfg, items, baselines, lower_is_better),
              *check_win_rate(cfg, judged)]
    against = None
    if champion and champion.get("items"):
        against = ChampionRef(**{k: champion[k] for k in ChampionRef.__annotations__
                                 if k in champion})
        checks += check_champion(cfg, candidate, champion["items"], lower_is_better)
    passed = all(c["passed"] for c in checks)
    reasons = [("pass: " if c["passed"] else "FAIL: ") + c["reason"] for c in checks]
    if against is None:
        reasons.append("no champion yet: compared with the base only")
    if not baselines and cfg.min_gain_over_prompting is not None:
        reasons.append("no prompted baseline (eval.baseline): not compared with prompting")
    return Gate(schema_version=GATE_VERSION, passed=passed, candidate=cfg.candidate,
                candidate_sha256=candidate_sha256, champion=against, task_metric=cfg.task_metric,
                checks=checks, reasons=reasons, lower_is_better=sorted(lower_is_better))

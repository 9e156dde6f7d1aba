"""lm-evaluation-harness as an optional evaluator (`eval.harness.tasks`), offline.

Tasks are lm-eval YAML files in `eval.harness.include_path` (data/eval/harness/) whose data are
local files; only those tasks are indexed (not the ~14,000 bundled ones, which would also need the
Hub). Each model is evaluated as already loaded (no re-load from a hub id), through its chat
template unless `apply_chat_template` is off. Every `<metric>,<filter>` the harness reports becomes
`harness.<task>.<metric>` (`_<filter>` appended unless it is "none"), with per-document values
so the gate can compare models item by item, and the direction the harness declares for it
(bits_per_byte, ter, brier_score, perplexities, or a task's own `higher_is_better: false`).

Needs `pip install -e '.[harness]'` (`make install` does it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pedigree.config import HarnessConfig
from pedigree.errors import PedigreeError


def _metric_name(task: str, key: str) -> str | None:
    metric, _, filt = key.partition(",")
    if not filt or metric.endswith("_stderr"):
        return None
    return f"harness.{task}.{metric}" + ("" if filt == "none" else f"_{filt}")


@dataclass
class HarnessResult:
    metrics: dict[str, float]
    items: dict[str, dict[str, float]]  # metric -> {document id: value}
    lower_is_better: set[str]  # metrics the harness declares lower-is-better


def run_harness(model, tokenizer, cfg: HarnessConfig, batch_size: int) -> HarnessResult:
    """One loaded model on the configured harness tasks."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local data files only
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise PedigreeError("eval.harness.tasks is set but lm-evaluation-harness is not "
                            "installed: pip install -e '.[harness]'") from None
    include = Path(cfg.include_path)
    if not include.is_dir():
        raise PedigreeError(f"eval.harness.include_path={cfg.include_path!r}: no such directory")
    manager = TaskManager(include_path=str(include), include_defaults=False)
    unknown = sorted(set(cfg.tasks) - set(manager.all_tasks))
    if unknown:
        raise PedigreeError(f"eval.harness.tasks: {unknown} not found in {include}/ "
                            f"(it defines: {', '.join(sorted(manager.all_tasks)) or 'nothing'})")
    result = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size),
        tasks=list(cfg.tasks), task_manager=manager, limit=cfg.limit,
        apply_chat_template=cfg.apply_chat_template, log_samples=True, random_seed=0,
        numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
    )
    metrics: dict[str, float] = {}
    items: dict[str, dict[str, float]] = {}
    lower: set[str] = set()
    for task, values in result["results"].items():
        directions = result.get("higher_is_better", {}).get(task, {})  # {metric: bool}
        for key, value in values.items():
            name = _metric_name(task, key)
            if name and isinstance(value, int | float):
                metrics[name] = float(value)
                if directions.get(key.partition(",")[0]) is False:
                    lower.add(name)
        for sample in result["samples"].get(task, []):
            doc_id = _doc_id(sample)
            for key, value in sample.items():
                name = _metric_name(task, f"{key},{sample.get('filter', 'none')}")
                if name in metrics and isinstance(value, int | float | bool):
                    items.setdefault(name, {})[doc_id] = float(value)
    return HarnessResult(metrics, items, lower)


def _doc_id(sample: dict[str, Any]) -> str:
    """The document's own `id` when it has one (pairs models across runs), else its index."""
    doc = sample.get("doc")
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return doc["id"]
    return str(sample["doc_id"])

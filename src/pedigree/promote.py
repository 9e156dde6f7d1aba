"""`pedigree promote`: the only way a model becomes the champion.

It refuses unless the eval stage's gate passed for the models now in the workspace and the
lineage audits clean. Then it registers the candidate as a new version of the MLflow registered
model, tagged with its lineage (output hash, data hash, base model, code commit, params hashes,
gate result), moves the `champion` alias to it (earlier versions stay registered) and writes
champion.json: the champion's identity and per-item eval results, which the eval stage's gate
compares the next candidate with. Commit champion.json: it is how a clone knows its champion.

No torch: only manifests, the gate record and the MLflow client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pedigree import lineage
from pedigree.champion import CHAMPION_FILE, candidate_dir, candidate_files, read_champion
from pedigree.errors import EXIT_OK, PedigreeError
from pedigree.eval_metrics import PROMOTION_TAGS
from pedigree.files import atomic_write_text, read_json
from pedigree.pipeline import stage_out
from pedigree.records import GATE_FILE, Gate, read_gate
from pedigree.tracking import flatten, runs_for_output, store_lock, tracking_uri

ALIAS = "champion"


class PromotionRefused(PedigreeError):
    """The gate failed, is stale, or the lineage does not audit clean."""


@dataclass
class _Gated:
    gate: Gate  # the eval stage's gate.json
    model: lineage.Manifest  # the candidate's stage manifest
    evaluation: lineage.Manifest  # the eval stage's manifest
    previous: dict[str, Any] | None  # the current champion record


def _current_gate(root: Path) -> _Gated:
    """The gate and the manifests it judged, checked to describe the workspace as it is now."""
    metrics_dir = root / stage_out("eval", root)
    gate = read_gate(metrics_dir)
    eval_manifest = lineage.read_manifest(metrics_dir)
    model_manifest = lineage.read_manifest(root / candidate_dir(gate["candidate"], root))
    if gate["candidate_sha256"] != model_manifest["outputs_sha256"]:
        raise PromotionRefused(
            f"{metrics_dir / GATE_FILE} judged {candidate_dir(gate['candidate'], root)} "
            f"{gate['candidate_sha256'][:12]}, but the workspace holds "
            f"{model_manifest['outputs_sha256'][:12]}: run `dvc repro` first")
    previous = read_champion(root)
    if previous and previous.get("outputs_sha256") == model_manifest["outputs_sha256"]:
        raise PromotionRefused(f"{candidate_dir(gate['candidate'], root)} "
                               f"{model_manifest['outputs_sha256'][:12]} is already the champion "
                               f"('{previous.get('registered_model')}' version "
                               f"{previous.get('version')})")
    recorded = {i["path"]: i["sha256"] for i in eval_manifest["inputs"]}
    if recorded.get(CHAMPION_FILE) != lineage.sha256_file(root / CHAMPION_FILE):
        raise PromotionRefused(f"{CHAMPION_FILE} changed since the gate ran (another promotion?): "
                               "run `dvc repro` to gate against the current champion")
    if not gate["passed"]:
        failed = [r for r in gate["reasons"] if r.startswith("FAIL")]
        raise PromotionRefused("the gate failed:\n  " + "\n  ".join(failed))
    return _Gated(gate, model_manifest, eval_manifest, previous)


def lineage_tags(gate: Gate, manifest: lineage.Manifest, eval_run: str | None,
                 metrics: dict[str, float]) -> dict[str, str]:
    roots = dict(manifest["roots"])
    if isinstance(roots.get("base_model"), dict):  # its sha256 covers the per-file hashes
        roots["base_model"] = {k: v for k, v in roots["base_model"].items() if k != "files"}
    tags = {
        "pedigree.outputs_sha256": manifest["outputs_sha256"],
        "pedigree.candidate": gate["candidate"],
        "pedigree.params_sha256": manifest["params_sha256"],
        "pedigree.code_commit": manifest["code"].get("git_commit") or "",
        "pedigree.gate": "passed",
        "pedigree.task_metric": gate["task_metric"],
    }
    for key, value in sorted(flatten(roots).items()):
        tags[f"pedigree.root.{key}"] = value
    if eval_run:
        tags["pedigree.eval_run"] = eval_run
    for name in PROMOTION_TAGS:
        if name in metrics:
            tags[f"pedigree.eval.{name}"] = f"{metrics[name]:.6g}"
    return tags


@dataclass
class Plan:
    registered_model: str
    candidate: str
    source: str
    outputs_sha256: str
    previous: dict[str, Any] | None  # the current champion record, if any
    tags: dict[str, str] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)  # champion.json after promotion

    def describe(self, version: str) -> list[str]:
        before = (f"version {self.previous['version']}" if self.previous else "no champion")
        return [
            (f"register {self.candidate} ({self.source}, outputs {self.outputs_sha256[:12]}) "
             f"as '{self.registered_model}' version {version}"),
            f"move alias '{ALIAS}': {before} -> version {version} (earlier versions stay)",
            f"write {CHAMPION_FILE} (commit it: the next eval gates against this model)",
        ]


def _answers(path: Path, model: str) -> dict[str, str]:
    """{task id: answer} of one model from the eval stage's answers.jsonl."""
    answers = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if model in row["answers"]:
            answers[row["id"]] = row["answers"][model]
    return answers


def plan_promotion(root: Path, registered_model: str, audit_experiment: str | None) -> Plan:
    """Every check, no side effect; raises PromotionRefused with the reasons."""
    from pedigree.audit import audit

    gated = _current_gate(root)
    gate, manifest = gated.gate, gated.model
    findings = audit(root, None, audit_experiment)
    if findings:
        raise PromotionRefused("the lineage audit failed:\n  "
                               + "\n  ".join(str(f) for f in findings))
    metrics_dir = root / stage_out("eval", root)
    evaluated = read_json(metrics_dir / "eval.json")
    items = read_json(metrics_dir / "items.json")
    for name, table in (("eval.json", evaluated), ("items.json", items)):
        if gate["candidate"] not in table:
            raise PedigreeError(f"{metrics_dir / name}: no results for the candidate "
                                f"{gate['candidate']!r} that {metrics_dir / GATE_FILE} judged; run "
                                "`dvc repro` first")
    metrics = evaluated[gate["candidate"]]
    eval_runs = []
    if audit_experiment:
        eval_runs = runs_for_output(root, gated.evaluation["outputs_sha256"])
    plan = Plan(
        registered_model=registered_model,
        candidate=gate["candidate"],
        source=(root / candidate_files(gate["candidate"], root)).resolve().as_uri(),
        outputs_sha256=manifest["outputs_sha256"],
        previous=gated.previous,
    )
    plan.tags = lineage_tags(gate, manifest, eval_runs[-1] if eval_runs else None, metrics)
    plan.record = {
        "registered_model": registered_model,
        "candidate": gate["candidate"],
        "outputs_sha256": manifest["outputs_sha256"],
        "roots": manifest["roots"],
        "metrics": metrics,
        "items": items[gate["candidate"]],
        # the candidate's answers to the task prompts: what the next candidate is judged against
        "answers": _answers(metrics_dir / "answers.jsonl", gate["candidate"]),
    }
    return plan


def register(root: Path, plan: Plan, eval_run: str | None) -> str:
    """Create the model version, move the alias, write champion.json; returns the version."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    with store_lock(root):  # one writer at a time on the SQLite store
        client = MlflowClient(tracking_uri(root))
        try:
            client.get_registered_model(plan.registered_model)
        except MlflowException:
            client.create_registered_model(
                plan.registered_model, description="Models promoted by pedigree; the "
                f"'{ALIAS}' alias is the current champion.")
        version = str(client.create_model_version(
            plan.registered_model, source=plan.source, run_id=eval_run, tags=plan.tags,
            description=f"{plan.candidate} {plan.outputs_sha256[:12]}, promoted through the gate",
        ).version)
        client.set_registered_model_alias(plan.registered_model, ALIAS, version)
    record = {**plan.record, "version": version}
    atomic_write_text(root / CHAMPION_FILE,
                      json.dumps({"champion": record}, indent=2, sort_keys=True) + "\n")
    return version


def next_version(root: Path, registered_model: str) -> str:
    """The version number a registration would get (for --dry-run)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri(root))
    try:
        versions = client.search_model_versions(f"name = '{registered_model}'")
    except MlflowException:
        return "1"
    return str(max((int(v.version) for v in versions), default=0) + 1)


def promote(root: Path, name: str | None = None, dry_run: bool = False) -> int:
    """`pedigree promote [--name N] [--dry-run]` (and `pedigree rebase --promote`)."""
    from pedigree.config import load_params

    params = load_params(root / "params.yaml")
    name = name or params.gate.registered_model
    experiment = params.tracking.experiment if params.tracking.enabled else None
    try:
        plan = plan_promotion(root, name, experiment)
    except PromotionRefused as err:  # exits EXIT_USER, as every refusal does
        raise PromotionRefused(f"refused: {err}") from None
    if dry_run:
        print("gate passed and the lineage audits clean; `pedigree promote` would:")
        for line in plan.describe(next_version(root, name)):
            print(f"  {line}")
        return EXIT_OK
    version = register(root, plan, plan.tags.get("pedigree.eval_run"))
    for line in plan.describe(version):
        print(f"done: {line}")
    return EXIT_OK

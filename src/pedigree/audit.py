"""`pedigree audit`: recompute every hash and check it against the manifests, dvc.lock and MLflow.

For each stage output (every `outs` of dvc.yaml, or the lineage of one artifact), upstream first:

1. files: every file's sha256 against the manifest's `outputs` (changed, missing or extra files);
2. manifest: its own digests (`outputs_sha256`, `params_sha256`) against its contents, so a
   hand-edited manifest shows, and each upstream's recorded hash against that upstream's manifest;
3. dvc.lock: DVC's md5 of the output (files, or a directory's `.dir` listing) against the lock;
4. MLflow: a run tagged with this output's hash exists, and its data and base-model tags are the
   manifest's roots.

Reads files, YAML and JSON only; MLflow is imported only for step 4, never torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pedigree import lineage
from pedigree.errors import PedigreeError
from pedigree.pipeline import all_outs
from pedigree.tracking import TAG_PREFIX, tracking_uri


@dataclass(frozen=True)
class Finding:
    artifact: str  # the stage output directory, relative to the project root
    problem: str

    def __str__(self) -> str:
        return f"{self.artifact}: {self.problem}"


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):  # 1 MiB at a time: GGUFs are large
            digest.update(chunk)
    return digest.hexdigest()


def dvc_md5(path: Path) -> str:
    """DVC's md5 of a file, or of a directory (md5 of its sorted JSON listing, + ".dir")."""
    if path.is_file():
        return _md5_file(path)
    entries = [{"md5": _md5_file(p), "relpath": p.relative_to(path).as_posix()}
               for p in sorted(path.rglob("*")) if p.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def lock_outputs(root: Path) -> dict[str, str]:
    """Output path -> md5 as dvc.lock records it."""
    lock_file = root / "dvc.lock"
    if not lock_file.is_file():
        return {}
    try:
        lock = yaml.safe_load(lock_file.read_text()) or {}
        return {out["path"]: out["md5"] for stage in (lock.get("stages") or {}).values()
                for out in stage.get("outs", [])}
    except (yaml.YAMLError, AttributeError, KeyError, TypeError) as err:  # e.g. a merge conflict
        raise PedigreeError(f"{lock_file}: not a dvc.lock DVC can read ({type(err).__name__}: "
                            f"{err}); restore it (`git checkout dvc.lock`) or re-run "
                            "`dvc repro`") from None


def check_files(rel: str, directory: Path, manifest: dict[str, Any]) -> list[Finding]:
    recorded = {o["path"]: o["sha256"] for o in manifest["outputs"]}
    actual = {f"{rel}/{p}": h for p, h in
              lineage.file_hashes(directory, exclude=(lineage.MANIFEST,)).items()}
    findings = []
    for path in sorted(recorded.keys() | actual.keys()):
        if path not in actual:
            findings.append(Finding(rel, f"{path} is missing (manifest sha256 {recorded[path]})"))
        elif path not in recorded:
            findings.append(Finding(rel, f"{path} is not in the manifest (sha256 {actual[path]})"))
        elif actual[path] != recorded[path]:
            findings.append(Finding(rel, f"{path} has sha256 {actual[path]}, the manifest "
                                         f"expects {recorded[path]}"))
    return findings


def check_manifest(rel: str, manifest: dict[str, Any], root: Path) -> list[Finding]:
    findings = []
    outputs = {o["path"].removeprefix(f"{rel}/"): o["sha256"] for o in manifest["outputs"]}
    if lineage.hash_of_hashes(outputs) != manifest["outputs_sha256"]:
        findings.append(Finding(rel, f"{lineage.MANIFEST} was edited: outputs_sha256 "
                                     f"{manifest['outputs_sha256']} does not match its own file "
                                     f"list ({lineage.hash_of_hashes(outputs)})"))
    if lineage.sha256_json(manifest["params"]) != manifest["params_sha256"]:
        findings.append(Finding(rel, f"{lineage.MANIFEST} was edited: params_sha256 "
                                     f"{manifest['params_sha256']} does not match its params"))
    for up in manifest["upstream"]:
        up_dir = root / up["path"]
        if not (up_dir / lineage.MANIFEST).is_file():
            findings.append(Finding(rel, f"upstream {up['path']} has no {lineage.MANIFEST}"))
            continue
        current = lineage.read_manifest(up_dir)["outputs_sha256"]
        if current != up["outputs_sha256"]:
            findings.append(Finding(rel, f"made from {up['path']} {up['outputs_sha256']}, but "
                                         f"{up['path']} is now {current}"))
    return findings


def check_lock(rel: str, directory: Path, locked: dict[str, str]) -> list[Finding]:
    if rel not in locked:
        return [Finding(rel, "not in dvc.lock; run `dvc repro` (or `dvc commit`)")]
    actual = dvc_md5(directory)
    if actual != locked[rel]:
        return [Finding(rel, f"dvc.lock records md5 {locked[rel]}, the files hash to {actual}: "
                             "the manifest and dvc.lock disagree")]
    return []


def check_tracking(rel: str, manifest: dict[str, Any], runs: list[dict[str, str]]) -> list[Finding]:
    """`runs`: the tags of every pedigree run in the experiment."""
    mine = [r for r in runs if r.get(TAG_PREFIX + "outputs_sha256") == manifest["outputs_sha256"]
            and r.get(TAG_PREFIX + "output_path") == rel]
    if not mine:
        return [Finding(rel, f"no MLflow run tagged {TAG_PREFIX}outputs_sha256="
                             f"{manifest['outputs_sha256']}")]
    roots = manifest["roots"]
    base = roots.get("base_model") or {}
    expected = {"data_sha256": roots.get("data_sha256") or "none",
                "base_model.sha256": base.get("sha256") or "none"}
    # The same bytes can come from runs on different roots (a stage that is off writes the same
    # output over any base): one run that agrees is the artifact's record.
    if any(all(run.get(TAG_PREFIX + k) == v for k, v in expected.items()) for run in mine):
        return []
    return [Finding(rel, f"MLflow run {run['run_id']} is tagged {key}="
                         f"{run.get(TAG_PREFIX + key)}, the manifest says {value}")
            for run in mine for key, value in expected.items()
            if run.get(TAG_PREFIX + key) != value]


def mlflow_runs(root: Path, experiment: str) -> list[dict[str, str]]:
    """Tags (and run_id) of every run of the experiment."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return []  # no store yet: every artifact will be reported without a run
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], max_results=50000)
    return [{**run.data.tags, "run_id": run.info.run_id} for run in runs]


def artifacts_to_audit(root: Path, path: Path | None) -> list[str]:
    if path is None:
        return [rel for rel in all_outs(root) if (root / rel / lineage.MANIFEST).is_file()]
    chain = lineage.lineage_chain(path, root)
    return [m["path"] for m in reversed(chain)]  # upstream first


def audit(root: Path, path: Path | None = None, experiment: str | None = None) -> list[Finding]:
    """Every finding, upstream artifacts first. `experiment`: the MLflow experiment to check
    against; None skips the MLflow checks."""
    root = root.resolve()
    locked = lock_outputs(root)
    runs = mlflow_runs(root, experiment) if experiment else []
    findings: list[Finding] = []
    artifacts = artifacts_to_audit(root, path)
    outputs = set(all_outs(root))
    if not artifacts:
        return [Finding(".", "no stage outputs with a manifest; run `dvc repro` first")]
    for rel in artifacts:
        directory = root / rel
        manifest = lineage.read_manifest(directory)
        findings += check_files(rel, directory, manifest)
        findings += check_manifest(rel, manifest, root)
        if rel in outputs:  # an adapter from elsewhere (merge.combine) has no lock entry
            findings += check_lock(rel, directory, locked)
        if experiment:
            findings += check_tracking(rel, manifest, runs)
    return findings

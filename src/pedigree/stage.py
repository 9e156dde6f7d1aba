"""What every stage does around its real work: params, atomic outputs, manifest, MLflow run.

A stage script reads:

    with stage_run("sft") as run:
        ...write files into run.dir...
        run.metrics["val_loss"] = 1.23

Its output directory, its inputs and the params sections it records are those `dvc.yaml` declares
for the stage (`pipeline.stage_contract`); a script names only the inputs a param points at, which
dvc.yaml cannot list (`extra_inputs`: a chat template file, a local model directory).

Files are written into a temporary sibling directory; only when the block succeeds is the manifest
added and the directory renamed onto `out`, so a crash never leaves a half-written output.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pedigree import lineage
from pedigree.config import Params, load_params, section_dict
from pedigree.errors import MissingInputError, install_excepthook
from pedigree.files import replace_dir
from pedigree.launch import is_main_process
from pedigree.pipeline import stage_contract

# Stage scripts import this module first: user errors print as one message, no traceback.
install_excepthook()


@dataclass
class StageRun:
    name: str
    dir: Path  # where the stage writes; becomes `out` on success
    out: Path
    params: Params
    recorded_params: dict[str, Any]
    upstream: list[dict[str, Any]]  # manifests of input directories that have one
    input_hashes: dict[str, dict[str, str]]  # input path -> {relative file: sha256}
    roots: dict[str, Any] = field(default_factory=dict)  # roots this stage introduces
    details: dict[str, Any] = field(default_factory=dict)  # stage-specific manifest facts
    metrics: dict[str, float] = field(default_factory=dict)
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)  # small files in `dir` to attach to MLflow
    code: dict[str, Any] = field(default_factory=dict)  # lineage.code_identity: what ran


def _inside_any(path: str, dirs: list[str]) -> bool:
    """Whether `path` is one of `dirs` or lies under one (then it is hashed already)."""
    p = Path(path)
    return any(p == Path(d) or Path(d) in p.parents for d in dirs)


def _input_hashes(inputs: list[str]) -> dict[str, dict[str, str]]:
    for rel in inputs:
        if not Path(rel).exists():
            raise MissingInputError(f"{rel}: input of this stage is missing; run `dvc repro`")
    return {rel: lineage.file_hashes(Path(rel)) for rel in inputs}


def _flat_inputs(input_hashes: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """Every input file with its hash; a file input is listed under its own path."""
    rows = []
    for rel, files in input_hashes.items():
        for sub, digest in files.items():
            path = rel if Path(rel).is_file() else f"{rel}/{sub}"
            rows.append({"path": path, "sha256": digest})
    return sorted(rows, key=lambda r: r["path"])


def build_manifest(run: StageRun) -> lineage.Manifest:
    outputs = lineage.file_hashes(run.dir, exclude=(lineage.MANIFEST,))
    out_prefix = run.out.as_posix()
    return lineage.Manifest(
        schema_version=lineage.SCHEMA_VERSION,
        stage=run.name,
        inputs=_flat_inputs(run.input_hashes),
        outputs=[{"path": f"{out_prefix}/{p}", "sha256": h} for p, h in outputs.items()],
        outputs_sha256=lineage.hash_of_hashes(outputs),
        upstream=[
            {"path": m["_path"], "stage": m["stage"], "outputs_sha256": m["outputs_sha256"]}
            for m in run.upstream
        ],
        roots=lineage.merge_roots(run.upstream, run.roots),
        params=run.recorded_params,
        params_sha256=lineage.sha256_json(run.recorded_params),
        code=run.code,
        versions=lineage.library_versions(),
        compute=lineage.compute_identity(),
        seed=run.params.seed,
        details=run.details,
    )


@contextmanager
def stage_run(name: str, extra_inputs: Sequence[str] = ()) -> Iterator[StageRun]:
    """Run a stage's body with validated params and publish its output atomically."""
    all_params = load_params()
    contract = stage_contract(name)
    inputs = [*contract.inputs,
              *(p for p in extra_inputs if not _inside_any(p, contract.inputs))]
    input_hashes = _input_hashes(inputs)  # first: a missing input fails before anything is made
    upstream = []
    for rel in inputs:
        if (Path(rel) / lineage.MANIFEST).is_file():
            upstream.append({**lineage.read_manifest(Path(rel)), "_path": rel})
    out_path = Path(contract.out)
    # Under `accelerate launch` every rank runs the body (training needs them all), but only
    # rank 0 publishes; the others write into a private scratch directory that is then removed.
    main = is_main_process()
    if main:
        tmp = out_path.with_name(f".{out_path.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    else:
        tmp = Path(tempfile.mkdtemp(prefix=f"pedigree-{name}-rank-"))
    run = StageRun(
        name=name,
        dir=tmp,
        out=out_path,
        params=all_params,
        recorded_params=section_dict(all_params, contract.params),
        upstream=upstream,
        input_hashes=input_hashes,
        code=lineage.code_identity(name),
    )
    try:
        yield run
        if not main:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        manifest = build_manifest(run)
        lineage.write_manifest(tmp, manifest)
        replace_dir(tmp, out_path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if all_params.tracking.enabled:
        from pedigree import tracking

        tracking.log_stage_run(
            root=Path("."),
            experiment=all_params.tracking.experiment,
            manifest=manifest,
            output_path=contract.out,
            metrics=run.metrics,
            history=run.history,
            datasets=_dataset_digests(run),
            artifacts=[out_path / lineage.MANIFEST, *(out_path / a for a in run.artifacts)],
        )
    print(f"[{name}] wrote {contract.out} ({manifest['outputs_sha256'][:12]})")


def _dataset_digests(run: StageRun) -> dict[str, str]:
    """Each input with its content hash, for `mlflow.log_input`: a file's sha256, or for a stage
    output the `outputs_sha256` its manifest records (every file but the manifest)."""
    digests = {}
    for rel, files in run.input_hashes.items():
        if Path(rel).is_file():
            digests[rel] = next(iter(files.values()))
        else:
            content = {p: h for p, h in files.items() if p != lineage.MANIFEST}
            digests[rel] = lineage.hash_of_hashes(content)
    return digests

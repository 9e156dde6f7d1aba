"""Content hashes and `lineage.json` manifests: what made each artifact, provably.

Kept free of torch and of any heavy import: `pedigree lineage` reads manifests only and must answer
at once. A directory's hash is the sha256 of its sorted `relative/path<TAB>file-sha256` lines, so
it depends on content and names only, never on timestamps or the order the OS lists files in.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, TypedDict

from pedigree.errors import MissingInputError, PedigreeError
from pedigree.pipeline import stage_contract

SCHEMA_VERSION = 1
MANIFEST = "lineage.json"
_CHUNK = 1 << 20  # 1 MiB reads keep memory flat on multi-GB weight files

# Libraries whose versions change what a stage produces.
TRACKED_LIBRARIES = (
    "torch", "transformers", "peft", "trl", "accelerate", "tokenizers", "safetensors",
    "gguf", "numpy", "datasets",
)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of the canonical JSON form (sorted keys, no spaces): stable across runs."""
    return sha256_bytes(canonical_json(obj).encode())


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def list_files(root: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
    """Files under `root`, sorted by relative POSIX path, skipping names in `exclude`."""
    files = [p for p in root.rglob("*") if p.is_file() and p.name not in exclude]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def file_hashes(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> sha256 of every file under a directory (or of a single file)."""
    if root.is_file():
        return {root.name: sha256_file(root)}
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in list_files(root, exclude)}


def hash_of_hashes(hashes: dict[str, str]) -> str:
    lines = "".join(f"{rel}\t{digest}\n" for rel, digest in sorted(hashes.items()))
    return sha256_bytes(lines.encode())


def sha256_dir(root: Path, exclude: tuple[str, ...] = ()) -> str:
    """The content hash of a directory (or a file): names and bytes, nothing else."""
    if root.is_file():
        return sha256_file(root)
    return hash_of_hashes(file_hashes(root, exclude))


# ----------------------------------------------------------------------------- code identity
def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def code_identity(stage: str, root: Path = Path(".")) -> dict[str, Any]:
    """Git commit, whether the stage's code differs from it, and the hash of that code."""
    paths = stage_contract(stage, root).code
    hashes: dict[str, str] = {}
    for rel in paths:
        target = root / rel
        if target.is_file():
            hashes[rel] = sha256_file(target)
        else:
            for sub, digest in file_hashes(target).items():
                if "__pycache__" not in sub and not sub.endswith(".pyc"):
                    hashes[f"{rel.rstrip('/')}/{sub}"] = digest
    commit = _git(["rev-parse", "HEAD"], root)
    status = _git(["status", "--porcelain", "--", *paths], root) if commit else None
    return {
        "git_commit": commit,
        "dirty": None if status is None else bool(status),
        "files": paths,
        "source_sha256": hash_of_hashes(hashes),
    }


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def compute_identity() -> dict[str, Any] | None:
    """Where a stage's floating-point work ran, as far as it decides the result bits.

    None when the stage never imported torch (curate, split: no float math to vary). On CPU,
    the same CPU capability (the vector ISA torch dispatches to) and thread count give
    bit-identical results run to run. On CUDA the GPU model, CUDA/cuDNN versions, TF32, cuDNN
    autotuning and the deterministic-algorithms switch all change them (README: Determinism)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    info: dict[str, Any] = {
        "device": "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    if torch.cuda.is_available():
        info.update(
            device="cuda",
            gpu=torch.cuda.get_device_name(0),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        )
    return info


# ----------------------------------------------------------------------------- manifests
class Manifest(TypedDict):
    """`lineage.json`: what made a stage output. Written by `stage.build_manifest` through
    `write_manifest`, read through `read_manifest` (checked there without pydantic: `pedigree
    lineage` must answer at once)."""

    schema_version: int  # SCHEMA_VERSION
    stage: str
    inputs: list[dict[str, str]]  # {"path", "sha256"} of every input file
    outputs: list[dict[str, str]]  # {"path", "sha256"} of every output file but this one
    outputs_sha256: str  # hash_of_hashes of the outputs: the output's identity
    upstream: list[dict[str, str]]  # {"path", "stage", "outputs_sha256"} of input stage outputs
    roots: dict[str, Any]  # data_sha256 and base_model, carried from the stages that set them
    params: dict[str, Any]  # the params sections the stage reads (dvc.yaml)
    params_sha256: str
    code: dict[str, Any]  # code_identity
    versions: dict[str, str]  # library_versions
    compute: dict[str, Any] | None  # compute_identity
    seed: int
    details: dict[str, Any]  # what the stage itself reports (stage-specific)


MANIFEST_KEYS = tuple(Manifest.__annotations__)


def read_manifest(directory: Path) -> Manifest:
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingInputError(
            f"{path}: no lineage manifest; was {directory} produced by `dvc repro`?"
        ) from None
    except json.JSONDecodeError as err:
        raise ManifestError(f"{path}: not valid JSON ({err}); was it edited by hand?") from None
    missing = [k for k in MANIFEST_KEYS if k not in manifest] if isinstance(manifest, dict) \
        else list(MANIFEST_KEYS)
    if missing:
        raise ManifestError(f"{path}: missing {', '.join(missing)}; was it edited by hand?")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ManifestError(f"{path}: schema_version {manifest['schema_version']!r}; this "
                            f"pedigree reads version {SCHEMA_VERSION}: re-run `dvc repro`")
    return manifest


class ManifestError(PedigreeError, ValueError):
    """A manifest that cannot be read as one: broken JSON or missing fields."""


class LineageConflictError(PedigreeError, ValueError):
    """Inputs that trace back to different data or base models."""


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def merge_roots(upstream: list[dict[str, Any]], own: dict[str, Any]) -> dict[str, Any]:
    """Roots carried forward: each upstream manifest's roots, then the stage's own.

    Two upstreams disagreeing about a root (say, an adapter trained on other data than the split
    being evaluated) means the artifacts do not belong together: refuse rather than pick one.
    """
    roots: dict[str, Any] = {"data_sha256": None, "base_model": None}
    for manifest in upstream:
        for key, value in manifest.get("roots", {}).items():
            if value is None:
                continue
            if roots.get(key) not in (None, value):
                raise LineageConflictError(
                    f"lineage conflict: upstream {manifest['stage']!r} has roots.{key}="
                    f"{_short(value)} but another input has {_short(roots[key])}; "
                    "re-run the pipeline so every input comes from the same data and base model"
                )
            roots[key] = value
    for key, value in own.items():
        if value is not None:
            roots[key] = value
    return roots


def gguf_origin(gguf: dict[str, Any]) -> str:
    """Where a base model dequantized from a GGUF file came from, in one line: the package and
    version (or the path), the file, its quantization and sha256."""
    where = (f"{gguf['package']}=={gguf['version']} {gguf.get('file') or gguf.get('assemble')}"
             if gguf.get("package") else gguf["path"])
    return (f"from {where}: {gguf['quantization']} GGUF, sha256 {gguf['file_sha256']} "
            f"(weights dequantized from {gguf['dequantized_from']})")


def _short(value: Any) -> str:
    return json.dumps(value, sort_keys=True)[:120]


def find_manifest_dir(path: Path) -> Path:
    """The stage output directory holding `path`: the nearest ancestor with a manifest."""
    path = path.resolve()
    for candidate in [path, *path.parents]:
        if (candidate / MANIFEST).is_file():
            return candidate
    raise MissingInputError(f"{path}: no {MANIFEST} in it or any parent; not a pipeline artifact")


def lineage_chain(path: Path, root: Path = Path(".")) -> list[dict[str, Any]]:
    """Manifests from the artifact at `path` back to the raw data, nearest first, each once."""
    root = root.resolve()
    start = find_manifest_dir(path)
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    queue = [start]
    while queue:
        directory = queue.pop(0)
        rel = directory.relative_to(root).as_posix() if directory.is_relative_to(root) else str(
            directory
        )
        if rel in seen:
            continue
        seen.add(rel)
        manifest = read_manifest(directory)
        chain.append({"path": rel, **manifest})
        queue.extend(root / up["path"] for up in manifest.get("upstream", []))
    return chain


def mermaid(chain: list[dict[str, Any]]) -> str:
    """The lineage chain as a Mermaid flowchart (`pedigree lineage --format mermaid`, report)."""
    lines = ["graph LR"]
    node = {m["path"]: f"n{i}" for i, m in enumerate(chain)}
    for m in chain:
        lines.append(f'  {node[m["path"]]}["{m["stage"]}<br/>{m["path"]}<br/>'
                     f'{m["outputs_sha256"][:12]}"]')
    for m in chain:
        for up in m["upstream"]:
            if up["path"] in node:
                lines.append(f"  {node[up['path']]} --> {node[m['path']]}")
    data = chain[0]["roots"].get("data_sha256")
    if data:
        lines.append(f'  raw[("raw data<br/>{data[:12]}")]')
        for m in chain:
            if m["roots"].get("data_sha256") and not m["upstream"]:
                lines.append(f"  raw --> {node[m['path']]}")
    return "\n".join(lines)

"""Each stage's contract, read from `dvc.yaml`: the one place it is written.

A stage's code (its `stages/` and `src/` deps, whose hash goes into its lineage), its inputs (every
other dep: data and models), the params sections it reads and its output directory (the first of
its `outs`) are what DVC tracks. `stage.stage_run` takes them from here, so what DVC re-runs a
stage for and what the stage's manifest records cannot disagree. `${key}` in a dep is DVC's
interpolation from params.yaml (e.g. `${data.raw_dir}`), resolved here the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pedigree.errors import MissingInputError, PedigreeError

DVC_YAML = Path("dvc.yaml")
PARAMS_YAML = Path("params.yaml")
CODE_PREFIXES = ("stages/", "src/")
_VAR = re.compile(r"\$\{\s*([\w.-]+)\s*\}")


@dataclass(frozen=True)
class StageContract:
    name: str
    code: list[str]  # the stage's script and library code
    inputs: list[str]  # every other dep: data, models, single files
    params: list[str]  # the params.yaml sections it reads
    out: str  # its directory output: the first of its `outs`


def _entry_path(entry: str | dict[str, Any]) -> str:
    """A deps/outs entry is a path or `{path: {options}}` (e.g. `persist: true`)."""
    return entry if isinstance(entry, str) else next(iter(entry))


def _resolve(text: str, variables: dict[str, Any], stage: str) -> str:
    def value(match: re.Match[str]) -> str:
        node: Any = variables
        for part in match.group(1).split("."):
            if not isinstance(node, dict) or part not in node:
                raise PedigreeError(f"dvc.yaml: stage {stage!r} uses ${{{match.group(1)}}}, "
                                    f"which {PARAMS_YAML} does not set")
            node = node[part]
        return str(node)

    return _VAR.sub(value, text)


def _stages(root: Path) -> dict[str, dict[str, Any]]:
    """dvc.yaml's `stages`, in the order they are declared (upstream first)."""
    path = root / DVC_YAML
    if not path.is_file():
        raise MissingInputError(f"{path}: not found; run pedigree from the project's root")
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise PedigreeError(f"{path}: not valid YAML ({err})") from None
    stages = spec.get("stages") if isinstance(spec, dict) else None
    if not isinstance(stages, dict):
        raise PedigreeError(f"{path}: no `stages:` mapping; restore it (`git checkout dvc.yaml`)")
    return stages


def all_outs(root: Path = Path(".")) -> list[str]:
    """Every output dvc.yaml declares, stage by stage in declaration order."""
    return [_entry_path(o) for spec in _stages(root).values() for o in spec.get("outs") or []]


def _stage_spec(name: str, root: Path) -> dict[str, Any]:
    path, stages = root / DVC_YAML, _stages(root)
    if name not in stages:
        raise PedigreeError(f"{path}: no stage {name!r} (stages: {', '.join(stages)})")
    return stages[name]


def stage_out(name: str, root: Path = Path(".")) -> Path:
    """Where stage `name` writes its output (the first of its `outs`), relative to `root`."""
    outs = _stage_spec(name, root).get("outs") or []
    if not outs:
        raise PedigreeError(f"{root / DVC_YAML}: stage {name!r} declares no outs")
    return Path(_entry_path(outs[0]))


def start_model(root: Path = Path(".")) -> Path:
    """The model SFT starts from, which its adapter sits on: the `cpt` stage's output when it
    trained one (continued pretraining, a whole model directory), else the base. Relative to
    `root`, like `stage_out`."""
    if "cpt" in _stages(root):
        cpt = stage_out("cpt", root)
        if (root / cpt / "config.json").is_file():
            return cpt
    return stage_out("base", root)


def stage_contract(name: str, root: Path = Path(".")) -> StageContract:
    """The contract of stage `name` as `root/dvc.yaml` declares it."""
    spec = _stage_spec(name, root)
    params_file = root / PARAMS_YAML
    variables = (yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
                 if params_file.is_file() else {})
    deps = [_resolve(_entry_path(d), variables, name) for d in spec.get("deps", [])]
    return StageContract(
        name=name,
        code=[d for d in deps if d.startswith(CODE_PREFIXES)],
        inputs=[d for d in deps if not d.startswith(CODE_PREFIXES)],
        params=[_entry_path(p) for p in spec.get("params", [])],
        out=stage_out(name, root).as_posix(),
    )

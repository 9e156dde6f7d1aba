"""dvc.yaml must list every library module a stage imports, or DVC skips a stage whose code
changed (and its manifest's code hash misses the change)."""

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "pedigree":
        return None
    path = REPO / "src" / Path(*parts)
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def imported_modules(script: Path) -> set[str]:
    """Files of the pedigree modules a script imports, transitively, relative to the repo."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                path = _module_file(name)
                if path and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return {p.relative_to(REPO).as_posix() for p in seen}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_cover_its_imports(stage):
    spec = STAGES[stage]
    script = spec["cmd"].split()[-1]
    missing = imported_modules(REPO / script) - set(spec["deps"])
    assert not missing, f"dvc.yaml stage {stage}: add {sorted(missing)} to deps"

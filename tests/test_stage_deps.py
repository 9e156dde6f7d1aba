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


def _type_only(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:`: imported for annotations, never at run time."""
    return {id(inner) for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for stmt in node.body for inner in ast.walk(stmt)}


def imported_modules(script: Path) -> set[str]:
    """Files of the pedigree modules a script imports, transitively, relative to the repo."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        type_only = _type_only(tree)
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
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


def test_editing_the_csv_reader_reruns_only_the_stages_that_read_files(tmp_path):
    """What a user sees: after an edit to a function of the file readers, `dvc status` names the
    edited file for curate and for sft (which curates sft.replay's general rows), not for any
    other stage (and when their outputs come out the same, DVC re-runs nothing downstream)."""
    import json
    import shutil
    import subprocess
    import sys

    from tests.scratch import clone_working_tree

    clone_working_tree(tmp_path)
    shutil.copy2(REPO / "dvc.lock", tmp_path / "dvc.lock")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    readers = tmp_path / "src/pedigree/data/readers.py"
    text = readers.read_text()
    assert "def _read_csv(" in text
    readers.write_text(text.replace("def _read_csv(", "def _read_csv(  # edited\n", 1))
    dvc = Path(sys.executable).with_name("dvc")
    done = subprocess.run([str(dvc), "status", "--json"], cwd=tmp_path, capture_output=True,
                          text=True, check=True)
    status = json.loads(done.stdout)
    edited = "src/pedigree/data/readers.py"
    stages = {name for name, changes in status.items() for change in changes
              if isinstance(change, dict) and edited in change.get("changed deps", {})}
    assert stages == {"curate", "sft"}


# Modules every stage imports: they import nothing from the stage packages, so an edit there
# re-runs only the stages that use it (and the packages build on the core, not the reverse).
CORE = ("config", "stage", "lineage", "pipeline", "records", "tracking", "files", "errors",
        "launch", "perf", "quant_formats", "eval_metrics", "data_layouts")
STAGE_PACKAGES = ("data", "train", "export", "evals", "model")


@pytest.mark.parametrize("module", CORE)
def test_core_modules_import_no_stage_package(module):
    tree = ast.parse((REPO / "src/pedigree" / f"{module}.py").read_text())
    imported = set()
    for node in ast.walk(tree):  # every import, also the ones inside functions
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
    wrong = sorted(n for n in imported if n.split(".")[:2][-1] in STAGE_PACKAGES
                   and n.startswith("pedigree."))
    assert not wrong, f"core module {module}.py imports {wrong}"

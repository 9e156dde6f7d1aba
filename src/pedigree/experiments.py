"""DVC experiments, as `pedigree report --compare`, `pedigree rebase` and `pedigree sweep` use them.

`dvc exp show --json` lists the workspace, HEAD and every experiment on it (queued runs included
once they finished); each entry (a node) holds its name, its revision and the contents of its
params and metrics files. Experiments are named, so that a later run can find its own again; a
name already taken on the same commit is removed before a new run takes it (DVC refuses it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pedigree.errors import PedigreeError


def _dvc(root: Path, *args: str) -> str:
    """Standard output of `dvc ARGS` run in `root`; on failure a PedigreeError that names the
    command without its flags (`dvc exp remove NAME failed: <its stderr>`)."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        command = " ".join(a for a in args if not a.startswith("-"))
        raise PedigreeError(f"dvc {command} failed: {done.stderr.strip()}")
    return done.stdout


def show_experiments(root: Path) -> list[dict[str, Any]]:
    """`dvc exp show --json`, parsed."""
    return json.loads(_dvc(root, "exp", "show", "--json"))


def experiment_nodes(entries: list[dict[str, Any]], finished: bool = False
                     ) -> Iterator[dict[str, Any]]:
    """Every revision in `dvc exp show --json` output: baselines and their experiments; with
    `finished`, not the queued or running ones (DVC shows those with the workspace's metrics)."""
    for entry in entries:
        yield entry
        for group in entry.get("experiments") or []:
            executor = group.get("executor")
            if finished and isinstance(executor, dict) and executor.get("state") in (
                    "queued", "running"):
                continue
            yield from experiment_nodes(group.get("revs") or [], finished)


def find_experiment(shown: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((node for node in experiment_nodes(shown) if node.get("name") == name), None)


def has_experiment(shown: list[dict[str, Any]], name: str) -> bool:
    return find_experiment(shown, name) is not None


def file_contents(section: dict[str, Any] | None) -> dict[str, Any]:
    """{path: contents} of a node's `params` or `metrics` section (a file it could not read: {})."""
    return {path: (value or {}).get("data") or {} for path, value in (section or {}).items()}


def node_metrics(node: dict[str, Any]) -> dict[str, Any]:
    """{metrics file: contents} of one experiment."""
    return file_contents((node.get("data") or {}).get("metrics"))


def node_params(node: dict[str, Any]) -> dict[str, Any]:
    """The params (params.yaml, nested) one experiment ran with."""
    return file_contents((node.get("data") or {}).get("params")).get("params.yaml", {})


def remove_experiment(root: Path, name: str) -> None:
    """Drop an experiment so a run of the same name can take its place (DVC refuses a name that
    exists on the same commit)."""
    _dvc(root, "exp", "remove", name)


def make_room(root: Path, shown: list[dict[str, Any]], name: str) -> None:
    """Remove experiment `name` if `shown` has one, so that a new run can take the name."""
    if has_experiment(shown, name):
        remove_experiment(root, name)


def run_command(name: str, overrides: list[str], temp: bool = False) -> list[str]:
    """`dvc exp run` of experiment `name` with `-S` overrides (`--temp`: in a temporary
    workspace, which leaves the user's alone)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", *(["--temp"] if temp else []), "-n", name]
    for override in overrides:
        cmd += ["-S", override]
    return cmd

"""Scratch projects for the end-to-end tests: a fresh-clone copy of the working tree, committed
with a pinned date (so two scratch projects made from the same tree have the same commit, and
manifests that record it can be compared byte for byte), and commands run in it with credentials
planted in the environment."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ["base", "curate", "split", "cpt", "sft", "align", "merge", "quantize", "eval"]
OUTS = {"base": "models/base", "curate": "data/curated", "split": "data/split",
        "cpt": "models/cpt", "sft": "models/sft", "align": "models/align", "merge": "models/merged",
        "quantize": "models/quantized", "eval": "metrics"}

# Credentials planted in every command's environment: none may reach anything written or logged.
SECRETS = {"HF_TOKEN": "hf_plantedTokenQ7x93kd", "MLFLOW_TRACKING_PASSWORD": "planted-pw-5c1e4",
           "PEDIGREE_API_KEY": "planted-api-key-77ab", "AWS_SECRET_ACCESS_KEY": "planted-aws-9f0d"}
OUTPUTS: list[str] = []  # everything the commands printed, searched for the planted secrets

# A fixed author and date: the commit id (recorded in every manifest) depends on nothing else.
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
                "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update(SECRETS)
    out.pop("MLFLOW_TRACKING_URI", None)  # the scratch project's own ./mlflow.db
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out['PATH']}"
    out.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # The scratch pipelines are the CPU ones the tests' figures and byte-identity hold for,
    # also on a machine with a GPU.
    out["CUDA_VISIBLE_DEVICES"] = ""
    out.update(extra)
    return out


def run(cmd: list[str], cwd: Path, **extra_env: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True,
                          timeout=1200)
    OUTPUTS.append(proc.stdout + proc.stderr)
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout + proc.stderr


def clone_working_tree(dst: Path) -> None:
    """The files a fresh clone would have, taken from the working tree (uncommitted edits too)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file() and rel != "dvc.lock":
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)


def commit(root: Path, message: str) -> None:
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], root, **GIT_IDENTITY)


def new_project(root: Path, *overrides: str, preset: str = "micro") -> Path:
    """A committed scratch project composed with `experiment=<preset>` and `overrides`."""
    clone_working_tree(root)
    run([sys.executable, "-m", "pedigree.cli", "compose", f"experiment={preset}", *overrides],
        root)
    run(["git", "init", "-q"], root)
    commit(root, preset)
    return root


def manifest(project: Path, stage: str) -> dict:
    return json.loads((project / OUTS[stage] / "lineage.json").read_text())


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the probe's socket closes: reserve nothing)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

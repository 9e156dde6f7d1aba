"""Wall time of the pipeline as a user meets it: a full `dvc repro` (and each stage's share of
it), a no-op `dvc repro`, and an eval-only re-run, in a scratch copy of the working tree (the
repository itself is not touched).

    .venv/bin/python bench/pipeline.py                       # the default (SmolLM2)
    .venv/bin/python bench/pipeline.py --experiment tiny     # the embedded model's smoke run
    .venv/bin/python bench/pipeline.py --experiment micro    # the end-to-end test's configuration

Prints one line per measurement; the figures go in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def stage_times(cmd: list[str], cwd: Path) -> dict[str, float]:
    """Run `dvc repro`, timing each stage from its "Running stage" line to the next one."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MLFLOW_TRACKING_URI", None)
    times: dict[str, float] = {}
    stage, start = "(dvc start-up)", time.perf_counter()
    tail: list[str] = []
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if line.startswith("Running stage '"):
                now = time.perf_counter()
                times[stage] = now - start
                stage, start = line.split("'")[1], now
    times[stage] = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
    return times


def timed(label: str, cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    sh(cmd, cwd)
    seconds = time.perf_counter() - start
    print(f"{label:<28} {seconds:7.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiment", help="a preset of conf/experiment/ (default: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pedigree-bench-") as tmp:
        root = Path(tmp)
        files = sh(["git", "ls-files", "--cached", "--others", "--exclude-standard"], REPO)
        for rel in files.split():
            if (REPO / rel).is_file() and rel != "dvc.lock":
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, root / rel)
        sh([sys.executable, "-m", "pedigree.cli", "compose"]
           + ([f"experiment={args.experiment}"] if args.experiment else []), root)
        sh(["git", "init", "-q"], root)
        sh(["git", "add", "-A"], root)
        sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "bench"], root)
        dvc = [sys.executable, "-m", "dvc", "repro"]
        print(f"configuration: {args.experiment or 'default'}; cpus: {os.cpu_count()}")
        stages = stage_times(dvc, root)
        full = sum(stages.values())
        for stage, seconds in stages.items():
            print(f"  {stage:<26} {seconds:7.1f} s  {seconds / full:6.1%}")
        print(f"{'full dvc repro':<28} {full:7.1f} s", flush=True)
        noop = timed("no-op dvc repro", dvc, root)
        params = root / "params.yaml"
        text = params.read_text()
        params.write_text(text.replace("  batch_size: 32\n", "  batch_size: 16\n", 1))
        if params.read_text() == text:
            sys.exit("could not find eval.batch_size in params.yaml")
        rerun = timed("eval-only re-run", dvc, root)
        print(f"no-op / full ratio            {noop / full:7.3f}")
        print(f"eval-only / full ratio        {rerun / full:7.3f}")


if __name__ == "__main__":
    main()

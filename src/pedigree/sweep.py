"""`pedigree sweep`: a Hydra multirun over the pipeline, one DVC experiment per job.

    pedigree sweep -m sft.learning_rate=1e-4,3e-4 sft=lora,dora
    pedigree sweep -m 'sft.learning_rate=interval(1e-4,3e-3)' hydra/sweeper=tpe

Hydra enumerates the configurations (the basic grid sweeper, or Optuna from conf/hydra/sweeper/)
and launches the jobs (in turn, or through joblib or submitit from conf/hydra/launcher/). Each
job is `dvc exp run --temp -S <its overrides>`: its own temporary workspace (jobs cannot clobber
each other or the user's), unchanged upstream stages (base, curate, split) reused from the DVC
cache, runs logged to the repository's MLflow store tagged `pedigree.sweep`, the experiment in
`dvc exp show`. The job returns the objective (the SFT validation loss by default) so Hydra's
sweepers can optimise it; `pedigree sweep` ends by printing the best job and how to adopt it.

The job function runs inside Hydra (`python -m pedigree.sweep ...`); `main` is the CLI side.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pedigree.errors import PedigreeError
from pedigree.experiments import (
    find_experiment,
    has_experiment,
    make_room,
    node_metrics,
    run_command,
    show_experiments,
)
from pedigree.files import atomic_write_text
from pedigree.stream import run_streamed
from pedigree.tracking import SWEEP_ENV

ROOT_ENV = "PEDIGREE_SWEEP_ROOT"
OBJECTIVE_ENV = "PEDIGREE_SWEEP_OBJECTIVE"
DIRECTION_ENV = "PEDIGREE_SWEEP_DIRECTION"
DEFAULT_OBJECTIVE = "models/sft/metrics.json:val_loss"


def objective_value(shown: list[dict[str, Any]], name: str, objective: str) -> float:
    """The objective (`metrics file:dotted.key`) of experiment `name` in `dvc exp show --json`."""
    node = find_experiment(shown, name)
    if node is None:
        raise PedigreeError(f"experiment {name} not found in `dvc exp show`")
    path, _, key = objective.partition(":")
    value: Any = node_metrics(node).get(path, {})
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, int | float):
        raise PedigreeError(f"experiment {name}: no {key} in {path}")
    return float(value)


def run_job(overrides: list[str], job_num: int) -> float:
    """One sweep job: a DVC experiment in a temporary workspace; returns the objective. A job
    an earlier run of the same sweep finished is read back, not run again."""
    root = Path(os.environ[ROOT_ENV])
    sweep_id = os.environ[SWEEP_ENV]
    objective = os.environ.get(OBJECTIVE_ENV, DEFAULT_OBJECTIVE)
    name = f"{sweep_id}-{job_num}"
    out = root / "sweeps" / sweep_id
    record = out / f"job-{job_num}.json"
    shown = show_experiments(root)
    # Finished by an earlier run of this sweep: its record has these overrides and its
    # experiment is still there. An experiment without such a record (a run killed mid-job, or
    # a sweeper that suggested differently) is replaced.
    earlier = (record.is_file() and json.loads(record.read_text())["overrides"] == overrides
               and has_experiment(shown, name))
    if not earlier:
        make_room(root, shown, name)
        code, output = run_streamed(run_command(name, overrides, temp=True), root, f"[{name}] | ")
        if code:
            raise PedigreeError(f"sweep job {name} ({' '.join(overrides)}) failed (exit "
                                f"{code}):\n{output[-3000:]}")
        shown = show_experiments(root)
    value = objective_value(shown, name, objective)
    result = {"job": job_num, "experiment": name, "overrides": overrides,
              "objective": objective, "value": value}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(result, indent=2) + "\n")
    print(f"[sweep] {name}: {' '.join(overrides)} -> {objective} = {value:.6g}"
          + (" (finished in an earlier run of this sweep)" if earlier else ""), flush=True)
    # Hydra's optimising sweepers minimise (conf/hydra/sweeper/tpe.yaml): signed, so that
    # minimising it follows --direction either way.
    return value if os.environ.get(DIRECTION_ENV, "minimize") == "minimize" else -value


def _hydra_job(cfg) -> float:  # cfg unused: DVC composes the config from the overrides
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    return run_job(list(hc.overrides.task), int(hc.job.num))


def sweep_id(args: list[str], commit: str) -> str:
    """A short id for the sweep: a hash of the arguments and the commit it starts from, so that
    the same sweep run again (after a failed or interrupted job) resumes: jobs it finished are
    read back, the rest run."""
    return "sweep-" + hashlib.sha256(json.dumps([args, commit]).encode()).hexdigest()[:8]


def best(results: list[dict[str, Any]], direction: str) -> dict[str, Any]:
    pick = min if direction == "minimize" else max
    return pick(results, key=lambda r: r["value"])


def main(args: list[str], root: Path, objective: str, direction: str) -> int:
    """Run the multirun, then print every job and the best configuration."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True).stdout.strip()
    if not head:
        raise PedigreeError(f"{root.resolve()}: no git commit to run DVC experiments from; "
                            "commit first (`git init`, `git add -A`, `git commit`)")
    sid = sweep_id(args, head)
    env = {**os.environ, SWEEP_ENV: sid, ROOT_ENV: str(root.resolve()),
           OBJECTIVE_ENV: objective, DIRECTION_ENV: direction}
    out = root / "sweeps" / sid
    cmd = [sys.executable, "-m", "pedigree.sweep", "--multirun", "--config-dir",
           str((root / "conf").resolve()), "--config-name", "config", *args,
           f"hydra.sweep.dir={out.resolve()}", "hydra.job.chdir=false"]
    print(f"[sweep] {sid}: {' '.join(args)}", flush=True)
    done = subprocess.run(cmd, cwd=root, env=env)
    results = [json.loads(p.read_text()) for p in sorted(out.glob("job-*.json"))]
    if done.returncode or not results:
        raise PedigreeError(f"sweep {sid} failed (exit {done.returncode}); jobs finished: "
                            f"{len(results)}")
    top = best(results, direction)
    print(f"\n[sweep] {sid}: {len(results)} jobs, {objective} ({direction}):")
    for r in sorted(results, key=lambda r: r["job"]):
        mark = "*" if r is top else " "
        print(f"  {mark} {r['experiment']}  {r['value']:.6g}  {' '.join(r['overrides'])}")
    sets = " ".join(f"-S '{o}'" for o in top["overrides"])
    print(f"\nbest: {top['experiment']} ({objective} = {top['value']:.6g})")
    print(f"adopt it:  dvc exp apply {top['experiment']}      (its results, into the workspace)")
    print(f"   or run: dvc exp run {sets}")
    atomic_write_text(out / "best.json", json.dumps(top, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    import hydra

    hydra.main(version_base=None, config_path=None, config_name="config")(_hydra_job)()

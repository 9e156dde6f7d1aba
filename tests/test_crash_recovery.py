"""SIGKILL the pipeline at a random point while each stage runs: nothing half-written ever
appears at a declared output path, and the next `dvc repro` recovers (training resumes from its
checkpoint).

The kill points are drawn from a seeded generator (PEDIGREE_KILL_SEED, default 0, printed in
every failure) so a failure can be replayed; set another seed to explore other points.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import scratch
from tests.scratch import OUTS, STAGES, new_project, run

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("PEDIGREE_KILL_SEED", "0"))
# Rough seconds each stage runs on the micro configuration (2-core CPU): a kill lands uniformly
# in [0, this] after the stage starts (for sft, after its first complete checkpoint); a stage
# that finishes first is run again with a delay drawn within the time it took.
SPAN = {"base": 8, "curate": 6, "split": 4, "cpt": 2, "sft": 3, "align": 8, "merge": 6,
        "quantize": 6, "eval": 8}


def _start(project: Path, log: Path, *args: str) -> subprocess.Popen:
    out = open(log, "w")  # a file, not a pipe: nobody reads a pipe while we wait
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", *args], cwd=project,
                            env=scratch.env(PYTHONUNBUFFERED="1"), stdout=out,
                            stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own process group: dvc + the stage
    out.close()
    return proc


def _wait_for(proc: subprocess.Popen, ready, what: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"dvc repro ended before {what}:\n{log.read_text()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def assert_nothing_half_written(project: Path, context: str) -> None:
    """Every declared output is absent or whole: its manifest lists exactly the files present,
    with their hashes; perf/sft.json (not cached) is valid JSON; dvc.lock parses."""
    from pedigree.lineage import sha256_file

    for stage, rel in OUTS.items():
        out = project / rel
        if not out.exists():
            continue
        where = f"{context}: {rel}"
        manifest_path = out / "lineage.json"
        assert manifest_path.is_file(), f"{where} exists without its manifest: half-written"
        manifest = json.loads(manifest_path.read_text())
        assert manifest["stage"] == stage, where
        listed = {o["path"]: o["sha256"] for o in manifest["outputs"]}
        present = {f"{rel}/{p.relative_to(out).as_posix()}" for p in out.rglob("*")
                   if p.is_file() and p.name != "lineage.json"}
        assert present == set(listed), f"{where}: files differ from the manifest " \
                                       f"({sorted(present ^ set(listed))[:5]})"
        for path, digest in listed.items():
            assert sha256_file(project / path) == digest, f"{where}: {path} differs"
    perf = project / "perf/sft.json"
    if perf.exists():
        json.loads(perf.read_text())
    lock = project / "dvc.lock"
    if lock.exists():  # DVC writes it after each stage: every entry it holds is complete
        stages = yaml.safe_load(lock.read_text())["stages"]
        for name, entry in stages.items():
            assert entry["cmd"] and entry["deps"] and entry["outs"], f"{context}: dvc.lock {name}"
            for item in entry["deps"] + entry["outs"]:
                assert item.get("md5") and "size" in item, f"{context}: dvc.lock {name} {item}"


def _stage_running(group: int, stage: str) -> bool:
    """Whether the stage's own script still runs in the process group. Kills land only then:
    once it exits, DVC writes dvc.lock in place (truncate, then write), which a kill can cut
    short; that is DVC's bookkeeping, not a stage output."""
    script = f"stages/{stage}.py".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) == group and script in (entry / "cmdline").read_bytes():
                return True
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue  # exited while we looked
    return False


def _sft_checkpointed(project: Path) -> bool:
    return any((project / "checkpoints/sft").glob("checkpoint-*/pedigree-complete"))


def _kill_during(project: Path, stage: str, rng: random.Random, logs: Path) -> str:
    """Run the pipeline up to `stage` and SIGKILL it at a random point while `stage` runs.
    When the stage finishes before the kill, it is forced to run again with a delay drawn within
    the time it took. Returns where the kill landed."""
    span = SPAN[stage]
    for attempt in range(4):
        log = logs / f"{stage}-{attempt}.log"
        # The first try also re-runs what earlier kills left undone; retries force the stage.
        proc = _start(project, log, *(["-f", "-s"] if attempt else []), stage)
        _wait_for(proc, lambda proc=proc: _stage_running(proc.pid, stage),
                  f"stage {stage} to start", log)
        if stage == "sft":  # kill after a checkpoint, so the next run must resume from it
            _wait_for(proc, lambda: _sft_checkpointed(project), "an SFT checkpoint", log)
        start = time.monotonic()
        delay = rng.uniform(0, span)
        while _stage_running(proc.pid, stage) and time.monotonic() - start < delay:
            time.sleep(0.02)
        if _stage_running(proc.pid, stage):
            _kill(proc)
            return f"seed {SEED}: killed {delay:.2f} s into {stage} (try {attempt + 1})"
        assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
        span = time.monotonic() - start  # the stage's real duration: draw again within it
    raise AssertionError(f"seed {SEED}: {stage} always finished before the kill")


def test_sigkill_in_every_stage_leaves_nothing_half_written_and_repro_recovers(
        tmp_path_factory):
    rng = random.Random(SEED)
    # Checkpoints every 4 SFT steps (12 in all) and every 2 DPO steps, so a kill can land after one.
    project = new_project(tmp_path_factory.mktemp("killed"), "sft.save_steps=4",
                          "align.save_steps=2")
    logs = tmp_path_factory.mktemp("logs")
    resume_expected = False
    for stage in STAGES:
        context = _kill_during(project, stage, rng, logs)
        assert_nothing_half_written(project, context)
        if stage == "sft":
            resume_expected = not (project / OUTS["sft"]).exists() and _sft_checkpointed(project)
    out = run([sys.executable, "-m", "dvc", "repro"], project, PYTHONUNBUFFERED="1")
    assert "Traceback" not in out, out[-3000:]
    assert_nothing_half_written(project, "after the final repro")
    if resume_expected:  # the SFT kill left a checkpoint: some later run resumed from it
        text = "".join(p.read_text() for p in logs.glob("align-*.log"))
        assert "[sft] resuming from checkpoints/sft/checkpoint-" in text, text[-3000:]
    for stage, rel in OUTS.items():
        assert (project / rel / "lineage.json").is_file(), stage
    status = run([sys.executable, "-m", "dvc", "status"], project)
    assert "up to date" in status, status
    # The recovered project audits clean: files, manifests, dvc.lock and MLflow runs agree.
    run([sys.executable, "-m", "pedigree.cli", "audit"], project)

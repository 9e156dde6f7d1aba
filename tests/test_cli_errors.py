"""One error contract: every `pedigree` command, run into each failure a user can cause, exits
with its documented code (README: Exit codes) and one message naming the file, key or value,
never a traceback.

Each case builds what it needs in a scratch directory by writing small files (no training, no
pipeline run) and runs the command as a user would, in a subprocess."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pedigree import errors, lineage
from pedigree.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
OK, USER, USAGE, NEWER = errors.EXIT_OK, errors.EXIT_USER, errors.EXIT_USAGE, errors.EXIT_NEWER


# ----------------------------------------------------------------------------- scratch state
def project(root: Path) -> None:
    """conf/, dvc.yaml, params.yaml and champion.json as the repository ships them."""
    shutil.copytree(REPO / "conf", root / "conf")
    for name in ("dvc.yaml", "params.yaml", "champion.json"):
        shutil.copy2(REPO / name, root / name)


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def edit_params(root: Path, old: str, new: str) -> None:
    text = (root / "params.yaml").read_text()
    assert old in text, old
    (root / "params.yaml").write_text(text.replace(old, new, 1))


def manifest(root: Path, rel: str, stage: str, digest: str, inputs=(), upstream=()) -> None:
    """A lineage.json with every key read_manifest checks (values small but well-formed)."""
    values = {
        "schema_version": getattr(lineage, "SCHEMA_VERSION", 1), "stage": stage,
        "inputs": list(inputs), "outputs": [], "outputs_sha256": digest,
        "upstream": list(upstream), "roots": {"data_sha256": "d" * 64, "base_model": None},
        "params": {}, "params_sha256": "p" * 64,
        "code": {"git_commit": None, "dirty": None, "source_sha256": "s" * 64},
        "versions": {}, "compute": None, "seed": 0, "details": {},
    }
    write(root, f"{rel}/{lineage.MANIFEST}",
          json.dumps({k: values.get(k) for k in lineage.MANIFEST_KEYS}))


def gated(passed: bool = True) -> Callable[[Path], None]:
    """A project whose eval stage has run: metrics/ judged models/merged; champion.json as the
    gate saw it."""
    def setup(root: Path) -> None:
        project(root)
        merged = "m" * 64
        manifest(root, "models/merged", "merge", merged)
        champion = lineage.sha256_file(root / "champion.json")
        manifest(root, "metrics", "eval", "e" * 64,
                 inputs=[{"path": "champion.json", "sha256": champion}],
                 upstream=[{"path": "models/merged", "stage": "merge", "outputs_sha256": merged}])
        write(root, "metrics/gate.json", json.dumps({
            "schema_version": 1, "passed": passed, "candidate": "merged",
            "candidate_sha256": merged, "champion": None, "task_metric": "task_score",
            "checks": [], "lower_is_better": [],
            "reasons": ["pass: task_score over the base" if passed
                        else "FAIL: task_score: -0.2 vs the base"]}))
    return setup


def then(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        for step in steps:
            step(root)
    return setup


def files(**texts: str) -> Callable[[Path], None]:
    """Write files: keyword = path with `__` for `/` and `_dot_` for `.`."""
    def setup(root: Path) -> None:
        for key, text in texts.items():
            write(root, key.replace("__", "/").replace("_dot_", "."), text)
    return setup


def params(old: str, new: str) -> Callable[[Path], None]:
    return lambda root: edit_params(root, old, new)


def nothing(root: Path) -> None:
    pass


CURATED = then(files(rows_dot_jsonl=json.dumps({"prompt": "What is two plus two?",
                                                 "completion": "Four, of course."}) + "\n"),
               lambda root: run(root, ["curate", "rows.jsonl", "--out", "cur",
                                       "--min-kept-fraction", "0"], check=True))


# ----------------------------------------------------------------------------- the table
# (id, setup, argv, exit code, what stderr must name)
CASES = [
    # usage: what argparse refuses, and what a command refuses of its command line
    ("no-command", nothing, [], USAGE, "the following arguments are required"),
    ("unknown-command", nothing, ["bogus"], USAGE, "invalid choice: 'bogus'"),
    ("unknown-option", nothing, ["report", "--bogus"], USAGE, "unrecognized arguments: --bogus"),
    ("missing-argument", nothing, ["lineage"], USAGE, "required: path"),
    ("bad-choice", nothing, ["lineage", "x", "--format", "xml"], USAGE, "invalid choice: 'xml'"),
    ("base-without-subcommand", nothing, ["base"], USAGE, "required: base_command"),
    ("not-a-number", nothing, ["curate", "x", "--out", "o", "--min-tokens", "two"], USAGE,
     "--min-tokens: invalid int value: 'two'"),
    ("curate-option-out-of-range", files(x_dot_jsonl="{}\n"),
     ["curate", "x.jsonl", "--out", "o", "--threshold", "2"], USAGE, "--threshold 2.0"),
    ("curate-no-workers", files(x_dot_jsonl="{}\n"),
     ["curate", "x.jsonl", "--out", "o", "--workers", "0"], USAGE, "--workers 0"),
    ("curate-bounds-crossed", files(x_dot_jsonl="{}\n"),
     ["curate", "x.jsonl", "--out", "o", "--min-tokens", "9", "--max-tokens", "3"], USAGE,
     "min_tokens=9 > max_tokens=3"),
    ("curate-unknown-format", files(x_dot_jsonl="{}\n"),
     ["curate", "x.jsonl", "--out", "o", "--format", "yaml"], USAGE, "format 'yaml'"),
    ("curate-bad-columns", files(x_dot_jsonl="{}\n"),
     ["curate", "x.jsonl", "--out", "o", "--columns", "prompt"], USAGE, "--columns prompt"),
    ("split-option-out-of-range", CURATED, ["split", "cur", "--out", "sp", "--val-fraction",
                                            "1.5"], USAGE, "--val-fraction 1.5"),
    ("sweep-without-overrides", nothing, ["sweep"], USAGE, "give overrides"),
    ("sweep-bad-objective", nothing, ["sweep", "--objective", "val_loss", "a=1"], USAGE,
     "--objective val_loss: expected METRICS_FILE:KEY"),
    # compose: conf/ and its overrides
    ("compose-no-conf", nothing, ["compose"], USER, "conf/"),
    ("compose-bad-value", project, ["compose", "sft.learning_rate=5"], USER,
     "params.yaml: invalid configuration\n  sft.learning_rate = 5"),
    ("compose-unknown-key", project, ["compose", "+sft.learnin_rate=1"], USER,
     "sft.learnin_rate: unknown key"),
    ("compose-key-not-in-conf", project, ["compose", "sft.learnin_rate=1"], USER,
     "Could not override 'sft.learnin_rate'"),
    ("compose-unknown-experiment", project, ["compose", "experiment=nope"], USER,
     "Could not find 'experiment/nope'"),
    # params.yaml, as the commands that read it meet it
    ("audit-no-params", files(dvc_dot_yaml="stages: {}\n"), ["audit"], USER,
     "params.yaml: not found; run `pedigree compose`"),
    ("audit-bad-value", then(project, params("seed: 42", "seed: -1")), ["audit"], USER,
     "params.yaml: invalid configuration\n  seed = -1"),
    ("audit-unknown-key", then(project, params("seed: 42", "seed: 42\nsed: 1")), ["audit"],
     USER, "sed: unknown key"),
    ("audit-broken-yaml", then(project, params("seed: 42", "seed: [42")), ["audit"], USER,
     "params.yaml: not valid YAML"),
    ("promote-no-params", nothing, ["promote"], USER, "params.yaml: not found"),
    ("promote-bad-value", then(project, params("seed: 42", "seed: true")), ["promote"], USER,
     "seed = True"),
    # manifests and the files stages write
    ("audit-no-dvc-yaml", nothing, ["audit", "--no-mlflow"], USER, "dvc.yaml: not found"),
    ("audit-conflicted-dvc-lock", then(project, files(dvc_dot_lock=(
        "schema: '2.0'\n<<<<<<< HEAD\nstages: {}\n=======\nstages: []\n>>>>>>> other\n"))),
     ["audit", "--no-mlflow"], USER, "dvc.lock: not a dvc.lock DVC can read"),
    ("audit-nothing-built", project, ["audit", "--no-mlflow"], USER,
     "no stage outputs with a manifest; run `dvc repro` first"),
    ("lineage-not-an-artifact", files(x_dot_txt="x"), ["lineage", "x.txt"], USER,
     "lineage.json in it or any parent; not a pipeline artifact"),
    ("lineage-broken-manifest", files(data__split__lineage_dot_json='{"stage": "split"'),
     ["lineage", "data/split"], USER, "data/split/lineage.json: not valid JSON"),
    ("lineage-missing-upstream", lambda root: manifest(
        root, "data/split", "split", "s" * 64,
        upstream=[{"path": "data/curated", "stage": "curate", "outputs_sha256": "c" * 64}]),
     ["lineage", "data/split", "--no-mlflow"], USER,
     "data/curated/lineage.json: no lineage manifest"),
    ("report-nothing-built", project, ["report"], USER,
     "metrics/lineage.json: not found; run `dvc repro` first"),
    ("report-broken-eval", then(gated(), files(metrics__eval_dot_json="{")), ["report"], USER,
     "metrics/eval.json: not valid JSON"),
    ("report-compare-not-dvc", nothing, ["report", "--compare"], USER, "dvc exp show failed"),
    ("hash-missing", nothing, ["hash", "nope"], USER, "nope: no such file or directory"),
    # the gate and the champion
    ("promote-nothing-gated", project, ["promote"], USER,
     "metrics/gate.json: not found; the pipeline writes it: run `dvc repro`"),
    ("promote-broken-gate", then(gated(), files(metrics__gate_dot_json="[1, 2")), ["promote"],
     USER, "metrics/gate.json: not valid JSON"),
    ("promote-gate-missing-keys", then(gated(), files(metrics__gate_dot_json='{"passed": 1}')),
     ["promote", "--dry-run"], USER, "metrics/gate.json: not a valid gate record"),
    ("promote-gate-failed", gated(passed=False), ["promote"], USER,
     "refused: the gate failed:\n  FAIL: task_score"),
    ("promote-champion-broken", then(gated(), files(champion_dot_json='{"champion": ')),
     ["promote"], USER, "champion.json: not valid JSON"),
    ("promote-champion-not-a-record", then(gated(), files(champion_dot_json='{"champion": 3}')),
     ["promote"], USER, "champion.json: the champion record lacks registered_model"),
    ("promote-champion-no-key", then(gated(), files(champion_dot_json="{}")), ["promote"], USER,
     'champion.json: no "champion" key'),
    ("promote-champion-missing", then(gated(), lambda root: (root / "champion.json").unlink()),
     ["promote"], USER, "champion.json: not found; it ships with the repository"),
    # curate and split on the user's files
    ("curate-missing-input", nothing, ["curate", "nope.jsonl", "--out", "o"], USER,
     "nope.jsonl: no such file or directory"),
    ("curate-kept-too-little", files(x_dot_jsonl='{"foo": 1}\n{"bar": 2}\n'),
     ["curate", "x.jsonl", "--out", "o"], USER,
     "curation kept too little\nsource 'x.jsonl': kept 0 of 2 rows"),
    ("split-not-curated", nothing, ["split", "nope", "--out", "sp"], USER,
     "nope: not a curation output (no report.json)"),
    ("split-bad-assignments", then(CURATED, files(sp__assignments_dot_tsv="abc\tnowhere\n")),
     ["split", "cur", "--out", "sp"], USER, "sp/assignments.tsv:1: expected"),
    # base models
    ("base-check-no-conf", nothing, ["base", "check"], USER,
     "conf/model: not found; run from the project root"),
    ("base-check-unknown-model", project, ["base", "check", "--model", "nope"], USER,
     "conf/model/nope.yaml: not found; --model takes one of"),
    ("base-check-not-hub", project, ["base", "check", "--model", "tiny"], USER,
     "conf/model/tiny.yaml: not a hub model"),
    ("base-check-broken-yaml", files(conf__model__m_dot_yaml="source: [hub\n"),
     ["base", "check"], USER, "conf/model/m.yaml: not valid YAML"),
    ("base-check-short-revision", files(conf__model__m_dot_yaml=(
        "name: m\nsource: hub\nid: org/m\nrevision: abc\n")), ["base", "check"], USER,
     "conf/model/m.yaml: invalid configuration"),
    ("rebase-unknown-model", project, ["rebase", "nope"], USER,
     "conf/model/nope.yaml: no such model config; known: "),
    ("sweep-no-commit", project, ["sweep", "-m", "sft.lora.r=4,8"], USER,
     "no git commit to run DVC experiments from"),
    # params: the schemas' keys
    ("params-unknown-key", nothing, ["params", "sft.lora.rr"], USER,
     "unknown key 'sft.lora.rr'; did you mean: sft.lora.r"),
    ("params-write-with-key", nothing, ["params", "sft", "--write"], USAGE,
     "--write regenerates the whole reference"),
]


def env(root: Path) -> dict[str, str]:
    out = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               GIT_CEILING_DIRECTORIES=str(root.parent))  # no enclosing repository
    out.pop("MLFLOW_TRACKING_URI", None)
    return out


def run(root: Path, argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pedigree.cli", *argv], cwd=root, env=env(root),
                          capture_output=True, text=True, timeout=120, check=False)
    if check:
        assert proc.returncode == OK, proc.stderr
    return proc


def commands(parser=None) -> set[str]:
    """Every command the parser knows, subcommands spelled out (`base check`)."""
    import argparse

    parser = parser or build_parser()
    names = set()
    for action in parser._actions:  # argparse keeps no public list of subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                inner = commands(sub)
                names |= {f"{name} {n}" for n in inner} if inner else {name}
    return names


def _argv_command(argv: list[str]) -> str:
    known = commands()
    return next((c for c in known if argv[:len(c.split())] == c.split()), "")


@pytest.mark.parametrize(("setup", "argv", "code", "named"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_failure_exits_with_its_code_and_names_what_to_fix(tmp_path, setup, argv, code, named):
    root = tmp_path / "project"
    root.mkdir()
    setup(root)
    proc = run(root, argv)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert named in proc.stderr, proc.stderr
    if code == USER:  # one message, prefixed with the command that failed
        command = _argv_command(argv)
        assert f"pedigree {command}: " in proc.stderr or "audit failed: " in proc.stderr, \
            proc.stderr


def test_every_command_is_run_into_a_failure():
    covered = {_argv_command(argv) for _, _, argv, _, _ in CASES}
    assert commands() <= covered, f"add cases for: {sorted(commands() - covered)}"


def test_a_stage_script_exits_user_on_a_user_error(tmp_path):
    """Stage scripts (install_excepthook) keep the same contract: EXIT_USER, one line."""
    script = ("from pedigree.errors import MissingInputError, install_excepthook\n"
              "install_excepthook()\n"
              "raise MissingInputError('data/raw: not found; put your data there')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == USER and "Traceback" not in proc.stderr
    assert proc.stderr == "error: data/raw: not found; put your data there\n"


def test_a_bug_keeps_its_traceback(tmp_path):
    script = ("from pedigree.errors import install_excepthook\n"
              "install_excepthook()\n"
              "raise KeyError('a bug')\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode != OK and "Traceback" in proc.stderr


def test_exit_codes_are_documented_once_as_defined():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Exit codes"):readme.index("## Guarantees")]
    rows = dict(re.findall(r"^\| (\d+) \| (.+) \|$", section, re.MULTILINE))
    defined = {name: code for name, code in vars(errors).items() if name.startswith("EXIT_")}
    assert set(rows) == {str(c) for c in defined.values()}
    assert "newer revision" in rows[str(NEWER)] and "unknown command" in rows[str(USAGE)]
    assert readme.count("## Exit codes") == 1
    # Elsewhere a code is pointed to, not restated: no sentence about exiting lists numbers.
    import argparse

    from pedigree import basecheck, cli

    codes = {str(c) for c in defined.values()}
    for name, doc in (("cli", cli.__doc__), ("basecheck", basecheck.__doc__)):
        assert "README: Exit codes" in doc or "README (Exit codes)" in doc, name
        for sentence in re.split(r"\.\s|\n\n", doc):
            if "exit" in sentence.lower():
                assert not codes & set(re.findall(r"\b\d+\b", sentence)), (name, sentence)
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    base_help = sub.choices["base"].format_help()  # built from EXIT_NEWER, the only code named
    assert codes & set(re.findall(r"\b\d+\b", base_help)) == {str(NEWER)}, base_help

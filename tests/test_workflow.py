"""The scheduled rebase workflow: valid, scheduled, and every command it calls exists."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from pedigree.basecheck import Pin, as_json
from pedigree.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github/workflows/rebase.yml"


def _steps() -> list[dict]:
    flow = yaml.safe_load(WORKFLOW.read_text())
    assert flow["name"] == "rebase"
    # PyYAML reads the `on:` key as True (YAML 1.1 boolean).
    triggers = flow.get("on", flow.get(True))
    [schedule] = triggers["schedule"]
    fields = schedule["cron"].split()
    assert len(fields) == 5 and all(re.fullmatch(r"[\d*/,-]+", f) for f in fields)
    assert "workflow_dispatch" in triggers
    [job] = flow["jobs"].values()
    return job["steps"]


def test_workflow_calls_only_commands_that_exist():
    scripts = [s["run"] for s in _steps() if "run" in s]
    assert scripts[0] == "make install"
    assert "install:" in (REPO / "Makefile").read_text()
    parser = build_parser()
    calls = []
    for script in scripts:
        for line in script.splitlines():
            if ".venv/bin/pedigree " in line:
                words = shlex.split(line.split(".venv/bin/pedigree ", 1)[1].split("|")[0]
                                    .split(">")[0].replace('"$model"', "tiny")
                                    .replace('"$rev"', "a" * 40))
                parser.parse_args(words)  # exits (SystemExit) on an unknown command or option
                calls.append(words[0])
    assert calls == ["base", "rebase"]


def test_workflow_reads_fields_base_check_writes():
    script = next(s["run"] for s in _steps() if "jq" in s.get("run", ""))
    fields = set(re.findall(r"\.(\w+)\b", script.split("jq -r")[1].split("base-check.json")[0]))
    written = as_json([Pin(model="m", id="org/m", pinned="a" * 40, latest="b" * 40)])[0]
    assert fields <= set(written), fields - set(written)
    json.dumps(written)

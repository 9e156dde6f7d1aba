"""`pedigree base check` against a local mirror (a Hugging Face cache layout), offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pedigree.basecheck import as_text, check
from pedigree.cli import main
from pedigree.errors import EXIT_NEWER, PedigreeError

OLD, NEW = "a" * 40, "b" * 40


def _mirror(root: Path, latest: str) -> Path:
    repo = root / "hub" / "models--org--m"
    for rev, weights in ((OLD, b"old"), (NEW, b"new")):
        (repo / "snapshots" / rev).mkdir(parents=True)
        (repo / "snapshots" / rev / "model.safetensors").write_bytes(weights)
        (repo / "snapshots" / rev / "config.json").write_text("{}")
    (repo / "snapshots" / NEW / "generation_config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(latest + "\n")
    return root / "hub"


def _conf(root: Path) -> Path:
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "model" / "m.yaml").write_text(
        f"name: m\nsource: hub\nid: org/m\nrevision: '{OLD}'\n")
    (root / "conf" / "model" / "tiny.yaml").write_text("name: tiny\nsource: build\n")
    return root / "conf"


def test_a_newer_revision_is_found_with_what_changed(tmp_path):
    conf, mirror = _conf(tmp_path), _mirror(tmp_path, NEW)
    [pin] = check(conf, mirror)  # the built model is not a hub pin
    assert pin.changed and pin.latest == NEW and pin.source == str(mirror)
    assert pin.files == {"added": ["generation_config.json"], "removed": [],
                         "modified": ["model.safetensors"]}
    text = as_text([pin])
    assert f"m: org/m has a newer revision: {OLD[:12]} -> {NEW}" in text
    assert f"pedigree rebase m --revision {NEW}" in text


def test_cli_exit_codes_and_json(tmp_path, capsys):
    conf = _conf(tmp_path)
    mirror = _mirror(tmp_path, OLD)
    args = ["base", "check", "--conf", str(conf), "--mirror", str(mirror)]
    assert main(args) == 0
    assert "is current" in capsys.readouterr().out
    (mirror / "models--org--m" / "refs" / "main").write_text(NEW)
    assert main([*args, "--format", "json"]) == EXIT_NEWER
    [entry] = json.loads(capsys.readouterr().out)
    assert entry["changed"] and entry["pinned"] == OLD and entry["latest"] == NEW


def test_errors_name_the_file(tmp_path, capsys):
    conf = _conf(tmp_path)
    with pytest.raises(PedigreeError, match="refs/main: not found; the mirror has no org/m"):
        check(conf, tmp_path / "empty")
    (conf / "model" / "bad.yaml").write_text("name: x\nsource: hub\nid: org/x\nrevision: 1234\n")
    assert main(["base", "check", "--conf", str(conf), "--mirror", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml: invalid configuration\n  revision = 1234: Input should be a valid string" \
        in err
    (conf / "model" / "bad.yaml").write_text("name: x\nsource: hub\nid: org/x\nrevision: abc\n")
    assert main(["base", "check", "--conf", str(conf), "--mirror", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "bad.yaml: invalid configuration" in err
    assert "revision='abc': a hub model must be pinned by its full 40-character" in err


def test_rebase_command_keeps_the_revision_a_string():
    from pedigree.rebase import experiment_command, stages_run

    cmd = experiment_command("llama", "1234567890" * 4, ["experiment=micro"])
    assert cmd[-6:] == ["-S", "model=llama", "-S", "model.revision='" + "1234567890" * 4 + "'",
                        "-S", "experiment=micro"]
    ran, reused = stages_run("Stage 'curate' didn't change, skipping\nRunning stage 'base':\n"
                             "Stage 'split' didn't change, skipping\nRunning stage 'sft':\n")
    assert ran == ["base", "sft"] and reused == ["curate", "split"]

"""`pedigree params`: the configuration reference, generated from the schemas. Every key has a
description; a key's type, default, allowed values and bounds are printed; an unknown key is an
error naming the keys it may have meant; each default lives in the schema only (conf/ files hold
what their choice changes, and conf/schema_defaults.yaml is generated and current)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pedigree import config, paramdoc
from pedigree.cli import build_parser, main
from pedigree.config import ConfigError, parse_params

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["params", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_leaf_prints_its_type_default_bounds_and_description(capsys):
    code, out, _ = run(capsys, "sft.lora.r")
    assert code == 0
    assert out == ("sft.lora.r: int = 16   allowed: >= 1\n    rank of the update; also loha's and "
                   "lokr's rank, vera's (shared random projections) and adalora's average rank "
                   "after pruning\n")
    # A nested section's own default: DPO's adapter is smaller than SFT's.
    assert run(capsys, "align.lora.r")[1].startswith("align.lora.r: int = 8 ")


def test_a_section_prints_its_subtree(capsys):
    code, out, _ = run(capsys, "sft.lora")
    keys = [line.split(":")[0] for line in out.splitlines() if not line.startswith(" ")]
    assert code == 0
    assert keys == ["sft.lora", "sft.lora.r", "sft.lora.alpha", "sft.lora.dropout",
                    "sft.lora.target_modules", "sft.lora.use_rslora", "sft.lora.init",
                    "sft.lora.plus_lr_ratio"]
    # The entries of a list of sections, however the key is spelled.
    for spelling in ("data.sources", "data.sources[]", "data.sources.0"):
        out = run(capsys, spelling)[1]
        assert "data.sources[].weight: float = 1.0   allowed: > 0, <= 100" in out, spelling


def test_an_unknown_key_is_an_error_naming_close_matches(capsys):
    code, out, err = run(capsys, "sft.lora.rank")
    assert code == 1 and out == ""
    assert err.startswith("pedigree params: unknown key 'sft.lora.rank'; did you mean: sft.lora.r")
    # A leaf's name alone names every key that ends in it.
    code, _, err = run(capsys, "learning_rate")
    assert code == 1
    assert "sft.learning_rate" in err and "align.learning_rate" in err


def test_every_field_has_a_description():
    sections = [cls for cls in vars(config).values() if isinstance(cls, type)
                and issubclass(cls, config.Section) and cls is not config.Section]
    assert len(sections) >= 20
    missing = [f"{cls.__name__}.{name}" for cls in sections
               for name, field in cls.model_fields.items() if not field.description]
    assert missing == []
    every = paramdoc.params()
    assert len(every) > 140 and all(p.description for p in every)


def test_allowed_values_of_a_literal_are_printed(capsys):
    out = run(capsys, "sft.method")[1]
    assert ("allowed: lora | qlora | dora | ia3 | loha | lokr | vera | adalora | prompt_tuning | "
            "prefix_tuning | p_tuning | partial | full" in out)
    assert "each: gguf-f32 | gguf-f16 | gguf-q8_0" in run(capsys, "quantize.formats")[1]
    assert "allowed: all-linear, or a list[str]" in run(capsys, "sft.lora.target_modules")[1]
    assert "allowed: source | task" in run(capsys, "split.stratify")[1]


def test_bounds_are_printed(capsys):
    assert "float = 0.1   allowed: > 0, < 1" in run(capsys, "split.validation_fraction")[1]
    assert "int (required)   allowed: >= 256, <= 65536" in run(capsys, "model.build.vocab_size")[1]
    assert "allowed: not empty" in run(capsys, "tracking.experiment")[1]


def test_markdown_is_a_table_per_section(capsys):
    code, out, _ = run(capsys, "gate", "--markdown")
    assert code == 0
    assert out.startswith("**`gate`**: the promotion gate\n\n| Key | Type | Default | Allowed |")
    assert "| `gate.min_task_gain` | float | `0.2` | >= 0 |" in out
    quantize = run(capsys, "quantize", "--markdown")[1]
    assert "models/quantized/&lt;format>/" in quantize  # HTML would swallow <format>


def test_the_command_is_listed_and_imports_no_torch():
    assert "params" in build_parser().format_help()
    code = ("import sys; from pedigree.cli import main; main(['params', 'sft']); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "sft.lora.r: int = 16" in proc.stdout


def test_the_schema_defaults_file_is_current():
    assert (CONF / "schema_defaults.yaml").read_text() == paramdoc.schema_defaults_yaml(), (
        "conf/schema_defaults.yaml is stale: run `pedigree params --write`"
    )


def _leaves(raw: Any, key: str = "") -> dict[str, Any]:
    if isinstance(raw, dict) and raw:
        return {k: v for name, value in raw.items() for k, v in _leaves(value, f"{key}.{name}"
                                                                          if key else name).items()}
    return {key: raw}


# The key that says which choice a file is: `sft=lora` must stay lora whatever the default.
CHOICE_KEYS = {"sft.method"}


@pytest.mark.parametrize("path", sorted(
    p for group in CONF.iterdir() if group.is_dir()
    and group.name not in ("accelerate", "hydra", "chat", "experiment")
    for p in group.glob("*.yaml")), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_group_file_restates_no_default(path):
    """Each default lives in the schema: a group file holds only what its choice changes."""
    defaults = _leaves(yaml.safe_load(paramdoc.schema_defaults_yaml()))
    own = yaml.safe_load(path.read_text()) or {}
    own.pop("defaults", None)
    restated = [key for key, value in _leaves(own, path.parent.name).items()
                if key not in CHOICE_KEYS and key in defaults and defaults[key] == value]
    assert restated == [], f"{path.name} restates the schema's defaults of {restated}"


def test_a_key_conf_leaves_unset_is_an_error():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model"]["name"] = "???"  # a conf/model file without `name`
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert "model.name: no value (??? in conf/)" in str(err.value)
    assert "model.name =" not in str(err.value)  # one message per key, not the type error too


def test_write_regenerates_both_files(tmp_path, monkeypatch, capsys):
    (tmp_path / "conf").mkdir()
    stale = f"# x\n\n{paramdoc.BEGIN}\nstale table\n{paramdoc.END}\n\nend\n"
    (tmp_path / "README.md").write_text(stale)
    monkeypatch.chdir(tmp_path)
    assert main(["params", "--write"]) == 0
    assert "wrote README.md" in capsys.readouterr().out
    text = (tmp_path / "README.md").read_text()
    assert "stale table" not in text and "| `sft.lora.r` | int | `16` | >= 1 |" in text
    assert text.endswith(f"{paramdoc.END}\n\nend\n")
    assert (tmp_path / "conf/schema_defaults.yaml").read_text() == paramdoc.schema_defaults_yaml()
    assert main(["params", "--write"]) == 0 and capsys.readouterr().out == ""  # nothing to do

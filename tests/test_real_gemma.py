"""Gemma 3 270M, a base model with a 262k-token SentencePiece vocabulary, through base, SFT under
the shipped turn format, merge and a GGUF Q8_0 export (`experiment=gemma3-micro`): the export is
read back by transformers and, where llama-cpp-python is installed, by llama.cpp, which must
tokenize the check rows as the merged model's tokenizer does."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader

from pedigree.export.quantize import llama_cpp_available
from tests.scratch import manifest, new_project, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = new_project(tmp_path_factory.mktemp("gemma3"), preset="gemma3-micro")
    run([sys.executable, "-m", "dvc", "repro", "quantize"], root)
    return root


def test_sft_trained_the_base_model_under_the_given_template(project):
    assert manifest(project, "sft")["roots"]["base_model"]["gguf"]["quantization"] == "Q4_K_M"
    template = (project / "models/sft/chat_template.jinja").read_text()
    assert template == (project / "conf/chat/gemma.jinja").read_text()
    metrics = json.loads((project / "models/sft/metrics.json").read_text())
    # four steps at the default learning rate move the base model towards the task's answers
    assert metrics["steps"] == 4 and metrics["val_loss"] < metrics["val_loss_base"], metrics


def test_merge_is_exact(project):
    parity = manifest(project, "merge")["details"]["parity"]
    assert parity["max_abs_logit_diff"] <= parity["tolerance"] == 1e-3


def test_gguf_export_is_gemma3_and_reads_back_as_the_merged_model(project):
    q8 = json.loads((project / "models/quantized/report.json").read_text())["gguf-q8_0"]
    assert q8["perplexity_ratio"] < 1.05 and q8["top1_agreement"] >= 0.9, q8
    reader = GGUFReader(project / "models/quantized" / q8["file"])
    assert reader.fields["general.architecture"].contents() == "gemma3"
    assert reader.fields["tokenizer.ggml.model"].contents() == "llama"  # SentencePiece
    assert "<start_of_turn>" in reader.fields["tokenizer.chat_template"].contents()
    if llama_cpp_available():  # the stage ran check_llama_cpp_tokens and scored its logits
        assert q8["llama_cpp"]["perplexity_ratio"] < 1.05, q8["llama_cpp"]
        assert q8["llama_cpp"]["top1_agreement"] >= 0.9, q8["llama_cpp"]
    modelfile = (project / "models/quantized/gguf-q8_0/Modelfile").read_text()
    assert "<start_of_turn>model" in modelfile and 'PARAMETER stop "<end_of_turn>"' in modelfile
    # the stage rendered its conversations through the three runtimes to the same token ids
    assert q8["template_parity"]["passed"], q8["template_parity"]
    assert "ollama-go" in q8["template_parity"]["runtimes"] or shutil.which("go") is None

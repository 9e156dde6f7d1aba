"""SmolLM2-135M-Instruct, the real default, through every stage of `dvc repro` in a few steps
(`experiment=smollm2-micro`): base from its registry package, curation in its 49k-token
vocabulary, LoRA SFT and DPO under its ChatML template, merge parity, a GGUF Q8_0 export read back
and compared, eval and the gate; then `pedigree audit` and `pedigree lineage`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from tests.scratch import REPO, STAGES, manifest, new_project, run

pytestmark = pytest.mark.slow

PIN = yaml.safe_load((REPO / "conf/model/smollm2.yaml").read_text())["gguf"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = new_project(tmp_path_factory.mktemp("smollm2"), preset="smollm2-micro")
    run([sys.executable, "-m", "dvc", "repro"], root)
    return root


def test_every_model_stage_carries_the_gguf_origin_of_the_base(project):
    # curate and split read only the base's tokenizer file: data roots, no base model root
    for stage in [s for s in STAGES if s not in ("curate", "split")]:
        base = manifest(project, stage)["roots"]["base_model"]
        assert base["id"] == "HuggingFaceTB/SmolLM2-135M-Instruct", stage
        gguf = base["gguf"]
        assert (gguf["package"], gguf["version"]) == (PIN["package"], PIN["version"])
        assert gguf["file_sha256"] == PIN["sha256"]
        assert gguf["dequantized_from"] == "Q4_1"


def test_lineage_names_package_version_and_gguf_hash(project):
    out = run([sys.executable, "-m", "pedigree.cli", "lineage", "models/quantized"], project)
    assert f"{PIN['package']}=={PIN['version']}" in out and PIN["sha256"] in out
    assert "dequantized from Q4_1" in out
    card = (project / "models/merged/README.md").read_text()
    assert PIN["sha256"] in card and "not the authors' original weights" in card


def test_audit_passes(project):
    run([sys.executable, "-m", "pedigree.cli", "audit"], project)


def test_merge_and_gguf_export_behave_like_the_trained_model(project):
    parity = manifest(project, "merge")["details"]["parity"]
    assert parity["max_abs_logit_diff"] <= parity["tolerance"] == 1e-3
    q8 = json.loads((project / "models/quantized/report.json").read_text())["gguf-q8_0"]
    # Q8_0 costs a 135M model up to ~0.8% perplexity (BENCHMARKS.md; llama.cpp, which also rounds
    # activations, ~1.7%), near or past the 1.005 gate: the check must say which, and a broken
    # export (wrong tensor layout, tokenizer) would be far worse.
    readers = [q8, *([q8["llama_cpp"]] if q8["llama_cpp"] else [])]
    assert q8["passed"] == all(r["perplexity_ratio"] <= q8["max_perplexity_ratio"] for r in readers)
    for reader in readers:
        assert reader["perplexity_ratio"] < 1.05 and reader["top1_agreement"] >= 0.9, q8
    modelfile = (project / "models/quantized/gguf-q8_0/Modelfile").read_text()
    assert "<|im_start|>" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    # the stage rendered its conversations through the three runtimes to the same token ids
    assert q8["template_parity"]["passed"], q8["template_parity"]
    assert "ollama-go" in q8["template_parity"]["runtimes"] or shutil.which("go") is None


def test_eval_scores_every_model_on_the_real_tokenizer(project):
    results = json.loads((project / "metrics/eval.json").read_text())
    for model in ("base", "sft", "aligned", "merged", "gguf-q8_0"):
        assert 0 <= results[model]["task_score"] <= 1, model
        assert results[model]["task_loss"] > 0, model
    # The chat probe holds questions the instruct base answers: forgetting is measured on real
    # ability (chosen by its answers in 32 tokens; the micro eval allows 16).
    assert results["base"]["general_chat_score"] >= 0.9
    # The instruct base well prompted (ChatML's system turn, examples as earlier turns).
    for name in ("prompted-0shot", "prompted-1shot", "prompted-3shot"):
        assert 0 <= results[name]["task_score"] <= 1 and results[name]["task_loss"] > 0, name
    gate = json.loads((project / "metrics/gate.json").read_text())
    assert isinstance(gate["passed"], bool) and gate["checks"]
    [prompting] = [c for c in gate["checks"] if c["check"] == "gain over prompting"]
    assert prompting["reference"].startswith("prompted-") and prompting["n"] == 8

"""Merge: QLoRA adapters fold onto the weights they trained against, low-precision dtypes get their
own tolerance, and the model card carries the provenance."""

from __future__ import annotations

from pathlib import Path

import yaml

from pedigree.export.card import model_card
from pedigree.export.merge import DEFAULT_TOLERANCE, merge_policy
from pedigree.model.load import load_tokenizer
from pedigree.model.measure import chat_logits
from pedigree.model.policy import base_kind, describe, policy_base, policy_chain
from pedigree.model.trained import save_trained
from tests.micro_training import VALIDATION, random_adapter, sft_config, train_micro


def test_qlora_merges_onto_the_dequantized_base(micro_model_dir, tmp_path):
    cfg = sft_config("qlora", max_steps=8, eval_steps=8)
    trained = train_micro(micro_model_dir, cfg)[0]
    sft = tmp_path / "sft"
    sft.mkdir()
    save_trained(trained, sft, "qlora", cfg.quant)
    policy = policy_chain(sft, None)
    assert policy["quant"] == {"quant_type": "nf4", "double_quant": True}
    assert base_kind(policy) == "dequantized-nf4" and base_kind(policy, "original") == "original"
    assert "(dequantized-nf4)" in describe(policy, Path("models/base"))

    tokenizer = load_tokenizer(micro_model_dir)
    trained.eval()
    as_trained, mask = chat_logits(trained, tokenizer, VALIDATION[:4], 64)  # 4-bit base + adapter
    errors = {}
    for choice in ("dequantized", "original"):
        merged, parity = merge_policy(policy_base(micro_model_dir, policy, qlora_base=choice),
                                      tokenizer, [sft], VALIDATION[:4], "float32", None, 64)
        assert parity["max_abs_logit_diff"] <= 1e-4  # the fold itself is exact either way
        got, _ = chat_logits(merged, tokenizer, VALIDATION[:4], 64)
        errors[choice] = (got - as_trained)[mask].abs().max().item()
    # Folded onto the weights it trained against, the model behaves like the trained one.
    # (measured: 0.005 against 0.062 after 8 steps on the micro model)
    assert errors["dequantized"] < errors["original"] / 4, errors


def test_low_precision_merges_use_their_own_tolerance(micro_model_dir, tmp_path):
    cfg = sft_config("lora", max_steps=4, eval_steps=4)
    trained = train_micro(micro_model_dir, cfg)[0]
    sft = tmp_path / "sft"
    sft.mkdir()
    save_trained(trained, sft, "lora")
    tokenizer = load_tokenizer(micro_model_dir)
    policy = policy_chain(sft, None)
    for dtype in ("bfloat16", "float16"):
        merged, parity = merge_policy(policy_base(micro_model_dir, policy), tokenizer, [sft],
                                      VALIDATION[:4], dtype, None, 64)
        assert parity["tolerance"] == DEFAULT_TOLERANCE[dtype]
        assert 0 < parity["max_abs_logit_diff"] <= parity["tolerance"]
        assert next(merged.parameters()).dtype.__repr__().endswith(dtype)


def test_model_card_front_matter_and_provenance():
    roots = {"data_sha256": "d" * 64,
             "base_model": {"id": "org/base", "revision": "r" * 40, "sha256": "b" * 64}}
    policy = {"sft_method": "qlora", "align": "orpo", "weights": None,
              "adapters": ["models/sft", "models/align"], "quant": {"quant_type": "nf4"}}
    parity = {"max_abs_logit_diff": 2e-5, "tolerance": 1e-4, "dtype": "float32",
              "top1_agreement": 1.0}
    card = model_card(roots, policy, {"sft": "p" * 64}, {"sft": {"val_loss": 1.5}}, parity,
                      "dequantized-nf4")
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "org/base" and front["library_name"] == "transformers"
    assert {"sft-qlora", "orpo"} <= set(front["tags"])
    assert "| method | SFT qlora + orpo (LoRA) |" in card
    for fact in ("d" * 64, "r" * 40, "b" * 64, "p" * 64, "dequantized-nf4", "| sft: val_loss | 1.5 |"):
        assert fact in card
    assert card == model_card(roots, policy, {"sft": "p" * 64}, {"sft": {"val_loss": 1.5}},
                              parity, "dequantized-nf4")


def test_distribution_compare_figures():
    import torch

    from pedigree.model.measure import distribution_compare

    torch.manual_seed(0)
    ids = torch.randint(0, 50, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    reference = torch.randn(2, 6, 50)
    same = distribution_compare(reference, reference.clone(), ids, mask)
    assert same["perplexity_ratio"] == 1.0 and same["kl_divergence"] == 0.0
    assert same["top1_agreement"] == 1.0 and same["tokens"] == 5 + 3
    noisy = distribution_compare(reference, reference + torch.randn(2, 6, 50), ids, mask)
    assert noisy["kl_divergence"] > 0 and noisy["top1_agreement"] < 1.0
    # Padding positions never count: changing them changes nothing.
    padded = reference.clone()
    padded[1, 4:] = 100.0
    assert distribution_compare(reference, padded, ids, mask) == same


def test_a_format_past_its_gate_is_reported_not_promoted(micro_model_dir, tmp_path):
    from pedigree.config import QuantizeConfig
    from pedigree.export.quantize import check_format, export_format, reference
    from pedigree.model.load import load_causal_lm

    tokenizer = load_tokenizer(micro_model_dir)
    merged = load_causal_lm(micro_model_dir)
    cfg = QuantizeConfig(formats=["gguf-q4_0"], check_rows=4, golden_prompts=2,
                         max_new_tokens=4, max_perplexity_ratio={"gguf-q4_0": 0.5})
    ref = reference(merged, tokenizer, VALIDATION[:4], cfg)
    model, info = export_format("gguf-q4_0", micro_model_dir, tmp_path, tokenizer,
                                VALIDATION[:4], 64)
    result = check_format("gguf-q4_0", model, tokenizer, ref, cfg, 1, info)
    assert result["kl_divergence"] > 0 and result["max_perplexity_ratio"] == 0.5
    assert result["perplexity_ratio"] > 0.5 and result["passed"] is False
    assert (tmp_path / "gguf-q4_0" / "Modelfile").is_file()
    assert result["template_family"] == "pedigree"
    assert 0 <= result["golden_agreement"] <= 1


def _random_adapters(model_dir, tmp_path):
    """Two different rank-4 adapters that really change the model."""
    return [random_adapter(model_dir, tmp_path / f"a{i}", i) for i in range(2)]


def test_weighted_merges_of_several_adapters(micro_model_dir, tmp_path):
    import torch
    from peft import PeftModel

    from pedigree.config import CombineConfig
    from pedigree.model.load import load_causal_lm

    tokenizer = load_tokenizer(micro_model_dir)
    first, second = _random_adapters(micro_model_dir, tmp_path)
    rows = VALIDATION[:4]
    # cat with weights 1, 1 is exactly the sum of both updates: the same model as stacking them.
    cat = CombineConfig(method="cat", adapters=[str(second)], weights=[1.0, 1.0])
    merged, parity = merge_policy(load_causal_lm(micro_model_dir), tokenizer, [first], rows,
                                  "float32", None, 64, cat)
    assert parity["max_abs_logit_diff"] <= 1e-4 and parity["combine"]["method"] == "cat"
    summed, _ = merge_policy(load_causal_lm(micro_model_dir), tokenizer, [first, second], rows,
                             "float32", None, 64)
    a, b = chat_logits(merged, tokenizer, rows, 64), chat_logits(summed, tokenizer, rows, 64)
    assert torch.allclose(a[0], b[0], atol=1e-4)

    # TIES keeps the larger half of each update and resolves signs: a different, checked model.
    ties = CombineConfig(method="ties", adapters=[str(second)], weights=[0.7, 0.3], density=0.5)
    merged, parity = merge_policy(load_causal_lm(micro_model_dir), tokenizer, [first], rows,
                                  "float32", None, 64, ties)
    assert parity["max_abs_logit_diff"] <= 1e-4
    assert not torch.allclose(chat_logits(merged, tokenizer, rows, 64)[0], a[0], atol=1e-3)
    one = PeftModel.from_pretrained(load_causal_lm(micro_model_dir), str(first))
    assert not torch.allclose(chat_logits(one, tokenizer, rows, 64)[0],
                              chat_logits(merged, tokenizer, rows, 64)[0], atol=1e-3)


def test_weighted_merge_config_errors(micro_model_dir, tmp_path):
    import pytest

    from pedigree.config import CombineConfig
    from pedigree.export.merge import CombineError
    from pedigree.model.load import load_causal_lm

    tokenizer = load_tokenizer(micro_model_dir)
    first, second = _random_adapters(micro_model_dir, tmp_path)
    for cfg, match in [
        (CombineConfig(method="cat", adapters=[str(second)], weights=[1.0]), "1 weights for 2"),
        (CombineConfig(method="ties", adapters=[str(second)], weights=[1, 1]), "density"),
    ]:
        with pytest.raises(CombineError, match=match):
            merge_policy(load_causal_lm(micro_model_dir), tokenizer, [first], VALIDATION[:2],
                         "float32", None, 64, cfg)


def test_kquants_without_llama_cpp_say_how_to_get_it(micro_model_dir, tmp_path, monkeypatch):
    import builtins

    import pytest

    from pedigree.export.kquants import KQuantError
    from pedigree.export.quantize import export_format

    real_import = builtins.__import__

    def no_llama_cpp(name, *args, **kwargs):
        if name == "llama_cpp":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_llama_cpp)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    tokenizer = load_tokenizer(micro_model_dir)
    with pytest.raises(KQuantError, match=r"pedigree\[kquants\]"):
        export_format("gguf-q4_k_m", micro_model_dir, tmp_path / "q", tokenizer,
                      VALIDATION[:2], 64)
    assert not list((tmp_path / "q").rglob("*.gguf"))


def test_kquants_through_llama_cpp(micro_model_dir, tmp_path):
    """Runs where llama.cpp's quantizer is installed (`pedigree[kquants]`); skipped here."""
    import shutil

    import pytest

    from pedigree.config import QuantizeConfig
    from pedigree.export.quantize import check_format, export_format, reference
    from pedigree.model.load import load_causal_lm

    if not shutil.which("llama-quantize"):
        pytest.importorskip("llama_cpp")
    tokenizer = load_tokenizer(micro_model_dir)
    cfg = QuantizeConfig(formats=["gguf-q6_k"], check_rows=4, golden_prompts=2)
    ref = reference(load_causal_lm(micro_model_dir), tokenizer, VALIDATION[:4], cfg)
    model, info = export_format("gguf-q6_k", micro_model_dir, tmp_path, tokenizer,
                                VALIDATION[:4], 64)
    result = check_format("gguf-q6_k", model, tokenizer, ref, cfg, 1, info)
    assert info["quantizer"].startswith("llama.cpp") and not list(tmp_path.rglob("*.tmp.gguf"))
    assert result["top1_agreement"] > 0.9 and result["kl_divergence"] < 0.05


def test_gguf_read_by_llama_cpp_matches_the_transformers_reader(micro_model_dir, tmp_path):
    """Runs where llama-cpp-python is installed (`pedigree[kquants]`)."""
    import pytest

    pytest.importorskip("llama_cpp")
    from pedigree.config import QuantizeConfig
    from pedigree.export.quantize import check_format, export_format, reference
    from pedigree.model.load import load_causal_lm

    tokenizer = load_tokenizer(micro_model_dir)
    cfg = QuantizeConfig(formats=["gguf-q8_0"], check_rows=4, golden_prompts=2)
    ref = reference(load_causal_lm(micro_model_dir), tokenizer, VALIDATION[:4], cfg)
    for fmt in ("gguf-f32", "gguf-q8_0"):
        model, info = export_format(fmt, micro_model_dir, tmp_path, tokenizer, VALIDATION[:4], 64)
        result = check_format(fmt, model, tokenizer, ref, cfg, 1, info, tmp_path)
        ours, theirs = result, result["llama_cpp"]
        assert theirs["top1_agreement"] > 0.95, (fmt, theirs)
        assert abs(theirs["perplexity_ratio"] - ours["perplexity_ratio"]) < 0.01, (fmt, theirs)


def test_quantized_card_keeps_the_provenance():
    from pedigree.export.card import quantized_card

    roots = {"data_sha256": "d" * 64,
             "base_model": {"id": "org/base", "revision": "r" * 40, "sha256": "b" * 64}}
    policy = {"sft_method": "lora", "align": None, "weights": None, "adapters": ["models/sft"]}
    parity = {"max_abs_logit_diff": 2e-5, "tolerance": 1e-4, "dtype": "float32",
              "top1_agreement": 1.0}
    merged = model_card(roots, policy, {"sft": "p" * 64}, {}, parity, "original")
    result = {"file": "gguf-q8_0/model-Q8_0.gguf", "file_sha256": "q" * 64, "size_bytes": 3_000,
              "compression": 3.7, "perplexity_ratio": 1.0004, "max_perplexity_ratio": 1.005,
              "kl_divergence": 6e-5, "top1_agreement": 0.98, "passed": True}
    card = quantized_card(merged, "gguf-q8_0", result)
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "org/base" and {"gguf-q8_0", "gguf"} <= set(front["tags"])
    for fact in ("d" * 64, "r" * 40, "b" * 64, "p" * 64, "q" * 64, "perplexity ratio 1.0004"):
        assert fact in card

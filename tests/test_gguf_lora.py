"""gguf-lora: the policy's LoRA chain as one llama.cpp GGUF LoRA adapter beside a GGUF base.

The base GGUF plus the adapter, as the file holds it, must be the merged model; what llama.cpp
cannot apply is refused with the advice to merge."""

from __future__ import annotations

import json
import re
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from pedigree.config import QuantizeConfig
from pedigree.export.gguf import write_gguf
from pedigree.export.gguf_lora import (
    AdapterExportError,
    check_vllm_adapter,
    lora_scale,
    write_gguf_lora,
    write_peft_adapter,
)
from pedigree.export.merge import merge_policy
from pedigree.export.quantize import (
    AdapterChain,
    adapter_chain,
    check_format,
    export_format,
    load_format,
    load_gguf,
    reference,
    with_gguf_lora,
)
from pedigree.model.load import load_causal_lm, load_tokenizer
from pedigree.model.measure import chat_logits
from tests.micro_training import VALIDATION

ROWS = VALIDATION[:4]


def _adapter(base: Path, out: Path, seed: int, **lora) -> Path:
    """A PEFT adapter with random (non-zero) trainable tensors, saved to `out`."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora})
    model = get_peft_model(load_causal_lm(base), config)
    for name, p in model.named_parameters():
        if "lora_B" in name or "lora_magnitude" in name:  # B starts at zero: make it count
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def chain(micro_model_dir, tmp_path_factory) -> list[Path]:
    """An SFT-like adapter on every linear layer, then a DPO-like rsLoRA one of another rank on
    the attention only: their updates add up in the merged model."""
    root = tmp_path_factory.mktemp("chain")
    return [_adapter(micro_model_dir, root / "sft", 0),
            _adapter(micro_model_dir, root / "align", 1, r=2, lora_alpha=4, use_rslora=True,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])]


@pytest.fixture(scope="module")
def merged_dir(micro_model_dir, chain, tmp_path_factory) -> Path:
    tokenizer = load_tokenizer(micro_model_dir)
    merged, parity = merge_policy(load_causal_lm(micro_model_dir), tokenizer, chain, ROWS,
                                  "float32", None, 64)
    assert parity["max_abs_logit_diff"] <= 1e-4
    out = tmp_path_factory.mktemp("merged")
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def test_the_base_gguf_plus_the_adapter_is_the_merged_model(micro_model_dir, chain, merged_dir,
                                                            tmp_path):
    """With an F32 base nothing is rounded: the adapter as the file holds it (both adapters
    stacked, their scales folded into B, Q and K permuted for llama.cpp's rope) must give the
    merged model's logits."""
    base = tmp_path / "model-F32.gguf"
    write_gguf(micro_model_dir, base, "F32")
    info = write_gguf_lora(chain, _config(micro_model_dir), tmp_path / "adapter.gguf")
    assert info["chain"] == [p.as_posix() for p in chain]
    # rank 4 + 2 where both adapt a layer (attention), 4 where only the first does (the MLP);
    # ranks differ, so alpha is 0 and llama.cpp's scale is 1
    layers = _config(micro_model_dir)["num_hidden_layers"]
    assert info["adapter_ranks"] == {4: 3 * layers, 6: 4 * layers}
    assert info["adapter_alpha"] == 0.0

    tokenizer = load_tokenizer(micro_model_dir)
    model = with_gguf_lora(load_gguf(base)[0], tmp_path / "adapter.gguf")
    merged = load_causal_lm(merged_dir)
    ours, mask = chat_logits(model, tokenizer, ROWS, 64)
    want, _ = chat_logits(merged, tokenizer, ROWS, 64)
    assert (ours - want)[mask].abs().max().item() < 1e-4
    bare, _ = chat_logits(load_gguf(base)[0], tokenizer, ROWS, 64)
    assert (bare - want)[mask].abs().max().item() > 1e-2  # the adapter really changes the model


def test_the_file_is_llama_cpps_adapter_layout(micro_model_dir, chain, tmp_path):
    """The keys and names llama.cpp's loader reads, and B's Q rows in its rope order."""
    from safetensors.torch import load_file

    path = tmp_path / "adapter.gguf"
    write_gguf_lora(chain[:1], _config(micro_model_dir), path)
    reader = gguf.GGUFReader(path)

    def field(key):
        return reader.get_field(key).contents()

    assert field("general.type") == "adapter" and field("adapter.type") == "lora"
    # one adapter of rank 4 everywhere: alpha = rank, so llama.cpp's scale alpha / rank is 1
    assert field("adapter.lora.alpha") == 4.0
    tensors = {t.name: t for t in reader.tensors}
    config = _config(micro_model_dir)
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    a, b = tensors["blk.0.attn_q.weight.lora_a"], tensors["blk.0.attn_q.weight.lora_b"]
    assert a.data.shape == (4, hidden) and b.data.shape == (hidden, 4)
    assert "blk.0.ffn_down.weight.lora_a" in tensors and len(tensors) == 2 * 7 * \
        config["num_hidden_layers"]
    peft = load_file(chain[0] / "adapter_model.safetensors")
    scale = lora_scale(json.loads((chain[0] / "adapter_config.json").read_text()))
    b_q = peft["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"].numpy() * scale
    half = hidden // heads // 2
    # llama.cpp's row 1 of head 0 is HF's row half-a-head down (the rotary pair's second half)
    np.testing.assert_allclose(np.asarray(b.data)[1], b_q[half], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(a.data), peft[
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].numpy(), rtol=1e-6)

    again = tmp_path / "again.gguf"
    write_gguf_lora(chain[:1], config, again)
    assert again.read_bytes() == path.read_bytes()  # deterministic
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter.gguf", "again.gguf"]


def test_the_gguf_lora_format_is_written_and_checked_like_every_format(micro_model_dir, chain,
                                                                       merged_dir, tmp_path):
    tokenizer = load_tokenizer(merged_dir)
    cfg = QuantizeConfig(formats=["gguf-lora"], check_rows=4, golden_prompts=2,
                         max_new_tokens=4)
    ref = reference(load_causal_lm(merged_dir), tokenizer, ROWS, cfg)
    policy = {"weights": None, "quant": None, "sft_method": "lora",
              "adapters": [p.as_posix() for p in chain]}
    links = adapter_chain(policy, micro_model_dir)
    assert links == AdapterChain(micro_model_dir, tuple(chain))
    model, info = export_format("gguf-lora", merged_dir, tmp_path, tokenizer, ROWS, 64, links)
    result = check_format("gguf-lora", model, tokenizer, ref, cfg, 1, info, tmp_path)
    assert result["passed"] and result["perplexity_ratio"] <= 1.005, result
    assert result["top1_agreement"] >= 0.95 and result["golden_agreement"] == 1.0
    out = tmp_path / "gguf-lora"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "adapter-F32.gguf",
                                                     "model-Q8_0.gguf", "peft"]
    # the PEFT directory for vLLM and SGLang, on the fp32 base: the merged model to rounding
    assert result["peft"]["perplexity_ratio"] == pytest.approx(1.0, abs=1e-4), result["peft"]
    assert result["peft"]["top1_agreement"] == 1.0
    peft_config = json.loads((out / "peft/adapter_config.json").read_text())
    assert peft_config["r"] == peft_config["lora_alpha"] == 6  # 4 + 2, padded to one rank
    assert info["vllm_max_lora_rank"] == 8
    assert result["template_parity"]["passed"]
    assert info["size_bytes"] == info["base_bytes"] + info["adapter_bytes"]
    assert info["adapter_bytes"] < info["base_bytes"] / 2
    lines = (out / "Modelfile").read_text().splitlines()
    assert lines[1:3] == ["FROM ./model-Q8_0.gguf", "ADAPTER ./adapter-F32.gguf"]
    # what eval reads: the same model again
    again = load_format("gguf-lora", tmp_path)
    assert torch.equal(chat_logits(again, tokenizer, ROWS, 64)[0],
                       chat_logits(model, tokenizer, ROWS, 64)[0])


@pytest.mark.parametrize("lora, refused", [
    ({"use_dora": True}, "use_dora: DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save: whole trained copies"),
    ({"bias": "lora_only"}, "bias: trained biases"),
    ({"target_modules": ["q_proj", "embed_tokens"]}, "adapts the embeddings or the LM head"),
])
def test_what_llama_cpp_cannot_apply_is_refused_with_the_advice_to_merge(
        micro_model_dir, tmp_path, lora, refused):
    adapter = _adapter(micro_model_dir, tmp_path / "a", 0, **lora)
    with pytest.raises(AdapterExportError, match=refused) as err:
        write_gguf_lora([adapter], _config(micro_model_dir), tmp_path / "adapter.gguf")
    assert "ship a merged format instead" in str(err.value)
    assert not (tmp_path / "adapter.gguf").exists()


def test_policies_without_a_llama_cpp_adapter_are_refused_before_writing(micro_model_dir,
                                                                         tmp_path):
    from peft import IA3Config, get_peft_model

    ia3 = tmp_path / "ia3"
    get_peft_model(load_causal_lm(micro_model_dir),
                   IA3Config(target_modules=["k_proj", "v_proj", "down_proj"],
                             feedforward_modules=["down_proj"])).save_pretrained(ia3)
    policy = {"weights": None, "quant": None, "sft_method": "ia3", "adapters": [ia3.as_posix()]}
    with pytest.raises(AdapterExportError, match="peft_type: a IA3 adapter, not LoRA"):
        adapter_chain(policy, micro_model_dir)
    full = {"weights": "models/sft", "quant": None, "sft_method": "full", "adapters": []}
    with pytest.raises(AdapterExportError, match="sft.method=full trained the base's own"):
        adapter_chain(full, micro_model_dir)
    qlora = {"weights": None, "quant": {"quant_type": "nf4", "double_quant": True},
             "sft_method": "qlora", "adapters": []}
    with pytest.raises(AdapterExportError, match="merge.qlora_base=original"):
        adapter_chain(qlora, micro_model_dir)
    assert adapter_chain(qlora, micro_model_dir, "original").adapters == ()


def test_llama_cpp_runs_the_base_with_the_adapter_like_the_merged_model(chain, merged_dir,
                                                                        micro_model_dir,
                                                                        tmp_path):
    """Runs where llama-cpp-python is installed (`make kquants`): llama.cpp's own application of
    the adapter (`lora_path`) must agree with the merged model."""
    pytest.importorskip("llama_cpp")
    tokenizer = load_tokenizer(merged_dir)
    cfg = QuantizeConfig(formats=["gguf-lora"], check_rows=4, golden_prompts=2)
    ref = reference(load_causal_lm(merged_dir), tokenizer, ROWS, cfg)
    links = AdapterChain(micro_model_dir, tuple(chain))
    model, info = export_format("gguf-lora", merged_dir, tmp_path, tokenizer, ROWS, 64, links)
    result = check_format("gguf-lora", model, tokenizer, ref, cfg, 1, info, tmp_path)
    theirs = result["llama_cpp"]
    assert theirs["top1_agreement"] > 0.95, theirs
    assert abs(theirs["perplexity_ratio"] - result["perplexity_ratio"]) < 0.01, theirs


def test_the_peft_directory_is_what_vllm_loads(chain, tmp_path):
    """One rank for every module, alpha = rank, PEFT's tensor names; a directory vLLM would
    refuse (DoRA, modules_to_save, a module it does not adapt, a shape off the rank) is named."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path / "peft"
    info = write_peft_adapter(chain, out, "models/base")
    assert info == {"peft_dir": "peft", "peft_bytes": info["peft_bytes"],
                    "vllm_max_lora_rank": 8}
    tensors = load_file(out / "adapter_model.safetensors")
    down = "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"
    assert tensors[down].shape[0] == 6 and not tensors[down][4:].any()  # padded with zeros

    config = json.loads((out / "adapter_config.json").read_text())
    for change, named in [({"use_dora": True}, "use_dora=True"),
                          ({"modules_to_save": ["lm_head"]}, "modules_to_save=['lm_head']"),
                          ({"target_modules": ["q_proj", "lm_head"]}, "target_modules ['lm_head']"),
                          ({"r": 5}, "not rank 5")]:
        (out / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(AdapterExportError, match=re.escape(named)):
            check_vllm_adapter(out)
    (out / "adapter_config.json").write_text(json.dumps(config))
    save_file({**tensors, "base_model.model.lm_head.weight": tensors[down]},
              str(out / "adapter_model.safetensors"))
    with pytest.raises(AdapterExportError, match="lm_head.weight' is not a PEFT LoRA"):
        check_vllm_adapter(out)


def _pedigree_output(directory: Path, upstream_sha: str, tokenizer=None,
                     outputs_sha: str = "o" * 64) -> Path:
    """`directory` as a pedigree stage output: a manifest naming the models/base it started
    from (what quantize.adapters checks), and the tokenizer it trained with."""
    from pedigree.lineage import MANIFEST, MANIFEST_KEYS, SCHEMA_VERSION

    manifest = {key: None for key in MANIFEST_KEYS} | {
        "schema_version": SCHEMA_VERSION, "outputs_sha256": outputs_sha, "details": {},
        "upstream": [{"stage": "base", "path": "models/base", "outputs_sha256": upstream_sha}]}
    (directory / MANIFEST).write_text(json.dumps(manifest))
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


def test_other_runs_adapters_ship_over_the_same_base(micro_model_dir, chain, tmp_path):
    """A sweep's other fine-tunes as adapters over the one base: each checked against its own
    chain merged; one that started from another base or trained under another chat template is
    refused."""
    import shutil

    from pedigree.export.quantize import ship_more_adapters

    base = _pedigree_output(shutil.copytree(micro_model_dir, tmp_path / "base"), "-",
                            outputs_sha="s" * 64)
    tokenizer = load_tokenizer(micro_model_dir)
    cfg = QuantizeConfig(formats=["gguf-lora"], check_rows=4, golden_prompts=2,
                         max_new_tokens=4)
    merged, _ = merge_policy(load_causal_lm(base), tokenizer, chain[:1], ROWS, "float32", None,
                             64)
    merged.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    out = tmp_path / "out"
    model, info = export_format("gguf-lora", tmp_path / "merged", out, tokenizer, ROWS, 64,
                                AdapterChain(base, (chain[0],)))
    ref = reference(merged, tokenizer, ROWS, cfg)
    result = check_format("gguf-lora", model, tokenizer, ref, cfg, 1000, info, out)

    other = _pedigree_output(_adapter(base, tmp_path / "b", 7), "s" * 64, tokenizer)
    more = ship_more_adapters("gguf-lora", out, base, {"b": [other]}, tokenizer, ROWS, cfg, 1000,
                              result)
    assert more["passed"] and more["adapters"]["b"]["perplexity_ratio"] <= 1.005
    assert more["adapters"]["b"]["top1_agreement"] >= 0.95
    assert sorted(p.name for p in (out / "gguf-lora/adapters/b").iterdir()) == [
        "adapter-F32.gguf", "peft"]
    shared = more["shared_base"]
    assert shared["models"] == 2 and shared["merged_bytes"] == 2000
    assert shared["base_plus_adapters_bytes"] == (info["size_bytes"]
                                                  + more["adapters"]["b"]["adapter_bytes"])

    elsewhere = _pedigree_output(_adapter(base, tmp_path / "c", 8), "t" * 64, tokenizer)
    with pytest.raises(AdapterExportError, match="c/? was trained on models/base tttttttttttt"):
        ship_more_adapters("gguf-lora", out, base, {"c": [elsewhere]}, tokenizer, ROWS, cfg,
                           1000, result)
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    retemplated = _pedigree_output(_adapter(base, tmp_path / "d", 9), "s" * 64, tokenizer)
    with pytest.raises(AdapterExportError, match="another chat template"):
        ship_more_adapters("gguf-lora", out, base, {"d": [retemplated]},
                           load_tokenizer(micro_model_dir), ROWS, cfg, 1000, result)


def test_more_adapters_need_gguf_lora():
    with pytest.raises(ValueError, match="add gguf-lora to quantize.formats"):
        QuantizeConfig(adapters={"b": ["../b/models/sft"]})
    with pytest.raises(ValueError, match="quantize.adapters.b c: a name"):
        QuantizeConfig(formats=["gguf-lora"], adapters={"b c": ["x"]})

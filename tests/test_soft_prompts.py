"""The soft prompts (prompt tuning, prefix tuning, p-tuning): each learns on the micro model with
its labels lined up behind the virtual tokens, reloads to the same logits over the base, and
deploys as the base plus the adapter: merge folds nothing and says so, quantize exports the base
with the adapter beside each format, and what eval loads is the pair."""

from __future__ import annotations

import json

import pytest

from pedigree.config import SFTConfig
from pedigree.export.merge import MergeError, merge_policy, save_merged
from pedigree.model.load import load_causal_lm, load_deployable, load_tokenizer
from pedigree.model.measure import chat_logits, completion_nll, mean_loss
from pedigree.model.policy import load_sft
from pedigree.model.trained import save_trained
from tests.micro_training import VALIDATION, random_adapter, sft_config, train_micro

# method, learning rate (conf/sft/<method>.yaml's), trainable parameters on the micro model
# (hidden 64, 2 layers, 1 KV head of 32; 16 virtual tokens), largest val_loss / base val_loss.
# Measured after 16 steps on 2 cores (base 5.241): prompt_tuning 5.199, prefix_tuning 5.174,
# p_tuning 5.217. A barely pretrained base gives a prompt little to steer; the bounds leave room.
SOFT_PROMPTS = {
    "prompt_tuning": (3e-2, 16 * 64, 0.995),  # the virtual tokens' embeddings
    "prefix_tuning": (3e-2, 16 * 2 * 2 * 32, 0.99),  # a key and a value per layer and token
    # the MLP encoder (64 -> 128 -> 128 -> 64) and its 16 input embeddings; saved: its output
    "p_tuning": (3e-3, 16 * 64 + (64 * 128 + 128) + (128 * 128 + 128) + (128 * 64 + 64), 0.998),
}


def _trained(micro_model_dir, tmp_path, method, **overrides):
    rate, _, _ = SOFT_PROMPTS[method]
    cfg = sft_config(method, **{"max_steps": 16, "learning_rate": rate, **overrides})
    trained, metrics, _, _ = train_micro(micro_model_dir, cfg)
    out = tmp_path / "sft"
    out.mkdir()
    save_trained(trained, out, cfg.method)
    trained.eval()
    return trained, metrics, out


@pytest.mark.slow  # trains 16 steps: ~6-12 s each on 2 cores
@pytest.mark.parametrize("method", list(SOFT_PROMPTS))
def test_soft_prompt_learns_reloads_and_deploys_as_base_plus_adapter(method, micro_model_dir,
                                                                     tmp_path):
    _, trainable, bound = SOFT_PROMPTS[method]
    trained, metrics, out = _trained(micro_model_dir, tmp_path, method)
    tokenizer = load_tokenizer(micro_model_dir)
    assert metrics["trainable_params"] == trainable
    # val_loss_base is the base's own loss (a fresh soft prompt is no no-op), and training beat it
    base_loss = mean_loss(completion_nll(load_causal_lm(micro_model_dir), tokenizer, VALIDATION,
                                         64, 8))
    assert metrics["val_loss_base"] == pytest.approx(base_loss, abs=1e-4)
    assert metrics["val_loss"] < bound * metrics["val_loss_base"], metrics
    # TRL's loss, with PEFT's virtual tokens in front and their labels padded, is the completion
    # loss our evals measure on the same rows: the labels line up behind the virtual tokens.
    assert mean_loss(completion_nll(trained, tokenizer, VALIDATION, 64, 8)) == pytest.approx(
        metrics["val_loss"], abs=1e-4)

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["num_virtual_tokens"] == 16
    rows = VALIDATION[:4]
    expected, mask = chat_logits(trained, tokenizer, rows, 64)
    assert expected.shape[1] == mask.shape[1]  # the virtual tokens' own logits are left out
    reloaded, _ = chat_logits(load_sft(micro_model_dir, out), tokenizer, rows, 64)
    assert (expected - reloaded)[mask].abs().max().item() < 1e-5
    base, _ = chat_logits(load_causal_lm(micro_model_dir), tokenizer, rows, 64)
    assert (expected - base)[mask].abs().max().item() > 1e-2  # the prompt changes the model

    # Merge: nothing folds; the base weights are written with the adapter in soft_prompt/, and
    # that pair, loaded back from the output, is the trained policy.
    merged, parity = merge_policy(load_causal_lm(micro_model_dir), tokenizer, [out], rows,
                                  "float32", None, 64)
    assert parity["soft_prompt"]["folded"] is False and parity["max_abs_logit_diff"] < 1e-5
    merged_dir = tmp_path / "merged"
    save_merged(merged, merged_dir, "2GB")
    tokenizer.save_pretrained(merged_dir)
    assert sorted(p.name for p in (merged_dir / "soft_prompt").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]
    weights = load_causal_lm(merged_dir).state_dict()
    original = load_causal_lm(micro_model_dir).state_dict()
    assert all((weights[k] == original[k]).all() for k in original)  # the base, unchanged
    deployed, _ = chat_logits(load_deployable(merged_dir), tokenizer, rows, 64)
    assert (expected - deployed)[mask].abs().max().item() < 1e-5


@pytest.mark.slow
def test_quantize_exports_the_base_and_ships_the_soft_prompt(micro_model_dir, tmp_path):
    from pedigree.config import QuantizeConfig
    from pedigree.export.card import quantized_card
    from pedigree.export.quantize import check_format, export_format, load_format, reference

    _, _, out = _trained(micro_model_dir, tmp_path, "prompt_tuning", max_steps=4, eval_steps=4)
    tokenizer = load_tokenizer(micro_model_dir)
    rows = VALIDATION[:4]
    merged, _ = merge_policy(load_causal_lm(micro_model_dir), tokenizer, [out], rows, "float32",
                             None, 64)
    merged_dir = tmp_path / "merged"
    save_merged(merged, merged_dir, "2GB")
    tokenizer.save_pretrained(merged_dir)

    cfg = QuantizeConfig(formats=["gguf-q8_0"], check_rows=4, golden_prompts=2, max_new_tokens=4)
    deployable = load_deployable(merged_dir)
    ref = reference(deployable, tokenizer, rows, cfg)
    assert ref.base_logits is not None  # what llama.cpp, which runs the base only, is held to
    model, info = export_format("gguf-q8_0", merged_dir, tmp_path / "q", tokenizer, rows, 64)
    fmt_dir = tmp_path / "q" / "gguf-q8_0"
    assert (fmt_dir / "soft_prompt" / "adapter_model.safetensors").is_file()
    assert not (fmt_dir / "Modelfile").exists()  # Ollama would run the base without the prompt
    assert "cannot apply a PEFT soft prompt" in info["modelfile_error"]
    assert "cannot apply a PEFT soft prompt" in info["soft_prompt"]["note"]
    # Like with like: the format read back with its soft prompt against the merged pair.
    result = check_format("gguf-q8_0", model, tokenizer, ref, cfg, 1, info)
    assert result["passed"] and result["top1_agreement"] > 0.95, result
    without, _ = chat_logits(load_causal_lm(micro_model_dir), tokenizer, rows, 64)
    assert (ref.logits - without)[ref.mask.bool()].abs().max() > 1e-2  # the prompt is in the ref
    # What eval loads for the format is the same pair.
    again, _ = chat_logits(load_format("gguf-q8_0", tmp_path / "q"), tokenizer, rows, 64)
    mine, _ = chat_logits(model, tokenizer, rows, 64)
    assert (again - mine).abs().max().item() < 1e-6
    card = quantized_card("---\ntags: []\n---\n# card\n", "gguf-q8_0", result)
    assert "| soft prompt | `soft_prompt/`" in card


@pytest.mark.slow
def test_a_soft_prompt_is_the_only_adapter_merge_takes(micro_model_dir, tmp_path):
    _, _, out = _trained(micro_model_dir, tmp_path, "prefix_tuning", max_steps=1, eval_steps=1)
    top = random_adapter(micro_model_dir, tmp_path / "align", seed=1)
    with pytest.raises(MergeError, match="a soft prompt cannot be merged with other adapters"):
        merge_policy(load_causal_lm(micro_model_dir), load_tokenizer(micro_model_dir),
                     [out, top], VALIDATION[:2], "float32", None, 64)


@pytest.mark.parametrize("method", list(SOFT_PROMPTS))
def test_soft_prompts_refuse_packing_and_the_align_stage(method):
    from pydantic import ValidationError

    from pedigree.config import Params, load_params

    with pytest.raises(ValidationError, match="cannot train on packed rows"):
        SFTConfig.model_validate({"method": method, "packing": True})
    raw = load_params().model_dump()
    raw["sft"]["method"] = method
    with pytest.raises(ValidationError, match="set align.enabled=false"):
        Params.model_validate(raw)
    raw["align"]["enabled"] = False
    assert Params.model_validate(raw).sft.method == method


def test_each_soft_prompt_config_turns_the_align_stage_off(tmp_path):
    from tests.test_config import compose

    for method in SOFT_PROMPTS:
        raw = compose(tmp_path, [f"sft={method}"])
        assert (raw["sft"]["method"], raw["align"]["enabled"]) == (method, False)

"""The adapter families beyond LoRA (IA3, LoHa, LoKr, VeRA, AdaLoRA) and LoRA's initialisations
and LoRA+: each learns on the micro model, saves an adapter that rebuilds the trained model over
the ORIGINAL base, and folds into the base through the merge module's parity check."""

from __future__ import annotations

import json

import pytest

from pedigree.config import SFTConfig
from pedigree.export.merge import CombineError, merge_policy, with_adapters
from pedigree.model.load import load_causal_lm, load_tokenizer
from pedigree.model.measure import chat_logits
from pedigree.model.policy import load_sft
from pedigree.model.trained import save_trained
from pedigree.train.checkpoints import CheckpointStore, fingerprint
from tests.micro_training import VALIDATION, random_adapter, sft_config, train_micro

# method, overrides, trainable parameters on the micro model (r 8), largest val_loss / base.
# Rates: the families with few parameters (ia3, vera) need ~10x LoRA's. Measured ratios after 16
# steps on 2 cores are in the comments; the bounds leave room.
FAMILIES = {
    "ia3": ("ia3", {"learning_rate": 0.1}, 384),
    "loha": ("loha", {}, 32768),
    "lokr": ("lokr", {"learning_rate": 0.01}, 2048),
    "vera": ("vera", {"learning_rate": 0.03}, 1136),
    "adalora": ("adalora", {"learning_rate": 0.01, "adalora": {"init_r": 12}}, 24744),
    "pissa": ("lora", {"lora": {"r": 8, "alpha": 32, "init": "pissa"}}, 16384),
    "olora": ("lora", {"lora": {"r": 8, "alpha": 32, "init": "olora"}}, 16384),
}


def _trained(micro_model_dir, tmp_path, method, overrides):
    cfg = sft_config(method, **{"max_steps": 16, **overrides})
    store = CheckpointStore(tmp_path / "checkpoints", fingerprint({}, {"method": method}, "c"))
    trained, metrics, _, _ = train_micro(micro_model_dir, cfg, store)
    out = tmp_path / "sft"
    out.mkdir()
    save_trained(trained, out, cfg.method, cfg.quant)
    trained.eval()
    return trained, metrics, out


@pytest.mark.slow  # trains 16 steps: ~5-20 s each on 2 cores
@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_learns_reloads_and_merges(family, micro_model_dir, tmp_path):
    method, overrides, trainable = FAMILIES[family]
    trained, metrics, out = _trained(micro_model_dir, tmp_path, method, overrides)
    assert metrics["trainable_params"] == trainable
    assert metrics["val_loss"] < 0.99 * metrics["val_loss_base"], metrics

    # What was saved, over the original base, is the trained model (PiSSA and OLoRA trained
    # over a residual base: theirs is saved converted, a plain LoRA of rank 2r).
    config = json.loads((out / "adapter_config.json").read_text())
    if family in ("pissa", "olora"):
        assert (config["peft_type"], config["r"], config["init_lora_weights"]) == ("LORA", 16, True)
    tokenizer = load_tokenizer(micro_model_dir)
    rows = VALIDATION[:4]
    expected, mask = chat_logits(trained, tokenizer, rows, 64)
    reloaded, _ = chat_logits(load_sft(micro_model_dir, out), tokenizer, rows, 64)
    assert (expected - reloaded)[mask].abs().max().item() < 1e-4

    # The merge module folds it in and checks parity; the folded model is the trained one.
    merged, parity = merge_policy(load_causal_lm(micro_model_dir), tokenizer, [out], rows,
                                  "float32", None, 64)
    assert parity["max_abs_logit_diff"] < 1e-4
    folded, _ = chat_logits(merged, tokenizer, rows, 64)
    assert (expected - folded)[mask].abs().max().item() < 1e-4
    # Checkpoints for resume; AdaLoRA's could not be loaded back: it writes none.
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ([] if family == "adalora" else ["checkpoint-16", "checkpoint-8"])
    if family == "adalora":
        _check_adalora(micro_model_dir, config, metrics)


def _check_adalora(micro_model_dir, config, metrics):
    # The budget ends at an average of lora.r = 8 per target, from init_r = 12 everywhere.
    ranks = [sum(mask) for mask in config["rank_pattern"].values()]
    assert sum(ranks) == 8 * len(ranks) and max(ranks) <= 12 and min(ranks) < 8, ranks
    # The orthogonality penalty is a training loss only: the step-0 evaluation is the base's NLL,
    # exactly what any other method's step-0 evaluation reports.
    lora = train_micro(micro_model_dir, sft_config("lora", max_steps=1, eval_steps=1))[1]
    assert metrics["val_loss_base"] == pytest.approx(lora["val_loss_base"], abs=1e-6)


@pytest.mark.slow
def test_other_family_below_a_lora_folds_stack_by_stack(micro_model_dir, tmp_path):
    """An IA3 SFT adapter, then an align-style LoRA trained on the SFT-merged weights: PEFT cannot
    hold both at once; the IA3 is folded first, each fold checked."""
    _, _, sft = _trained(micro_model_dir, tmp_path, "ia3", {"learning_rate": 0.1, "max_steps": 4,
                                                             "eval_steps": 4})
    top = random_adapter(micro_model_dir, tmp_path / "align", seed=1)
    tokenizer = load_tokenizer(micro_model_dir)
    rows = VALIDATION[:4]
    merged, parity = merge_policy(load_causal_lm(micro_model_dir), tokenizer, [sft, top], rows,
                                  "float32", None, 64)
    assert len(parity["folds"]) == 2 and parity["max_abs_logit_diff"] < 1e-4
    stacked = with_adapters(load_causal_lm(micro_model_dir), [sft, top])[0]
    expected, mask = chat_logits(stacked, tokenizer, rows, 64)
    got, _ = chat_logits(merged, tokenizer, rows, 64)
    assert (expected - got)[mask].abs().max().item() < 1e-4

    from pedigree.config import CombineConfig

    cat = CombineConfig(method="cat", adapters=[str(top)], weights=[1.0, 1.0])
    with pytest.raises(CombineError, match=r"LoRA adapters only .*IA3"):
        merge_policy(load_causal_lm(micro_model_dir), tokenizer, [sft], rows, "float32", None,
                     64, cat)


@pytest.mark.slow
def test_loraplus_gives_b_matrices_their_own_rate(micro_model_dir, tmp_path):
    from pedigree.train.methods import prepare_model
    from pedigree.train.sft import sft_trainer

    cfg = sft_config("lora", max_steps=2, eval_steps=2, weight_decay=0.01,
                     lora={"r": 8, "alpha": 32, "plus_lr_ratio": 4.0})

    model, peft_config, _ = prepare_model(micro_model_dir, cfg)
    tokenizer = load_tokenizer(micro_model_dir)
    trainer = sft_trainer(model, tokenizer, peft_config, VALIDATION, VALIDATION, cfg, 0,
                          str(tmp_path))
    groups = {id(p): g for g in trainer.optimizer.param_groups for p in g["params"]}
    rates = {("lora_B" in n, groups[id(p)]["lr"]) for n, p in trainer.model.named_parameters()
             if p.requires_grad}
    assert rates == {(False, 3e-3), (True, 4 * 3e-3)}
    trainer.train()  # the trainer builds its scheduler over this optimizer
    assert trainer.optimizer is trainer.lr_scheduler.optimizer


@pytest.mark.parametrize("values, match", [
    ({"method": "dora", "lora": {"init": "pissa"}}, "for method=lora only"),
    ({"method": "ia3", "lora": {"plus_lr_ratio": 16}}, "no B matrices"),
    ({"method": "adalora", "adalora": {"init_r": 16}}, "must exceed lora.r=16"),
    ({"method": "adalora", "max_steps": 4, "adalora": {"warmup": 0.5, "final": 0.5}},
     "leave no steps to prune"),
    ({"method": "ia3", "ia3": {"feedforward_modules": ["up_proj"]}}, r"\['up_proj'\] are not"),
])
def test_family_settings_that_cannot_work_are_refused(values, match):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=match):
        SFTConfig.model_validate(values)


def test_adalora_schedule_is_in_steps():
    cfg = SFTConfig.model_validate({"method": "adalora", "max_steps": 30})
    assert cfg.adalora.schedule(cfg.max_steps) == (3, 9)  # warmup 0.1, final 0.3 of 30 steps

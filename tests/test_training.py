"""Training methods on a micro model: each learns, saves only what it trained and reloads to the
same model; runs are deterministic; early stopping and checkpoint fingerprints behave."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerControl, TrainerState

from pedigree.errors import PedigreeError
from pedigree.model.load import load_4bit, load_tokenizer
from pedigree.model.measure import chat_logits
from pedigree.model.policy import load_sft, policy_base, policy_chain
from pedigree.model.trained import TrainedWeightsError, save_trained, trained_kind, trained_state
from pedigree.train.checkpoints import COMPLETE, CheckpointStore, EarlyStopping, fingerprint
from pedigree.train.methods import MethodError, prepare_model
from pedigree.train.sft import chat_template
from pedigree.train.trainer import curve_csv
from tests.micro_training import VALIDATION, sft_config, train_micro


@pytest.mark.parametrize("method", ["lora", "qlora", "dora", "partial", "full"])
def test_each_method_learns_and_reloads(method, micro_model_dir, tmp_path):
    cfg = sft_config(method)
    trained, metrics, curve, details = train_micro(micro_model_dir, cfg)

    # LoRA learns slowly on a barely pretrained micro base (it adapts features the base has, and
    # this one has few), hence the modest margin.
    assert metrics["val_loss"] < 0.92 * metrics["val_loss_base"], metrics
    fraction = metrics["trainable_fraction"]
    if method == "full":
        assert fraction == 1.0
    elif method == "partial":
        assert 0.05 < fraction < 1.0
        assert details["trained_modules"] == ["lm_head", "model.layers.1"]
    else:
        assert 0 < fraction < 0.2
    assert sorted({step for step, values in curve if "eval_loss" in values}) == [0, 8, 16, 24, 32]

    out = tmp_path / "sft"
    out.mkdir()
    save_trained(trained, out, cfg.method, cfg.quant)
    kind = "weights" if method in ("partial", "full") else "adapter"
    assert trained_kind(out) == kind
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["training.json", "trained.safetensors"] if kind == "weights"
        else ["training.json", "adapter_config.json", "adapter_model.safetensors"])

    # What was saved rebuilds the trained model: same logits on held-out rows. QLoRA trained on
    # a 4-bit base, so its adapter is checked on the 4-bit base it was trained on.
    tokenizer = load_tokenizer(micro_model_dir)
    trained.eval()
    expected, mask = chat_logits(trained, tokenizer, VALIDATION[:4], 64)
    if method == "qlora":
        from peft import PeftModel

        reloaded = PeftModel.from_pretrained(load_4bit(micro_model_dir, cfg.quant), str(out))
    else:
        reloaded = load_sft(micro_model_dir, out)
    got, _ = chat_logits(reloaded, tokenizer, VALIDATION[:4], 64)
    # TRL trains QLoRA adapters in bf16; PEFT reloads them in fp32: bf16 rounding remains.
    tolerance = 5e-2 if method == "qlora" else 1e-4
    assert (expected - got)[mask].abs().max().item() < tolerance


def test_partial_freezes_everything_else(micro_model_dir):
    model, peft_config, _ = prepare_model(micro_model_dir, sft_config("partial"))
    assert peft_config is None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.layers.1.", "lm_head", "model.embed_tokens"))
                             for n in trainable)
    assert not any(n.startswith("model.layers.0.") for n in trainable)
    with pytest.raises(MethodError, match="'decoder' matches no module"):
        prepare_model(micro_model_dir, sft_config("partial", partial={"modules": ["decoder"]}))


def test_two_runs_give_identical_weights(micro_model_dir):
    cfg = sft_config("lora", lora={"r": 4, "alpha": 8, "dropout": 0.1}, max_steps=8)
    first = trained_state(train_micro(micro_model_dir, cfg)[0])
    second = trained_state(train_micro(micro_model_dir, cfg)[0])
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_full_policy_chain_and_weights_base(micro_model_dir, tmp_path):
    trained = train_micro(micro_model_dir, sft_config("full", max_steps=4, eval_steps=4))[0]
    sft = tmp_path / "sft"
    sft.mkdir()
    save_trained(trained, sft, "full")
    policy = policy_chain(sft, None)
    assert policy == {"schema_version": 2, "sft_method": "full", "quant": None,
                      "weights": sft.as_posix(), "adapters": [], "align": None}
    rebuilt = policy_base(micro_model_dir, policy)
    state = dict(trained.named_parameters())
    assert all(torch.equal(p, state[n]) for n, p in rebuilt.named_parameters())


def _state(losses: list[float]) -> TrainerState:
    state = TrainerState()
    state.log_history = [{"eval_loss": loss, "step": i} for i, loss in enumerate(losses)]
    return state


def test_early_stopping_counts_evaluations_without_improvement():
    stop = EarlyStopping(patience=2)
    for losses, expected in [([3.0, 2.0], False), ([3.0, 2.0, 2.1], False),
                             ([3.0, 2.0, 2.1, 2.0], True), ([3.0, 2.0, 2.1, 1.9], False)]:
        control = stop.on_evaluate(None, _state(losses), TrainerControl())
        assert control.should_training_stop is expected, losses


def test_early_stopping_stops_a_real_run(micro_model_dir):
    # A rate this high makes the validation loss climb after the first steps.
    cfg = sft_config("lora", learning_rate=0.5, max_steps=40, eval_steps=2,
               early_stopping_patience=2, lr_scheduler="constant")
    _, metrics, curve, _ = train_micro(micro_model_dir, cfg)
    assert metrics["steps"] < 40
    evals = [v["eval_loss"] for _, v in curve if "eval_loss" in v]
    assert min(evals[:-2]) <= min(evals[-2:])


def test_checkpoints_resume_only_with_the_same_fingerprint(tmp_path, capsys):
    hashes = {"data/split": {"a.jsonl": "1" * 64}, "models/base": {"w": "2" * 64}}
    code = "b" * 64
    store = CheckpointStore(tmp_path / "ck", fingerprint(hashes, {"sft": {"lr": 1}}, code))
    assert store.resume_point("sft") is None
    for step, complete in ((4, True), (8, True), (12, False)):  # 12: killed while saving
        (tmp_path / "ck" / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / "ck" / f"checkpoint-{step}" / COMPLETE).touch()
    assert store.resume_point("sft") == tmp_path / "ck" / "checkpoint-8"

    changed = {**hashes, "data/split": {"a.jsonl": "3" * 64}}
    other = CheckpointStore(tmp_path / "ck", fingerprint(changed, {"sft": {"lr": 2}}, code))
    assert other.resume_point("sft") is None
    assert "not resuming: data/split, params changed" in capsys.readouterr().out
    assert not list((tmp_path / "ck").glob("checkpoint-*"))
    assert json.loads((tmp_path / "ck" / "fingerprint.json").read_text())["params_sha256"] == \
        other.current["params_sha256"]
    # The same inputs and params under other code: its checkpoints are not this code's weights.
    edited = CheckpointStore(tmp_path / "ck", fingerprint(changed, {"sft": {"lr": 2}}, "c" * 64))
    assert edited.resume_point("sft") is None
    assert "not resuming: code changed" in capsys.readouterr().out


def test_curve_csv_for_dvc_plots():
    curve = [(0, {"eval_loss": 3.0}), (1, {"loss": 2.5}), (2, {"loss": 2.0, "eval_loss": 2.2})]
    assert curve_csv(curve, "loss") == "step,loss\n1,2.5\n2,2\n"
    assert curve_csv(curve, "eval_loss") == "step,loss\n0,3\n2,2.2\n"


def test_packing_trains(micro_model_dir):
    _, metrics, _, _ = train_micro(micro_model_dir, sft_config("full", packing=True, max_steps=8,
                                                     eval_steps=8))
    assert metrics["val_loss"] < 0.9 * metrics["val_loss_base"], metrics


def test_chat_template_from_file_or_inline(tmp_path):
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    (tmp_path / "t.jinja").write_text(template)
    assert chat_template(str(tmp_path / "t.jinja")) == template
    assert chat_template(template) == template
    assert chat_template(None) is None
    with pytest.raises(PedigreeError, match="missing.jinja: no such file"):
        chat_template(str(tmp_path / "missing.jinja"))


def test_4bit_model_survives_save_and_reload(micro_model_dir, tmp_path):
    """The QLoRA base, saved before any forward pass, reloads to identical logits.

    Saved after an eval-mode forward it does not on CPUs with AVX512-BF16, even with double
    quantization (measured on this micro model: logits off by up to 8e-3). So a 4-bit model is only
    ever saved before inference; QLoRA itself saves just the adapter and rebuilds the 4-bit base
    from the fp32 one.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(micro_model_dir)
    model = load_4bit(micro_model_dir, sft_config("qlora").quant)
    model.eval()
    model.save_pretrained(tmp_path / "q4")
    before, mask = chat_logits(model, tokenizer, VALIDATION[:2], 64)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q4", dtype=torch.float32)
    after, _ = chat_logits(reloaded, tokenizer, VALIDATION[:2], 64)
    assert torch.equal(before[mask], after[mask])


def test_resume_after_an_early_stop_trains_no_further(micro_model_dir, tmp_path):
    """A run killed after it early-stopped (and checkpointed) must not train on when resumed."""
    cfg = sft_config("lora", learning_rate=0.5, max_steps=40, eval_steps=2, save_steps=2,
               early_stopping_patience=2, lr_scheduler="constant")
    hashes = {"data": {"a": "1" * 64}}
    store = CheckpointStore(tmp_path / "ck", fingerprint(hashes, {"x": 1}, "b" * 64))
    first, metrics, _, _ = train_micro(micro_model_dir, cfg, store)
    stopped = int(metrics["steps"])
    assert stopped < 40 and store.last_complete().name == f"checkpoint-{stopped}"
    again, metrics, _, _ = train_micro(micro_model_dir, cfg, store)
    assert int(metrics["steps"]) == stopped
    a, b = trained_state(first), trained_state(again)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_curve_counts_a_repeated_evaluation_once():
    from pedigree.train.trainer import trainer_log

    history = [{"step": 0, "eval_loss": 3.0}, {"step": 10, "loss": 2.5},
               {"step": 10, "eval_loss": 2.0}, {"step": 10, "eval_loss": 2.0}]
    assert trainer_log(history, ("loss", "eval_loss")) == [
        (0, {"eval_loss": 3.0}), (10, {"loss": 2.5}), (10, {"eval_loss": 2.0})]


def test_sharded_weights_are_refused_not_saved(tmp_path):
    class Sharded(torch.nn.Module):  # FSDP1 flat parameters: empty, and not the model's names
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.empty(0))

    with pytest.raises(TrainedWeightsError, match="sharded"):
        save_trained(Sharded(), tmp_path, "full")
    assert not list(tmp_path.iterdir())

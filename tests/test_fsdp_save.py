"""Saving under FSDP2: every weight sharded over two CPU processes (PyTorch's `fully_shard` on a
gloo `init_device_mesh("cpu", ...)`, what accelerate's fsdp_version 2 does on GPUs), trained,
then saved by `save_trained`, which gathers them whole on rank 0. The saved adapter (LoRA) and
trained weights (full fine-tuning) must equal those of the same steps in one process: that also
checks the gradients the two ranks averaged (PyTorch issue 162338: gloo has no AVG reduction).

accelerate refuses FSDP on CPU, so this drives FSDP2 directly; the real accelerate FSDP and
ZeRO-3 runs are the `gpu` tests in test_training_stage.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.scratch import free_port

pytestmark = pytest.mark.slow
STEPS, ROWS, LENGTH = 3, 4, 16  # 4 rows of 16 tokens: 2 per rank


def _batch(vocab: int) -> torch.Tensor:
    return torch.randint(3, vocab, (ROWS, LENGTH), generator=torch.Generator().manual_seed(7))


def _model(base: Path, method: str):
    from peft import LoraConfig, get_peft_model

    from pedigree.model.load import load_causal_lm

    torch.manual_seed(0)  # the same LoRA initialisation on every rank and in the reference
    model = load_causal_lm(base)
    if method == "lora":
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                 target_modules="all-linear"))
    return model


def _train(model, ids: torch.Tensor) -> None:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(STEPS):
        # Equal-length rows: the mean loss of each rank's half averages to the whole batch's.
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _sharded_run(rank: int, port: int, base: str, method: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from pedigree.model.trained import save_trained

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        mesh = init_device_mesh("cpu", (2,))
        model = _model(Path(base), method)
        for layer in model.get_decoder().layers:  # one FSDP unit per block, then the rest
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert type(next(p for p in model.parameters() if p.requires_grad)).__name__ == "DTensor"
        ids = _batch(model.config.vocab_size)
        _train(model, ids[rank * 2:(rank + 1) * 2])
        target = Path(out) / f"rank{rank}"
        target.mkdir()
        save_trained(model, target, method)  # every rank: the gather is a collective
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["lora", "full"])
def test_fsdp2_saves_what_one_process_trains(tmp_path, micro_model_dir, method):
    from pedigree.model.trained import TRAINED_WEIGHTS, save_trained

    torch.multiprocessing.spawn(_sharded_run, nprocs=2, args=(
        free_port(), str(micro_model_dir), method, str(tmp_path)))
    assert list((tmp_path / "rank1").iterdir()) == []  # rank 1 gathered nothing, wrote nothing

    model = _model(micro_model_dir, method)
    _train(model, _batch(model.config.vocab_size))
    (tmp_path / "one").mkdir()
    save_trained(model, tmp_path / "one", method)

    name = "adapter_model.safetensors" if method == "lora" else TRAINED_WEIGHTS
    sharded, whole = (load_file(tmp_path / d / name) for d in ("rank0", "one"))
    assert sorted(sharded) == sorted(whole) and len(whole) > 4
    for key, tensor in whole.items():
        assert sharded[key].shape == tensor.shape, key
        torch.testing.assert_close(sharded[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
    if method == "lora":  # the adapter moved: an unchanged one would pass trivially
        assert any(float(t.abs().max()) > 0 for k, t in whole.items() if "lora_B" in k)
        assert (tmp_path / "rank0/adapter_config.json").read_text() == (
            tmp_path / "one/adapter_config.json").read_text()

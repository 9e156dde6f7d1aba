"""The `sft` stage as DVC runs it, in a scratch project: a run killed mid-training resumes from
its last checkpoint to the same weights as an uninterrupted run; changed params refuse the
resume; under `accelerate launch` with two CPU processes, on one machine or as two "nodes", it
trains once, logs once, and every rank holds the same adapter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from pedigree.config import ReplayConfig
from pedigree.data.replay import replay_count
from pedigree.lineage import hash_of_hashes, sha256_file
from pedigree.model.trained import state_digest
from pedigree.train.checkpoints import COMPLETE
from tests.micro_training import TRAIN, VALIDATION

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow
ADAPTER = "models/sft/adapter_model.safetensors"


def _project(root: Path, base: Path, **sft) -> Path:
    """A scratch project with the stage's code, a micro base, a split and params."""
    root.mkdir()
    shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "stages", root / "stages")
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(base, root / "models/base")
    # The cpt stage's output with continued pretraining off, as `dvc repro cpt` leaves it.
    (root / "models/cpt").mkdir(parents=True)
    (root / "models/cpt/cpt.json").write_text(json.dumps({"trained": False}) + "\n")
    for data in ("data/eval", "data/replay"):  # the stage's inputs for sft.replay
        shutil.copytree(REPO / data, root / data)
    (root / "data/split").mkdir(parents=True)
    for name, rows in (("sft_train", TRAIN), ("sft_validation", VALIDATION)):
        (root / f"data/split/{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _params(root, **sft)
    return root


def _params(root: Path, accelerate: str | None = None, **sft) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tracking"]["enabled"] = False
    raw["sft"].update(max_steps=60, batch_size=8, max_length=64, eval_steps=20, save_steps=5,
                      warmup_steps=2, learning_rate=3e-3)
    raw["sft"]["lora"].update(r=8, alpha=32, dropout=0.1)  # dropout: resume must restore RNG
    raw["sft"].update(sft)
    raw["accelerate"]["config_file"] = accelerate
    (root / "params.yaml").write_text(yaml.safe_dump(raw))


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        env.pop(var, None)
    return env


def _sft(root: Path) -> str:
    proc = subprocess.run([sys.executable, "stages/sft.py"], cwd=root, env=_env(),
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _sft_killed_after(root: Path, step: int) -> None:
    """Start the stage and SIGKILL it once checkpoint-`step` is complete."""
    marker = root / f"checkpoints/sft/checkpoint-{step}" / COMPLETE
    proc = subprocess.Popen([sys.executable, "stages/sft.py"], cwd=root, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (root / "models/sft").exists()  # nothing published by a killed run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, micro_model_dir) -> dict:
    root = _project(tmp_path_factory.mktemp("a") / "p", micro_model_dir)
    _sft(root)
    assert not (root / "checkpoints/sft").exists()  # cleared once the output is published
    return load_file(root / ADAPTER)


def test_killed_run_resumes_to_the_same_weights(tmp_path, micro_model_dir, uninterrupted):
    root = _project(tmp_path / "p", micro_model_dir)
    _sft_killed_after(root, 25)
    out = _sft(root)
    assert "resuming from checkpoints/sft/checkpoint-25" in out
    resumed = load_file(root / ADAPTER)
    assert resumed.keys() == uninterrupted.keys()
    diff = max((resumed[k] - uninterrupted[k]).abs().max().item() for k in resumed)
    assert diff <= 1e-6


@pytest.mark.parametrize("change", ["params", "code"])
def test_resume_refused_when_params_or_code_change(tmp_path, micro_model_dir, change):
    root = _project(tmp_path / "p", micro_model_dir)
    _sft_killed_after(root, 10)
    if change == "params":
        _params(root, learning_rate=1e-3)
    else:  # an edit to the training code: the old checkpoints are not this code's weights
        code = root / "src/pedigree/train/sft.py"
        code.write_text(code.read_text() + "\n# edited after the kill\n")
    out = _sft(root)
    assert f"not resuming: {change} changed" in out
    assert "resuming from" not in out.replace("not resuming", "")
    manifest = json.loads((root / "models/sft/lineage.json").read_text())
    if change == "params":
        assert manifest["params"]["sft"]["learning_rate"] == 1e-3


def test_replay_mixes_general_rows_and_names_them_in_the_lineage(tmp_path, micro_model_dir):
    root = _project(tmp_path / "p", micro_model_dir, max_steps=4, eval_steps=4,
                    replay={"source": "data/replay", "fraction": 0.25})
    out = _sft(root)
    replayed = replay_count(len(TRAIN), 0.25)  # 16 general rows beside the 48 task rows
    assert f"replay: {replayed} rows of data/replay (60 kept)" in out
    manifest = json.loads((root / "models/sft/lineage.json").read_text())
    want = ReplayConfig(source=str(root / "data/replay/general.jsonl"))
    assert manifest["roots"]["replay_sha256"] == hash_of_hashes(
        {"data/replay/general.jsonl": sha256_file(Path(want.source))})
    assert manifest["details"]["replay"]["rows_replayed"] == replayed
    metrics = json.loads((root / "models/sft/metrics.json").read_text())
    assert metrics["replay_rows"] == replayed
    assert metrics["saved_weights_bytes"] == (root / ADAPTER).stat().st_size
    text = subprocess.run([sys.executable, "-m", "pedigree.cli", "lineage", "models/sft",
                           "--no-mlflow"], cwd=root, env=_env(), capture_output=True, text=True,
                          check=True).stdout
    assert f"replay data  sha256 {manifest['roots']['replay_sha256']}" in text


def test_two_cpu_processes_train_one_model(tmp_path, micro_model_dir):
    root = _project(tmp_path / "p", micro_model_dir,
                    accelerate=str(REPO / "conf/accelerate/cpu_ddp.yaml"), max_steps=10,
                    save_steps=50)
    out = _sft(root)
    assert out.count("[sft] lora:") == 1  # metrics reported once, by rank 0
    manifest = json.loads((root / "models/sft/lineage.json").read_text())
    ranks = manifest["details"]["training"]["rank_sha256"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]
    assert ranks[0] == state_digest(load_file(root / ADAPTER))
    assert not list(tmp_path.glob("**/.sft.tmp"))


def test_two_nodes_of_one_process_each_train_one_model(tmp_path, micro_model_dir):
    """Multi-node DDP as users launch it: one process on each of two "nodes" (here both on
    127.0.0.1, sharing the project directory as nodes share a filesystem), each told its rank by
    PEDIGREE_MACHINE_RANK; rank 0 alone publishes, and both ranks hold the same adapter."""
    from tests.scratch import free_port

    config = yaml.safe_load((REPO / "conf/accelerate/cpu_multinode.yaml").read_text())
    config["main_process_port"] = free_port()
    (tmp_path / "two_nodes.yaml").write_text(yaml.safe_dump(config))
    root = _project(tmp_path / "p", micro_model_dir, accelerate=str(tmp_path / "two_nodes.yaml"),
                    max_steps=10, save_steps=50)
    nodes = [subprocess.Popen([sys.executable, "stages/sft.py"], cwd=root,
                              env={**_env(), "PEDIGREE_MACHINE_RANK": str(rank),
                                   "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outs = [node.communicate(timeout=600) for node in nodes]
    for node, (out, err) in zip(nodes, outs, strict=True):
        assert node.returncode == 0, out[-2000:] + err[-3000:]
    assert outs[0][0].count("[sft] lora:") == 1 and "[sft] lora:" not in outs[1][0]
    manifest = json.loads((root / "models/sft/lineage.json").read_text())
    ranks = manifest["details"]["training"]["rank_sha256"]
    assert len(ranks) == 2 and ranks[0] == ranks[1]  # one model, on both nodes
    assert ranks[0] == state_digest(load_file(root / ADAPTER))
    assert not list(tmp_path.glob("**/.sft.tmp"))


def test_node_arguments_come_from_the_environment():
    from pedigree.errors import PedigreeError
    from pedigree.launch import node_arguments

    assert node_arguments({}) == []
    assert node_arguments({"SLURM_NODEID": "3"}) == ["--machine_rank", "3"]
    assert node_arguments({"PEDIGREE_MACHINE_RANK": "1", "SLURM_NODEID": "3",
                           "PEDIGREE_MAIN_PROCESS_IP": "node-a"}) == [
        "--machine_rank", "1", "--main_process_ip", "node-a"]
    with pytest.raises(PedigreeError, match="PEDIGREE_MACHINE_RANK / SLURM_NODEID = 'one'"):
        node_arguments({"PEDIGREE_MACHINE_RANK": "one"})


@pytest.mark.gpu
@pytest.mark.parametrize("config", ["fsdp.yaml", "deepspeed_zero3.yaml"])
def test_sharded_gpu_training_saves_the_whole_adapter(tmp_path, micro_model_dir, config):
    """accelerate's FSDP2 and DeepSpeed ZeRO-3 on two GPUs: the stage gathers the sharded
    adapter on rank 0 and saves it whole (CPU runs cannot shard through accelerate; the gather
    itself is tested on CPU in test_fsdp_save.py)."""
    import importlib.util

    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    if config.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install deepspeed)")
    root = _project(tmp_path / "p", micro_model_dir, accelerate=str(REPO / "conf/accelerate" /
                                                                    config),
                    max_steps=10, save_steps=50)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["accelerate"]["num_processes"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    _sft(root)
    adapter = load_file(root / ADAPTER)
    config_file = json.loads((root / "models/sft/adapter_config.json").read_text())
    lora_a = [t for k, t in adapter.items() if "lora_A" in k]
    assert lora_a and all(t.shape[0] == config_file["r"] and t.numel() > 0 for t in lora_a)
    assert any(float(t.abs().max()) > 0 for k, t in adapter.items() if "lora_B" in k)

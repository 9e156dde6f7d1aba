"""Running a training stage under `accelerate launch` (DDP, FSDP, DeepSpeed) when configured.

DVC runs `python stages/sft.py`; when `accelerate.config_file` is set, the script replaces itself
with `accelerate launch --config_file FILE stages/sft.py`, which starts one process per device.
The launched processes see LOCAL_RANK in their environment and do not relaunch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pedigree.config import AccelerateConfig
from pedigree.errors import PedigreeError


def launched() -> bool:
    """True inside a process started by accelerate launch or torchrun."""
    return "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes outputs, checkpoints and MLflow runs."""
    return int(os.environ.get("RANK", "0")) == 0


def relaunch_under_accelerate(cfg: AccelerateConfig) -> None:
    if cfg.config_file is None or launched():
        return
    if not Path(cfg.config_file).is_file():
        raise PedigreeError(f"accelerate.config_file: {cfg.config_file}: no such file")
    command = [sys.executable, "-m", "accelerate.commands.launch",
               "--config_file", cfg.config_file]
    if cfg.num_processes:
        command += ["--num_processes", str(cfg.num_processes)]
    command += [sys.argv[0], *sys.argv[1:]]
    sys.stdout.flush()
    os.execv(sys.executable, command)


def gather(value: str) -> list[str]:
    """`value` from every rank, in rank order; `[value]` in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return [str(v) for v in values]

"""Running a training stage under `accelerate launch` (DDP, FSDP, DeepSpeed) when configured.

DVC runs `python stages/sft.py`; when `accelerate.config_file` is set, the script replaces itself
with `accelerate launch --config_file FILE stages/sft.py`, which starts one process per device.
The launched processes see LOCAL_RANK in their environment and do not relaunch.

Several machines: the config file says how many (`num_machines`) and where rank 0 listens
(`main_process_ip`, `main_process_port`); what differs from node to node comes from the
environment, since every node reads the same params.yaml: its rank (PEDIGREE_MACHINE_RANK, else
SLURM's SLURM_NODEID) and, where the file does not fix it, rank 0's address
(PEDIGREE_MAIN_PROCESS_IP). Node 0 runs `dvc repro`; the others run the stage script itself
(conf/accelerate/slurm_train.sbatch does both).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
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
    command += node_arguments(os.environ)
    command += [sys.argv[0], *sys.argv[1:]]
    sys.stdout.flush()
    os.execv(sys.executable, command)


def node_arguments(environ: Mapping[str, str]) -> list[str]:
    """`accelerate launch` options for this node of a multi-node run, from its environment."""
    args = []
    rank = environ.get("PEDIGREE_MACHINE_RANK", environ.get("SLURM_NODEID"))
    if rank is not None:
        if not rank.isdigit():
            raise PedigreeError(f"PEDIGREE_MACHINE_RANK / SLURM_NODEID = {rank!r}: the node's "
                                "rank must be a whole number (0 on the node that runs dvc repro)")
        args += ["--machine_rank", rank]
    if environ.get("PEDIGREE_MAIN_PROCESS_IP"):
        args += ["--main_process_ip", environ["PEDIGREE_MAIN_PROCESS_IP"]]
    return args


def gather(value: str) -> list[str]:
    """`value` from every rank, in rank order; `[value]` in a single process."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return [str(v) for v in values]

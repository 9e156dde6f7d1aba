"""How long a training stage took and how much memory it held: measurements, not results.

They vary run to run, so they stay out of the stage's output directory (whose bytes the manifest
hashes) and go to perf/<stage>.json, a DVC metrics file that `dvc exp show` and
`pedigree report --compare` read, and to MLflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pedigree.files import atomic_write_text


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux VmHWM), GiB."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 2**20  # KiB -> GiB


@contextmanager
def measured() -> Iterator[dict[str, Any]]:
    """Fills the yielded dict with seconds (wall), peak RSS and, on a GPU, peak CUDA memory."""
    import torch

    figures: dict[str, Any] = {}
    start = time.perf_counter()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield figures
    figures["seconds"] = round(time.perf_counter() - start, 2)
    figures["peak_rss_gib"] = round(peak_rss_gib(), 3)
    if torch.cuda.is_available():
        figures["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    figures["device"] = "cuda" if torch.cuda.is_available() else "cpu"


PERF_FILE = "perf/{stage}.json"  # relative to the project root; dvc.yaml lists sft's


def write_perf(stage: str, figures: dict[str, Any], root: Path = Path(".")) -> Path:
    path = root / PERF_FILE.format(stage=stage)
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return path

"""Each benchmark measurement in a fresh process: its peak memory is its own, and no import or
cache of an earlier run (a loaded model, torch's allocator) colours the next one."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from typing import Any


def in_child(target: Callable[..., None], *args: Any) -> Any:
    """Run `target(*args, queue)` in a spawned process; what it put on the queue."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result

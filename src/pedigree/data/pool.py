"""Worker processes for curation: a function over parts of the data, results in part order.

Processes start by fork, so a worker begins with the caller's state (the config, the eval index,
the tokenizer) without pickling it, and without importing the caller's `__main__` again: under
spawn or forkserver, multiprocessing re-runs the main script in every worker, and the stage
scripts are plain scripts. Where there is no fork (Windows), the parts run in this process.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# (function, state) of the pool being started: set before the fork, so a worker inherits both
# and neither is ever pickled (only the items and the results are)
_JOB: Any = None


def worker_count(setting: int | None) -> int:
    """`setting`, or every core this process may run on (its CPU affinity) when None."""
    if setting is not None:
        return setting
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity
        return os.cpu_count() or 1


def ordered_map(fn: Callable[[Any, T], R], state: Any, items: Sequence[T],
                workers: int) -> Iterator[R]:
    """fn(state, item) for each item, in item order, over up to `workers` processes (one per
    item at most); in this process when that is one, or where processes cannot fork."""
    processes = min(workers, len(items))
    if processes <= 1 or "fork" not in mp.get_all_start_methods():
        for item in items:
            yield fn(state, item)
        return
    global _JOB
    _JOB = (fn, state)
    try:
        with mp.get_context("fork").Pool(processes) as pool:
            # chunksize 1: parts are large and few, and finish in order for imap to hand back
            yield from pool.imap(_call, items, chunksize=1)
    finally:
        _JOB = None


def _call(item: Any) -> Any:
    fn, state = _JOB
    return fn(state, item)

"""How many CPUs this process may use, and mapping over an optional executor."""

from __future__ import annotations

import os
from concurrent.futures import Executor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def map_in(executor: Executor | None, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]``, in order, on ``executor``'s workers when one is given."""
    return list(executor.map(fn, items)) if executor is not None else [fn(x) for x in items]

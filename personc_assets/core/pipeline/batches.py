"""Releases in batches: what each partition of a backfill makes, and the lock its releases share.

A batch is one partition of the partitioned job: ``batch_size`` slots under its
own seed, derived from the run's seed and the partition key, so two batches never
share a recipe stream and a retried batch makes the same candidates again (the
same generation id, hence the same candidate and release ids: rows are
rewritten, never added). Every batch reads the same fitted upstream (sources,
backbone, factors, indexes) and releases into one lineage, so the step that
admits a face against every face released so far and commits it runs under
one inter-process lock (``release_lock``) kept beside the released files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

from filelock import FileLock, Timeout

from .config import RunConfig, Workspace

#: How long a batch waits for another batch's admit-and-commit step before failing.
RELEASE_LOCK_TIMEOUT_S = 900.0
RELEASE_LOCK = "release.lock"


def batch_seed(seed: int, partition: str) -> int:
    """The recipe seed of batch ``partition`` of a backfill started with ``seed`` (63 bits)."""
    digest = hashlib.sha256(f"personc-batch/{seed}/{partition}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def batch_config(cfg: RunConfig, partition: str, batch_size: int) -> RunConfig:
    """``cfg`` for one batch: ``batch_size`` slots under the batch's own seed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return dataclasses.replace(cfg, seed=batch_seed(cfg.seed, partition), num_samples=batch_size)


def release_lock(ws: Workspace, timeout: float = RELEASE_LOCK_TIMEOUT_S) -> Callable[[], ContextManager[Any]]:
    """The lock factory that ``judging.judge_and_release`` admits and commits releases under:
    one file lock (``filelock``) per workspace, shared by every process that releases into it."""
    path = ws.path("state", RELEASE_LOCK)

    @contextlib.contextmanager
    def held() -> Iterator[None]:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(path), timeout=timeout):
                yield
        except Timeout as exc:
            raise TimeoutError(f"another batch held {path} for over {timeout:.0f} s while releasing; if no "
                               "PersonC run is alive, delete the lock file and retry the batch") from exc

    return held


def shards_root(ws: Workspace) -> Path:
    """Where the batches of workspace ``ws`` write their lineage shards."""
    return ws.path("lineage_shards")

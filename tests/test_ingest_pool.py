"""Ingestion with worker processes: this process works beside them, order and outcomes are kept,
and a worker that crashes costs one file, not the run."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest

from personc_assets.core.faces import ingest
from personc_assets.core.faces.ingest import IngestJob, Quarantined

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"


def slow_and_crashing_twice(job: IngestJob) -> ingest.Accepted | Quarantined:
    """5 ms per file; a worker process (never this one) dies on the first two files it is given."""
    time.sleep(0.005)
    if multiprocessing.parent_process() is not None:
        crashes = Path(job.path).parent / "crashes"
        with open(crashes, "a+") as fh:
            fh.seek(0)
            if len(fh.read().splitlines()) < 2:
                fh.write(job.path + "\n")
                fh.flush()
                os._exit(1)
    return ingest.process_job(job)


@pytest.mark.slow
def test_a_crashing_worker_costs_one_file_and_keeps_the_order(tmp_path):
    # why: a decoder that kills its process on a hostile file must quarantine that file only; the
    # files this process ingested meanwhile, and those in flight on the dead worker, all come out once
    jobs = [IngestJob(str(tmp_path / f"f{i:04d}.jpg"), "A", "p", ("unreadable", "test file"), 64)
            for i in range(2000)]
    outcomes = list(ingest._pooled(jobs, 2, run=slow_and_crashing_twice, warm=False))
    assert [o.path for o in outcomes] == [j.path for j in jobs]
    crashed = [o for o in outcomes if o.code == "worker_crashed"]
    first, second = (tmp_path / "crashes").read_text().splitlines()
    assert first == second == crashed[0].path and len(crashed) == 1  # the file crashed twice: quarantined
    assert all(o.code == "unreadable" for o in outcomes if o is not crashed[0])


@pytest.mark.slow
@pytest.mark.shared_faces
@pytest.mark.skipif(not FACES.is_dir(), reason=f"test photos not found at {FACES}")
def test_two_processes_ingest_what_one_does():
    # why: which process ingests a file must not change its outcome, its order or the duplicate kept
    assert sum(1 for _ in FACES.rglob("*.jpg")) >= ingest.MIN_FILES_FOR_POOL  # the pool is used
    one = ingest.ingest_folders({"A": FACES}, workers=1)
    two = ingest.ingest_folders({"A": FACES}, workers=2)
    assert [(f.path, f.content_hash, f.landmarks.tobytes(), f.aligned.tobytes()) for f in one.faces] == \
        [(f.path, f.content_hash, f.landmarks.tobytes(), f.aligned.tobytes()) for f in two.faces]
    assert one.quarantined == two.quarantined and one.duplicates == two.duplicates

"""Benchmark: releases per minute and cost per release of the batch job, and the guard's search at scale.

Two measurements, one CSV (``benchmarks/results/bench_scale.csv``):

- ``kind=backfill``: the batch job (``personc_batches``) on a Dask ``LocalCluster`` of
  W = 1, 2, 4 worker processes, backfilling ``--partitions`` batches of ``--batch-size``
  faces on the demo photos (upstream fitted once, outside the timing). Reports wall time,
  releases, candidates judged, releases per minute, and cost per release in worker-seconds
  (the sum of the batch steps' durations divided by releases: what a release costs
  whatever the number of workers) and in wall-seconds x workers.
- ``kind=search``: the guard's identity search per candidate against N = 10^2 .. 10^4
  synthetic sources (unit vectors, D = 128 as dlib), with the guard's eight views per
  candidate (the image and seven benign changes) and the released-face comparison
  against as many earlier releases as sources. Its share of the measured cost per
  candidate shows where the search starts to dominate. ``persons_setup_s``: grouping N
  sources into persons (an N x N similarity matrix), which every batch step does once
  when it loads the donors.

    python benchmarks/bench_scale.py [--workers 1 2 4] [--partitions 4] [--batch-size 1]
                                     [--sources 1e2 1e3 1e4] [--csv benchmarks/results/bench_scale.csv]

The upstream runs in-process; each backfill runs its batches two at a time (as the UI's
run queue would with a limit of two) against the cluster, in a fresh output folder per
worker count, so every setting starts from no releases.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = {"max_attempts": 4, "attribution_maps": False}
UPSTREAM = ["source_images", "projected_latents", "factor_decompositions", "embedding_indexes"]
BATCH_STEPS = ("batch_candidates", "batch_verdicts", "batch_reports")
VIEWS = 8  # the candidate and the seven benign transforms the guard embeds


def step_seconds(instance, run_id: str) -> float:
    """Sum of the durations of a run's steps (STEP_START to STEP_SUCCESS/FAILURE)."""
    from dagster import DagsterEventType

    start: dict[str, float] = {}
    total = 0.0
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or entry.step_key not in BATCH_STEPS:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            start[entry.step_key] = entry.timestamp
        elif event.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
            total += entry.timestamp - start.pop(entry.step_key, entry.timestamp)
    return total


def backfill_row(workers: int, partitions: int, batch_size: int, concurrent: int) -> dict:
    """One backfill of ``partitions`` batches on a fresh workspace and a ``workers``-process cluster."""
    from dagster import DagsterInstance, build_reconstructable_job, execute_job, materialize
    from dask.distributed import Client, LocalCluster

    from personc_assets.definitions import build_definitions
    from personc_assets.defs.scale import add_batches, run_config

    with tempfile.TemporaryDirectory(prefix=f"bench_scale_w{workers}_") as tmp:
        out, home = Path(tmp) / "out", Path(tmp) / "home"
        home.mkdir()
        defs = build_definitions(out_dir=str(out), **CONFIG)
        with DagsterInstance.local_temp(str(home)) as instance, \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, resources={"GPU": 1},
                             dashboard_address=None) as lc, Client(lc):
            assert materialize(list(defs.assets), selection=UPSTREAM, resources=defs.resources,
                               instance=instance).success
            keys = add_batches(instance, partitions)
            job = build_reconstructable_job("personc_assets.definitions", "job_for", reconstructable_kwargs={
                "name": "personc_batches", "out_dir": str(out), "config_json": json.dumps(CONFIG)})
            config = run_config(batch_size, "shards", {"existing": {"address": lc.scheduler_address}}, {"GPU": 1})

            def run(key: str) -> tuple[bool, str]:
                with execute_job(job, instance, run_config=config, tags={"dagster/partition": key}) as result:
                    return result.success, result.run_id

            t0 = time.perf_counter()
            with ThreadPoolExecutor(concurrent) as pool:
                runs = list(pool.map(run, keys))
            wall = time.perf_counter() - t0
            busy = sum(step_seconds(instance, run_id) for _, run_id in runs)
        state = out / "state" / "batch_verdicts"
        verdicts = [json.loads((state / f"{k}.json").read_text()) for k in keys if (state / f"{k}.json").exists()]
    released = sum(len(v["released"]) for v in verdicts)
    judged = sum(len(v["attempts"]) for v in verdicts)
    per = max(released, 1)
    return {"kind": "backfill", "workers": workers, "sources": 8, "partitions": partitions,
            "batch_size": batch_size, "runs_ok": sum(ok for ok, _ in runs), "released": released,
            "candidates": judged, "wall_s": round(wall, 1),
            "releases_per_min": round(60 * released / wall, 2),
            "worker_s_per_release": round(busy / per, 1),
            "wall_x_workers_s_per_release": round(wall * workers / per, 1),
            "worker_s_per_candidate": round(busy / max(judged, 1), 2),
            "search_ms_per_candidate": "", "search_share": "", "persons_setup_s": ""}


def search_row(n: int, candidate_s: float, queries: int = 64, dim: int = 128, seed: int = 0) -> dict:
    """The identity search per candidate at ``n`` sources (and ``n`` earlier releases), and the
    per-step set-up that grows with ``n``: grouping the sources into persons."""
    from personc_assets.core.index import EmbeddingIndex
    from personc_assets.core.recipes import persons_from_embeddings

    rng = np.random.default_rng(seed)
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    sources = unit(rng.standard_normal((n, dim)))
    index = EmbeddingIndex.build("dlib", "synthetic", [f"s{i}" for i in range(n)], sources)
    released = unit(rng.standard_normal((n, dim)))
    views = unit(rng.standard_normal((queries * VIEWS, dim)))
    index.search_max(views[:VIEWS], tau=0.9)  # warm-up
    times = []
    for q in range(queries):  # the median: the machine's other load makes single queries stall
        t0 = time.perf_counter()
        index.search_max(views[q * VIEWS:(q + 1) * VIEWS], tau=0.9)
        float(np.max(released @ views[q * VIEWS]))  # the released-face comparison (guard.admit)
        times.append(time.perf_counter() - t0)
    per = float(np.median(times))
    t0 = time.perf_counter()
    persons_from_embeddings([f"s{i}" for i in range(n)], sources, 0.9)  # in every batch step's set-up
    grouping = time.perf_counter() - t0
    return {"kind": "search", "workers": "", "sources": n, "partitions": "", "batch_size": "", "runs_ok": "",
            "released": "", "candidates": queries, "wall_s": "", "releases_per_min": "",
            "worker_s_per_release": "", "wall_x_workers_s_per_release": "", "worker_s_per_candidate": "",
            "search_ms_per_candidate": round(1000 * per, 3),
            "search_share": round(per / candidate_s, 5) if candidate_s else "",
            "persons_setup_s": round(grouping, 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4],
                    help="worker counts to backfill with; none: keep the backfill rows already in --csv")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--concurrent", type=int, default=2, help="batch runs in flight at once")
    ap.add_argument("--sources", type=float, nargs="+", default=[1e2, 1e3, 1e4])
    ap.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "bench_scale.csv")
    args = ap.parse_args(argv)
    rows = []
    if not args.workers and args.csv.exists():
        with open(args.csv, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if r["kind"] == "backfill"]
        for r in rows:
            r["worker_s_per_candidate"] = float(r["worker_s_per_candidate"])
            r["candidates"] = int(r["candidates"])
            r.setdefault("persons_setup_s", "")
    for w in args.workers:
        rows.append(backfill_row(w, args.partitions, args.batch_size, args.concurrent))
        print(rows[-1], flush=True)
    measured = [r["worker_s_per_candidate"] for r in rows if r["candidates"]]
    candidate_s = float(np.median(measured)) if measured else 0.0
    for n in args.sources:
        rows.append(search_row(int(n), candidate_s))
        print(rows[-1], flush=True)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.csv} ({os.cpu_count()} CPUs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

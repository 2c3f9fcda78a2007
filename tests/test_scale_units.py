"""Units of the batch job: lineage shards, batch seeds, the release lock, the batch executor."""

import multiprocessing as mp
import threading
import time
from pathlib import Path

import duckdb
import pytest

from personc_assets.core.lineage.shards import ShardedLineageStore, ShardSet, views_sql
from personc_assets.core.lineage.store import LineageStore, now
from personc_assets.core.pipeline.batches import batch_config, batch_seed, release_lock
from personc_assets.core.pipeline.config import RunConfig, Workspace


def release(rid: str, file: str = "f.png", status: str = "released") -> dict:
    return {"release_id": rid, "candidate_id": "c" + rid, "file": file, "status": status, "released_at": now()}


def ids(store, table: str = "releases", key: str = "release_id") -> list[str]:
    return [r[0] for r in store.query(f"SELECT {key} FROM {table} ORDER BY 1")]


@pytest.fixture
def base(tmp_path) -> LineageStore:
    store = LineageStore.open(tmp_path / "personc.duckdb")
    with store.transaction() as tx:  # the unpartitioned upstream and an earlier run's release
        tx.upsert("embeddings", [{"content_hash": "h1", "encoder": "dlib", "encoder_version": "v1",
                                  "vector": [0.5, 0.5], "run_id": "upstream"}])
        tx.upsert("releases", [release("r0")])
    return store


def sharded(tmp_path: Path, partition: str) -> ShardedLineageStore:
    return ShardedLineageStore(ShardSet(tmp_path / "shards"), partition, tmp_path / "personc.duckdb")


def test_shard_reads_see_the_database_and_every_partition(tmp_path, base):
    # why: a batch must read the upstream it never writes and every other batch's releases
    a, b = sharded(tmp_path, "batch-a"), sharded(tmp_path, "batch-b")
    with a.transaction() as tx:
        tx.upsert("releases", [release("r1")])
    with b.transaction() as tx:
        tx.upsert("releases", [release("r2")])
    assert ids(a) == ids(b) == ["r0", "r1", "r2"]
    assert a.embeddings("v1", ["h1", "h2"]) == {"h1": pytest.approx([0.5, 0.5])}
    assert ids(base) == ["r0"]  # the database file is never written by a batch


def test_a_retried_partition_adds_no_row(tmp_path, base):
    # why: a retry rewrites the same keys (maybe with a new run id or time); readers keep the newest
    store = sharded(tmp_path, "batch-a")
    rows = [release("r1", "old.png")]
    with store.transaction() as tx:
        tx.upsert("releases", rows)
    first = store.shards.files("releases")
    with store.transaction() as tx:  # the same rows again: the same shard folder, nothing new
        tx.upsert("releases", rows)
    assert store.shards.files("releases") == first
    with store.transaction() as tx:
        tx.upsert("releases", [release("r1", "new.png")])
    assert store.query("SELECT release_id, file FROM releases WHERE release_id = 'r1'") == [("r1", "new.png")]
    assert store.counts()["releases"] == 2


def test_a_failed_transaction_leaves_nothing(tmp_path, base):
    # why: a batch that dies mid-transaction must not leave half its rows for readers
    store = sharded(tmp_path, "batch-a")
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            tx.upsert("releases", [release("r1")])
            raise RuntimeError("boom")
    assert ids(store) == ["r0"]
    assert not list((tmp_path / "shards").rglob("*.parquet"))


def _write_many(root: str, partition: str, n: int) -> None:
    store = ShardedLineageStore(ShardSet(root), partition)
    for i in range(n):
        with store.transaction() as tx:
            tx.upsert("releases", [release(f"{partition}-{i}")])
            tx.upsert("candidates", [{"candidate_id": f"c{partition}-{i}", "generation_id": partition}])


def test_writers_in_two_processes_lose_and_duplicate_nothing(tmp_path):
    # why: two batches finishing together on different machines share only the shard folder
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path / "shards"), p, 6)) for p in ("pa", "pb")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = ShardedLineageStore(ShardSet(tmp_path / "shards"), "reader")
    expected = sorted(f"{p}-{i}" for p in ("pa", "pb") for i in range(6))
    assert ids(store) == expected
    assert store.query("SELECT count(*) FROM releases r JOIN candidates c USING (candidate_id)") == [(12,)]


def test_consolidation_gives_the_views_rows_and_is_idempotent(tmp_path, base):
    # why: the DuckDB file must answer the README's queries as the shard views do, once per key
    store = sharded(tmp_path, "batch-a")
    with store.transaction() as tx:
        tx.upsert("releases", [release("r1"), release("r2")])
        tx.upsert("ics", [{"release_id": "r1", "encoder": "dlib", "donor": "A-1", "factor": "eyes",
                           "method": "shapley", "score": 0.1, "share": 0.5, "run_id": "x"}])
    assert store.shards.consolidate(base) == {"releases": 2, "ics": 1}
    store.shards.consolidate(base)
    assert ids(base) == ids(store) == ["r0", "r1", "r2"]
    assert base.counts()["ics"] == 1
    with store.shards.connect(tmp_path / "personc.duckdb") as conn:
        view = conn.execute("SELECT release_id, status FROM release_manifest ORDER BY 1").fetchall()
    with duckdb.connect(str(tmp_path / "personc.duckdb")) as conn:
        conn.execute(views_sql())
        table = conn.execute("SELECT release_id, status FROM release_manifest ORDER BY 1").fetchall()
    assert view == table


def test_a_revocation_holds_over_a_shard_row(tmp_path, base):
    # why: a revoked face must stay revoked even when a retried batch rewrites its release row
    with base.transaction() as tx:
        tx.revoke("r1", "now matches a new source", "recheck")
    store = sharded(tmp_path, "batch-a")
    with store.transaction() as tx:
        tx.upsert("releases", [release("r1")])
    assert store.query("SELECT status, revoked_reason FROM releases WHERE release_id = 'r1'") == \
        [("revoked", "now matches a new source")]


def test_shard_errors_name_the_problem(tmp_path):
    # why: a wrong table, key or partition name must say what is wrong, not write a bad shard
    shards = ShardSet(tmp_path / "shards")
    with pytest.raises(ValueError, match="unknown table 'release'; tables: runs, sources"):
        shards.write("batch-a", {"release": [{"release_id": "r"}]})
    with pytest.raises(ValueError, match="rows for releases lack its key column"):
        shards.write("batch-a", {"releases": [{"file": "x"}]})
    with pytest.raises(ValueError, match="table releases has no column"):
        shards.write("batch-a", {"releases": [{"release_id": "r", "colour": "red"}]})
    with pytest.raises(ValueError, match="partition key '../x' cannot name a shard folder"):
        ShardedLineageStore(shards, "../x")
    store = ShardedLineageStore(shards, "batch-a")
    with pytest.raises(NotImplementedError, match="shard lineage is append-only"):
        with store.transaction() as tx:
            tx.update_many("UPDATE releases SET status = ?", [["x"]])


def test_batches_have_their_own_seeds():
    # why: two batches with one seed would make the same recipes; a retry must make the same ones
    cfg = RunConfig(seed=7, num_samples=20)
    seeds = {batch_seed(7, f"batch-{i:05d}") for i in range(100)}
    assert len(seeds) == 100 and all(0 <= s < 2 ** 63 for s in seeds)
    one = batch_config(cfg, "batch-00003", 4)
    assert (one.seed, one.num_samples) == (batch_seed(7, "batch-00003"), 4)
    assert batch_config(cfg, "batch-00003", 4) == one
    assert batch_seed(8, "batch-00003") != one.seed
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        batch_config(cfg, "batch-00003", 0)


def _hold(root: str, log, hold_s: float) -> None:
    with release_lock(Workspace(root))():
        log.put(("in", time.monotonic()))
        time.sleep(hold_s)
        log.put(("out", time.monotonic()))


def test_the_release_lock_serializes_processes(tmp_path):
    # why: two batches admitting faces at once could each release a face the other one just did
    ctx = mp.get_context("spawn")
    log = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), log, 0.5)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    events = sorted((log.get(timeout=5) for _ in range(4)), key=lambda e: e[1])
    assert [e[0] for e in events] == ["in", "out", "in", "out"]


def test_a_stuck_release_lock_says_what_to_do(tmp_path):
    # why: a batch blocked behind a dead one must say which file to remove
    held, release_now = threading.Event(), threading.Event()

    def hold():
        with release_lock(Workspace(tmp_path))():
            held.set()
            release_now.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(TimeoutError, match=r"release.lock for over 0 s while releasing; if no PersonC run"):
            with release_lock(Workspace(tmp_path), timeout=0.2)():
                pass
    finally:
        release_now.set()
        t.join()


def test_batch_executor_refuses_cluster_managers_it_cannot_start():
    # why: the batch executor keys tasks by run; other cluster managers are started outside it
    from personc_assets.defs.scale import BatchDaskExecutor

    with pytest.raises(ValueError, match="cluster 'yarn' is not supported by the batch executor"):
        BatchDaskExecutor("yarn", {}, {})


def test_batch_values_are_stored_per_partition(tmp_path):
    # why: batches running at once must not overwrite each other's asset values
    from dagster import AssetKey, PythonObjectDagsterType, build_input_context, build_output_context

    from personc_assets.defs.scale import BatchValueIOManager

    io = BatchValueIOManager(base_dir=str(tmp_path))
    for key in ("batch-00000", "batch-00001"):
        io.handle_output(build_output_context(asset_key=AssetKey("batch_verdicts"), partition_key=key),
                         {"batch": key})
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json")) == \
        ["batch_verdicts/batch-00000.json", "batch_verdicts/batch-00001.json"]
    ctx = build_input_context(asset_key=AssetKey("batch_verdicts"), partition_key="batch-00001",
                              dagster_type=PythonObjectDagsterType(dict))
    assert io.load_input(ctx) == {"batch": "batch-00001"}


def test_generator_steps_are_in_the_gpu_pool():
    # why: on a cluster, only steps tagged gpu ask for a GPU slot; every batch step runs the generator
    from personc_assets.defs.gpu import GPU_POOL
    from personc_assets.defs.scale import batch_candidates, batch_reports, batch_verdicts

    for asset_def in (batch_candidates, batch_verdicts, batch_reports):
        assert asset_def.op.tags["personc/accelerator"] == "gpu"
        assert asset_def.op.pool == GPU_POOL

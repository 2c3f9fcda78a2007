"""Two runs started at the same moment against one DuckDB file both complete.

DuckDB lets one process at a time open a file for writing; the lineage store
serialises its short transactions under a file lock, so the runs interleave
instead of one failing with "could not set lock on file". Each run has its own
output folder (its asset values and images); they share the lineage database.
"""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb
import pytest

pytestmark = pytest.mark.slow

UP_TO_RELEASE = ["source_images", "projected_latents", "factor_decompositions", "embedding_indexes",
                 "generated_candidates", "guard_verdicts"]

DRIVER = '''
import json, sys
from dagster import AssetKey, DagsterInstance
from personc_assets.definitions import build_definitions

out, db, config, assets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
job = build_definitions(out_dir=out, db_path=db, **config).resolve_job_def("personc_main")
with DagsterInstance.ephemeral() as instance:
    result = job.execute_in_process(instance=instance, raise_on_error=False,
                                    asset_selection=[AssetKey(a) for a in assets])
print(json.dumps({"run_id": result.run_id, "success": result.success}))
sys.exit(0 if result.success else 1)
'''


def test_two_runs_at_once_on_one_database_both_complete(tmp_path):
    # why: the daily schedule and a sensor refresh (or two users) will overlap sooner or later
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    db = tmp_path / "shared" / "personc.duckdb"
    procs = []
    for seed in (21, 22):
        config = {"encoders": ["dlib"], "taus": {"dlib": 0.99}, "num_samples": 1, "max_attempts": 1, "seed": seed}
        procs.append(subprocess.Popen(
            [sys.executable, str(driver), str(tmp_path / f"out{seed}"), str(db), json.dumps(config),
             json.dumps(UP_TO_RELEASE)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=500) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 0, f"a concurrent run failed:\n{stderr[-3000:]}"
    run_ids = {json.loads(stdout.strip().splitlines()[-1])["run_id"] for stdout, _ in results}

    with duckdb.connect(str(db), read_only=True) as conn:
        generations = conn.execute("SELECT DISTINCT generation_id FROM candidates").fetchall()
        writers = {r for (r,) in conn.execute("SELECT DISTINCT run_id FROM candidate_verdicts").fetchall()}
        runs = {r for (r,) in conn.execute("SELECT run_id FROM runs").fetchall()}
        for table, key in (("candidates", "candidate_id"), ("verdicts", "candidate_id || encoder"),
                           ("embeddings", "content_hash || encoder_version"), ("sources", "content_hash")):
            total, distinct = conn.execute(f"SELECT count(*), count(DISTINCT {key}) FROM {table}").fetchone()
            assert total == distinct > 0, table
        superseded = conn.execute("SELECT count(*) FROM sources WHERE superseded").fetchone()[0]
    assert len(generations) == 2, "each run's candidates are recorded"
    assert writers == run_ids == runs, "both runs wrote their verdicts and their run rows"
    assert superseded == 0, "a run over other folders must not mark the other run's sources superseded"
    for seed in (21, 22):
        guard = json.loads((tmp_path / f"out{seed}" / "state" / "guard_verdicts.json").read_text())
        assert len(guard["attempts"]) == 1

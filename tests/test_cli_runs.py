"""Command-line runs go through one runner into the project's Dagster instance: `personc ui` shows them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus

from personc_assets.core.pipeline.config import RunConfig
from personc_assets.instance import DAGSTER_YAML, WORKSPACE_FILE, dagster_home, project_root
from personc_assets.runner import MAIN_JOB, run_job


def test_runner_records_its_run_and_materializations_in_the_dagster_home(tmp_path, monkeypatch):
    # why: `personc demo` ran on an ephemeral instance, so after the README's first command `personc ui`
    # showed every asset as never materialized; the run must be in the home the UI opens
    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    run = run_job(RunConfig(out_dir=str(tmp_path / "out")), MAIN_JOB, assets=["source_images"])
    assert run.success, run.failure()
    assert (home / "dagster.yaml").read_text() == DAGSTER_YAML  # created like a project's home
    with DagsterInstance.from_config(str(home)) as instance:
        recorded = instance.get_run_by_id(run.run_id)
        assert recorded is not None and recorded.job_name == MAIN_JOB
        assert recorded.status == DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(AssetKey("source_images"))
        assert event is not None and event.run_id == run.run_id
        assert event.asset_materialization.metadata["sources"].value == 8  # the demo photos


def test_without_dagster_home_runs_go_to_the_project_home_that_personc_ui_opens(tmp_path, monkeypatch):
    # why: the UI and the command line must agree on one home, from the project folder or below it
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    (tmp_path / WORKSPACE_FILE).write_text("load_from: []\n")
    (tmp_path / "data" / "out").mkdir(parents=True)
    assert project_root(tmp_path / "data" / "out") == tmp_path.resolve()
    home = dagster_home(tmp_path / "data" / "out")
    assert home == tmp_path.resolve() / ".dagster_home"
    assert "enabled: false" in (home / "dagster.yaml").read_text()  # telemetry off


def test_dagster_home_of_the_user_is_used_as_it_is(tmp_path, monkeypatch):
    # why: a DAGSTER_HOME the user set up is theirs: PersonC records there without rewriting its config
    home = tmp_path / "mine"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert dagster_home() == home and not (home / "dagster.yaml").exists()


@pytest.mark.slow
def test_privacy_mode_runs_its_job_through_the_runner_and_loads_the_models_once(tmp_path, monkeypatch, capsys):
    # why: the privacy modes were a second pipeline chained by hand; they are jobs of the one graph, run
    # like `personc demo`, options as run config, and their steps share one loaded backbone and factors
    from personc_assets.cli import main
    from personc_assets.core.lineage.store import LineageStore
    from personc_assets.core.pipeline.context import SHARED_CONTEXTS

    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    loads = SHARED_CONTEXTS.loads
    assert main(["anonymize", "--out", str(tmp_path / "out"), "--limit", "1", "--strength", "0.8"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert SHARED_CONTEXTS.loads == loads + 1, "ranking and anonymizing share one loaded context"
    assert summary["strength"] == 0.8 and len(summary["outputs"]) == 1 and summary["factor_order"]
    with DagsterInstance.from_config(str(home)) as instance:
        recorded = instance.get_run_by_id(summary["run_id"])
        assert recorded is not None and recorded.job_name == "personc_anonymize"
        for asset in ("source_images", "factor_identity_ranking", "anonymized_faces"):
            event = instance.get_latest_materialization_event(AssetKey(asset))
            assert event is not None and event.run_id == summary["run_id"], asset
    store = LineageStore.open(tmp_path / "out" / "personc.duckdb")
    assert store.query("SELECT run_id, strength FROM privacy_anonymized") == [(summary["run_id"], 0.8)]
    assert store.query("SELECT status FROM runs WHERE run_id = ?", [summary["run_id"]]) == [("success",)]


def test_cancelable_without_its_key_stops_before_any_run(tmp_path, monkeypatch, caplog):
    # why: the key lives in the environment only; a missing one must say where to put it (exit 2)
    from personc_assets.cli import main

    monkeypatch.delenv("PERSONC_CANCELABLE_KEY", raising=False)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main(["cancelable", "enroll", "--out", str(tmp_path / "out")]) == 2
    assert "environment variable PERSONC_CANCELABLE_KEY is not set" in caplog.text
    assert not Path(tmp_path / "home").exists(), "no run was started"


def test_a_killed_runs_pool_slot_is_freed_for_the_next_run(tmp_path, monkeypatch):
    # why: with a persistent home, a command-line run killed mid-step would keep its GPU pool slot and
    # every later `personc demo` would wait for it forever
    import socket
    import subprocess
    import sys

    from dagster._core.storage.dagster_run import DagsterRun

    from personc_assets.instance import HOST_TAG, PID_TAG, release_abandoned_runs, run_tags

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with DagsterInstance.from_config(str(dagster_home())) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("gpu", 1)
        killed = DagsterRun(job_name=MAIN_JOB, run_id="killed-run", status=DagsterRunStatus.STARTED,
                            tags={PID_TAG: str(dead.pid), HOST_TAG: socket.gethostname()})
        alive = DagsterRun(job_name=MAIN_JOB, run_id="live-run", status=DagsterRunStatus.STARTED, tags=run_tags())
        instance.add_run(killed)
        instance.add_run(alive)
        assert storage.claim_concurrency_slot("gpu", "killed-run", "ics_reports").is_claimed
        assert release_abandoned_runs(instance) == ["killed-run"]
        assert instance.get_run_by_id("killed-run").status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id("live-run").status == DagsterRunStatus.STARTED  # its process is this one
        assert storage.claim_concurrency_slot("gpu", "next-run", "ics_reports").is_claimed

"""Lifecycle: the release audit, the refresh job and the sensor on the source folders.

When photos in the source folders are added, changed or removed, the sensor
asks for one ``personc_refresh`` run: sources, latents, factors and indexes
are rebuilt, and ``release_audit`` re-checks every face released so far
against the new sources, revoking the ones that now reach tau.
"""

import hashlib
import json
from pathlib import Path

from dagster import (AssetExecutionContext, AssetSelection, DagsterRunStatus, DefaultSensorStatus,
                     MaterializeResult, MetadataValue, RunFailureSensorContext, RunRequest, RunStatusSensorContext,
                     SensorEvaluationContext, SensorResult, SkipReason, asset, define_asset_job,
                     multiprocess_executor, run_failure_sensor, run_status_sensor, sensor)
from dagster_duckdb import DuckDBResource

from ..core.atomic import atomic_write_text
from ..core.faces.ingest import diff_snapshots, snapshot_folders
from ..core.pipeline import reaudit
from .assets import lineage, md_table
from .resources import PersonCConfig

AUDIT_GROUP = "personc_audit"
#: Tag carried by every run the sensor asks for; limit it to 1 per value in the
#: instance's run queue so that two runs never rebuild one workspace at once.
WORKSPACE_TAG = "personc/workspace"
SNAPSHOT_FILE = "source_folders_snapshot.json"


@asset(group_name=AUDIT_GROUP, kinds={"python", "duckdb"})
def release_audit(context: AssetExecutionContext, personc: PersonCConfig, duckdb: DuckDBResource,
                  embedding_indexes: dict) -> MaterializeResult:
    """Every face released so far, re-read from disk and re-checked by the guard against the
    current sources; a release that now reaches tau (or cannot be checked) is revoked, with the
    reason, in DuckDB and in the release manifest."""
    with lineage(duckdb) as store:
        out = reaudit.reaudit_releases(personc.run_config(), personc.workspace(), store, embedding_indexes,
                                       context.run.run_id)
    for r in out["revoked"]:
        context.log.warning(f"release {r['release_id']} revoked: {r['reason']}")
    return MaterializeResult(value=out, metadata={
        "audited": out["audited"], "kept": out["kept"], "revoked": len(out["revoked"]),
        "skipped_already_audited": out["skipped_already_audited"],
        "source_set_hash": out["source_set_hash"],
        "revocations": md_table([{"release": r["release_id"], "reason": r["reason"]} for r in out["revoked"]]),
        "orphaned_files": MetadataValue.json(out["orphaned_files"])})


REFRESH_ASSETS = ("source_images", "projected_latents", "factor_decompositions", "embedding_indexes",
                  "release_audit")

#: Latents and indexes only need the sources: the multiprocess executor builds them side by side.
#: Step processes fork from a server that has imported PersonC once (torch, dlib, Dagster: ~5 s a
#: process otherwise).
REFRESH_EXECUTOR = multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["personc_assets.definitions"]}}}, name="multiprocess")

refresh_job = define_asset_job(
    "personc_refresh", selection=AssetSelection.assets(*REFRESH_ASSETS), executor_def=REFRESH_EXECUTOR,
    description="Re-ingest the source folders, refit latents, factors and indexes, and re-audit every "
                "released face against the new sources.")


def snapshot_digest(snapshot: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()


@sensor(job=refresh_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def source_folders_changed(context: SensorEvaluationContext, personc: PersonCConfig):
    """Asks for a refresh run when photos in the source folders are added, changed or removed
    (file size and modification time; nothing is decoded here)."""
    cfg = personc.run_config()
    if cfg.sources_a is None or cfg.sources_b is None:
        return SkipReason("no source folders configured (sources_a/sources_b): the demo sources never change")
    snapshot = snapshot_folders({"A": Path(cfg.sources_a).expanduser(), "B": Path(cfg.sources_b).expanduser()})
    digest = snapshot_digest(snapshot)
    sidecar = personc.workspace().path("state", SNAPSHOT_FILE)
    previous = json.loads(sidecar.read_text()) if sidecar.exists() else None
    last = context.cursor or (previous or {}).get("digest")
    if last == digest:
        return SkipReason(f"no change in {len(snapshot)} files")
    atomic_write_text(sidecar, json.dumps({"digest": digest, "files": snapshot}))
    if last is None:
        return SensorResult(skip_reason=SkipReason(f"baseline recorded: {len(snapshot)} files"), cursor=digest)
    changes = diff_snapshots((previous or {}).get("files", {}), snapshot)
    context.log.info("source folders changed: " + ", ".join(f"{len(v)} {k}" for k, v in changes.items()))
    request = RunRequest(run_key=f"sources-{last[:12]}-{digest[:12]}",
                         tags={"personc/trigger": "source_folders", WORKSPACE_TAG: personc.workspace().root.as_posix(),
                               **{f"personc/{k}": str(len(v)) for k, v in changes.items()}})
    return SensorResult(run_requests=[request], cursor=digest)


@run_status_sensor(run_status=DagsterRunStatus.SUCCESS, default_status=DefaultSensorStatus.RUNNING)
def record_run_success(context: RunStatusSensorContext, duckdb: DuckDBResource) -> None:
    """Marks the run's row in the lineage ``runs`` table as ``success``."""
    with lineage(duckdb) as store:
        store.finish_run(context.dagster_run.run_id, "success")


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING)
def record_run_failure(context: RunFailureSensorContext, duckdb: DuckDBResource) -> None:
    """Marks the run's row in the lineage ``runs`` table as ``failure`` (a killed run counts once
    Dagster's run monitoring has noticed it)."""
    with lineage(duckdb) as store:
        store.finish_run(context.dagster_run.run_id, "failure")

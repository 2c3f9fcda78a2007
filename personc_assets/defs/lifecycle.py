"""Lifecycle: the release recheck, the refresh job and the sensor on the source folders.

When photos in the source folders are added, changed or removed, the sensor
asks for one ``personc_refresh`` run: sources, latents, factors and indexes
are rebuilt, and ``release_recheck`` judges every face released so far again
against the new sources, revoking the ones that now reach tau. The sensor's
cursor moves on only once that run has succeeded; a failed refresh is asked
for again (``core/pipeline/source_watch.py``).
"""

import hashlib
import json
from pathlib import Path

from dagster import (AssetExecutionContext, AssetSelection, DagsterInstance, DagsterRunStatus, DefaultSensorStatus,
                     Definitions, MaterializeResult, MetadataValue, RunFailureSensorContext, RunRequest,
                     RunsFilter, RunStatusSensorContext, SensorEvaluationContext, SensorResult, SkipReason, asset,
                     define_asset_job, multiprocess_executor, run_failure_sensor, run_status_sensor, sensor)

from ..core.atomic import atomic_write_text
from ..core.faces.ingest import diff_snapshots, snapshot_folders
from ..core.pipeline import recheck
from ..core.pipeline.indexing import EmbeddingIndexes
from ..core.pipeline.recheck import ReleaseRecheck
from ..core.pipeline.source_watch import RefreshState, WatchCursor, next_step
from .reporting import md_table
from .resources import LineageResource, PersonCConfig

LIFECYCLE_GROUP = "personc_lifecycle"
#: Tag carried by every run the sensor asks for; limit it to 1 per value in the
#: instance's run queue so that two runs never rebuild one workspace at once.
WORKSPACE_TAG = "personc/workspace"
#: Tag naming the refresh run asked for one change and attempt (``WatchCursor.refresh_key``).
REFRESH_KEY_TAG = "personc/refresh_key"
SNAPSHOT_FILE = "source_folders_snapshot.json"


@asset(group_name=LIFECYCLE_GROUP, kinds={"python", "duckdb"})
def release_recheck(context: AssetExecutionContext, personc: PersonCConfig, lineage: LineageResource,
                    embedding_indexes: EmbeddingIndexes) -> MaterializeResult[ReleaseRecheck]:
    """Every face released so far, re-read from disk and judged again by the guard against the
    current sources; a release that now reaches tau (or cannot be checked) is revoked, with the
    reason, in DuckDB and in the release manifest."""
    out = recheck.recheck_releases(personc.run_config(), personc.workspace(), lineage.store(), embedding_indexes,
                                   context.run.run_id)
    for r in out.revoked:
        context.log.warning(f"release {r.release_id} revoked: {r.reason}")
    return MaterializeResult(value=out, metadata={
        "rechecked": out.rechecked, "kept": out.kept, "revoked": len(out.revoked),
        "skipped_already_rechecked": out.skipped_already_rechecked,
        "source_set_hash": out.source_set_hash,
        "revocations": md_table([{"release": r.release_id, "reason": r.reason} for r in out.revoked]),
        "orphaned_files": MetadataValue.json(list(out.orphaned_files))})


REFRESH_ASSETS = ("source_images", "projected_latents", "factor_decompositions", "embedding_indexes",
                  "release_recheck")

#: Latents and indexes only need the sources: the multiprocess executor builds them side by side.
#: Step processes fork from a server that has imported PersonC once (torch, dlib, Dagster: ~5 s a
#: process otherwise).
REFRESH_EXECUTOR = multiprocess_executor.configured(
    {"start_method": {"forkserver": {"preload_modules": ["personc_assets.definitions"]}}}, name="multiprocess")

refresh_job = define_asset_job(
    "personc_refresh", selection=AssetSelection.assets(*REFRESH_ASSETS), executor_def=REFRESH_EXECUTOR,
    description="Re-ingest the source folders, refit latents, factors and indexes, and recheck every "
                "released face against the new sources.")


def snapshot_digest(snapshot: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()


@sensor(job=refresh_job, minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING)
def source_folders_changed(context: SensorEvaluationContext, personc: PersonCConfig):
    """Asks for a refresh run when photos in the source folders are added, changed or removed
    (file size and modification time; nothing is decoded here). A change counts as handled once
    its refresh run has succeeded; a failed one is asked for again."""
    cfg = personc.run_config()
    if cfg.sources_a is None or cfg.sources_b is None:
        return SkipReason("no source folders configured (sources_a/sources_b): the demo sources never change")
    snapshot = snapshot_folders({"A": Path(cfg.sources_a).expanduser(), "B": Path(cfg.sources_b).expanduser()})
    digest = snapshot_digest(snapshot)
    sidecar = personc.workspace().path("state", SNAPSHOT_FILE)
    saved = read_sidecar(sidecar)
    cursor = WatchCursor.decode(context.cursor) if context.cursor else saved["cursor"]
    state = refresh_state(context.instance, cursor.refresh_key) if cursor.pending else "absent"
    step = next_step(cursor, digest, state)
    snapshots = {**saved["snapshots"], digest: snapshot}
    keep = {step.cursor.refreshed, step.cursor.pending}
    atomic_write_text(sidecar, json.dumps({"cursor": json.loads(step.cursor.encode()),
                                           "snapshots": {d: f for d, f in snapshots.items() if d in keep}}))
    if step.action != "refresh":
        if step.cursor == cursor:
            return SkipReason(f"{step.message} ({len(snapshot)} files)")
        return SensorResult(skip_reason=SkipReason(f"{step.message} ({len(snapshot)} files)"),
                            cursor=step.cursor.encode())
    changes = diff_snapshots(snapshots.get(step.cursor.refreshed, {}), snapshot)
    context.log.info(f"{step.message}: " + ", ".join(f"{len(v)} {k}" for k, v in changes.items()))
    key = step.cursor.refresh_key
    request = RunRequest(run_key=key, tags={
        "personc/trigger": "source_folders", WORKSPACE_TAG: personc.workspace().root.as_posix(),
        REFRESH_KEY_TAG: key, "personc/refresh_attempt": str(step.cursor.attempt),
        **{f"personc/{k}": str(len(v)) for k, v in changes.items()}})
    return SensorResult(run_requests=[request], cursor=step.cursor.encode())


def read_sidecar(path: Path) -> dict:
    """``{"cursor": WatchCursor, "snapshots": {digest: files}}`` kept beside the workspace's state.

    It stands in for a lost sensor cursor and holds the snapshot each change is compared with.
    """
    data = json.loads(path.read_text()) if path.exists() else {}
    if "digest" in data:  # written by an earlier version: the last snapshot seen
        return {"cursor": WatchCursor(refreshed=data["digest"]), "snapshots": {data["digest"]: data.get("files", {})}}
    return {"cursor": WatchCursor.decode(json.dumps(data["cursor"])) if "cursor" in data else WatchCursor(),
            "snapshots": data.get("snapshots", {})}


def refresh_state(instance: DagsterInstance, key: str) -> RefreshState:
    """What became of the refresh run tagged with ``key`` (the latest, if asked for more than once)."""
    runs = instance.get_runs(filters=RunsFilter(tags={REFRESH_KEY_TAG: key}), limit=1)
    if not runs:
        return "absent"
    if runs[0].status == DagsterRunStatus.SUCCESS:
        return "succeeded"
    if runs[0].status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        return "failed"
    return "running"


@run_status_sensor(run_status=DagsterRunStatus.SUCCESS, default_status=DefaultSensorStatus.RUNNING)
def record_run_success(context: RunStatusSensorContext, lineage: LineageResource) -> None:
    """Marks the run's row in the lineage ``runs`` table as ``success``."""
    lineage.store().finish_run(context.dagster_run.run_id, "success")


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING)
def record_run_failure(context: RunFailureSensorContext, lineage: LineageResource) -> None:
    """Marks the run's row in the lineage ``runs`` table as ``failure`` (a killed run counts once
    Dagster's run monitoring has noticed it)."""
    lineage.store().finish_run(context.dagster_run.run_id, "failure")


defs = Definitions(
    assets=[release_recheck],
    jobs=[refresh_job],
    sensors=[source_folders_changed, record_run_success, record_run_failure],
)

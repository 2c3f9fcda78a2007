"""Run jobs of the PersonC asset graph in-process (``personc demo`` and the privacy modes).

This is the same graph that ``dagster dev`` shows, executed with Dagster's
in-process executor and recorded in the project's Dagster instance (its
``.dagster_home``, or ``DAGSTER_HOME``; see ``instance.py``): after a
command-line run, ``personc ui`` shows the run, its materializations and their
metadata. The lineage lives in the DuckDB file as well.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TypeVar

from .core.pipeline.config import RunConfig

if TYPE_CHECKING:
    from .core.values import AssetValue

log = logging.getLogger(__name__)

V = TypeVar("V", bound="AssetValue")

#: The main pipeline's job (``personc demo``).
MAIN_JOB = "personc_main"
ASSET_ORDER = ("source_images", "projected_latents", "factor_decompositions", "embedding_indexes",
               "generated_candidates", "guard_verdicts", "ics_reports")


@dataclass
class DemoResult:
    success: bool
    message: str
    out_dir: Path
    db_path: Path
    released: list[dict[str, Any]]
    taus: list[dict[str, Any]]
    step_seconds: dict[str, float]
    total_seconds: float
    pass_rate: float | None = None
    manifest: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"success": self.success, "message": self.message, "out_dir": str(self.out_dir),
                "db_path": str(self.db_path), "manifest": str(self.manifest) if self.manifest else None,
                "released": self.released, "taus": self.taus, "pass_rate": self.pass_rate,
                "step_seconds": self.step_seconds, "total_seconds": self.total_seconds}

    def render_table(self) -> str:
        lines = []
        for t in self.taus:
            lines.append(f"tau[{t['encoder']}] = {t['tau']:.3f}  ({t['why']})")
        lines.append("")
        encs = [t["encoder"] for t in self.taus]
        header = ["release", *[f"max sim {e}" for e in encs], "donors (group:source)"]
        rows = []
        for r in self.released:
            rows.append([r["release_id"], *[f"{r['similarity'][e]:.3f}" if r["similarity"].get(e) is not None
                                            else "-" for e in encs], ", ".join(r.get("donor_ids", r["donors"]))])
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        lines.append("")
        if self.pass_rate is not None:
            lines.append(f"pass rate: {self.pass_rate:.0%} of candidates judged")
        lines.append("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.step_seconds.items())
                     + f"; total {self.total_seconds:.1f}s")
        lines.append(f"released faces: {self.out_dir / 'released'}")
        if self.manifest:
            lines.append(f"manifest:       {self.manifest}")
        lines.append(f"lineage (DuckDB): {self.db_path}")
        return "\n".join(lines)


@dataclass
class JobRun:
    """How one in-process run of a job went (``run_job``)."""

    job: str
    run_id: str
    success: bool
    out_dir: Path
    db_path: Path
    step_seconds: dict[str, float]
    total_seconds: float
    failed_step: str | None = None
    error: str | None = None        # the innermost error of the failed step: what the user can act on
    error_type: str | None = None   # its class name, e.g. ``CancelableUnavailableError``

    @property
    def state(self) -> Path:
        return self.out_dir / "state"

    def value(self, asset: str, kind: type[V]) -> V | None:
        """The value ``asset`` stored (None when it was never materialized)."""
        return _read_value(self.state / f"{asset}.json", kind)

    def failure(self) -> str:
        return f"step {self.failed_step or '?'} failed: {self.error or 'the run failed'}"


def run_job(config: RunConfig, job: str = MAIN_JOB, asset_config: Mapping[str, Mapping[str, Any]] | None = None,
            db_path: Path | None = None, assets: Sequence[str] | None = None) -> JobRun:
    """Run ``job`` of ``config``'s definitions in-process (lineage in ``db_path``, default
    OUT/personc.duckdb), recorded in the project's Dagster instance (``instance.py``).

    ``asset_config`` is each asset's run config (``{"anonymized_faces": {"strength": 0.5}}``);
    ``assets`` runs only those assets of the job. Never raises for a failed step (see ``success``).
    """
    from dagster import AssetKey, DagsterEventType

    from .definitions import build_definitions
    from .defs.resources import resource_values
    from .instance import open_instance, run_tags

    out_dir = Path(config.out_dir).resolve()
    db_path = Path(db_path).resolve() if db_path else out_dir / "personc.duckdb"
    config = replace(config, out_dir=str(out_dir), sources_a=_resolved(config.sources_a),
                     sources_b=_resolved(config.sources_b))
    defs = build_definitions(db_path=str(db_path), **resource_values(config))
    job_def = defs.resolve_job_def(job)
    selection = [AssetKey(a) for a in assets] if assets is not None else None
    steps = len(assets) if assets is not None else len(job_def.nodes)
    run_config: dict[str, Any] = {"loggers": {"progress": {"config": {"total_steps": steps}}}}
    if asset_config:
        run_config["ops"] = {name: {"config": dict(values)} for name, values in asset_config.items()}
    start = time.perf_counter()
    with open_instance() as instance:
        result = job_def.execute_in_process(instance=instance, raise_on_error=False, run_config=run_config,
                                            asset_selection=selection, tags=run_tags())
        durations = _step_durations(instance, result.run_id, DagsterEventType)
    from .core.lineage.store import LineageStore

    LineageStore.open(db_path).finish_run(result.run_id, "success" if result.success else "failure")
    run = JobRun(job, result.run_id, result.success, out_dir, db_path, durations, time.perf_counter() - start)
    if not result.success:
        failure = next((e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE), None)
        if failure is not None:
            cause = _root_cause(failure.event_specific_data.error)
            run = replace(run, failed_step=failure.step_key, error=cause.message.strip(), error_type=cause.cls_name)
    return run


def run_pipeline(config: RunConfig, db_path: Path | None = None) -> DemoResult:
    """Materialize every asset of ``config``'s run in order (lineage in ``db_path``, default
    OUT/personc.duckdb); never raises for a failed step (see ``success``)."""
    run = run_job(config, MAIN_JOB, db_path=db_path)
    from .core.pipeline.explaining import IcsReports
    from .core.pipeline.indexing import EmbeddingIndexes
    from .core.pipeline.judging import GuardVerdicts
    from .core.pipeline.sources import SourceSet

    guard, indexes = run.value("guard_verdicts", GuardVerdicts), run.value("embedding_indexes", EmbeddingIndexes)
    explained, sources = run.value("ics_reports", IcsReports), run.value("source_images", SourceSet)
    ids = {e.content_hash: e.source_id for e in sources.entries} if sources else {}
    released = [r.as_dict() | {"donor_ids": [ids.get(d, d[:10]) for d in r.donors]} for r in guard.released] \
        if guard and run.success else []
    taus = [{"encoder": t.encoder, "tau": t.tau, "why": t.why} for t in indexes.tau_choices().values()] \
        if indexes else []
    if not run.success:
        return DemoResult(False, run.failure(), run.out_dir, run.db_path, released, taus, run.step_seconds,
                          run.total_seconds)
    ok = len(released) >= config.num_samples
    unreleased = guard.unreleased if guard else ()
    why = "".join(f"\n  slot {u.slot}: last of {u.attempts} attempts rejected: {u.last_reason[:160]}"
                  for u in unreleased)
    message = (f"released {len(released)} of {config.num_samples} faces" if ok else
               f"only {len(released)} of {config.num_samples} faces passed every gate within "
               f"{config.max_attempts} attempts each; more, and more varied, source photos give the "
               f"face model room (or raise --max-attempts){why}")
    manifest = Path(explained.manifest) if explained and explained.manifest else None
    return DemoResult(ok, message, run.out_dir, run.db_path, released, taus, run.step_seconds, run.total_seconds,
                      guard.pass_rate if guard else None, manifest)


def _resolved(folder: str | None) -> str | None:
    return str(Path(folder).resolve()) if folder is not None else None


def _step_durations(instance, run_id: str, event_type) -> dict[str, float]:
    starts, out = {}, {}
    for record in instance.all_logs(run_id):
        ev = record.dagster_event
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type == event_type.STEP_START:
            starts[ev.step_key] = record.timestamp
        elif ev.event_type in (event_type.STEP_SUCCESS, event_type.STEP_FAILURE) and ev.step_key in starts:
            out[ev.step_key] = record.timestamp - starts[ev.step_key]
    return {k: out[k] for k in ASSET_ORDER if k in out} | {k: v for k, v in out.items() if k not in ASSET_ORDER}


def _root_cause(error):
    """The innermost error of a Dagster step failure (``SerializableErrorInfo``: what the user can act on)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error


def _read_value(path: Path, kind: type[V]) -> V | None:
    return kind.from_dict(json.loads(path.read_text())) if path.exists() else None

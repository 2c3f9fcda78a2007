"""Run the PersonC asset graph in-process (used by ``personc demo``).

This is the same graph that ``dagster dev`` shows, executed with Dagster's
in-process executor against an ephemeral instance: history lives in the
DuckDB lineage file, not in a Dagster home.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .core.pipeline.config import RunConfig

if TYPE_CHECKING:
    from .core.values import AssetValue

log = logging.getLogger(__name__)

V = TypeVar("V", bound="AssetValue")

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


def run_pipeline(config: RunConfig, db_path: Path | None = None) -> DemoResult:
    """Materialize every asset of ``config``'s run in order (lineage in ``db_path``, default
    OUT/personc.duckdb); never raises for a failed step (see ``success``)."""
    from dagster import DagsterEventType, DagsterInstance

    from .definitions import build_definitions
    from .defs.resources import resource_values

    out_dir = Path(config.out_dir).resolve()
    db_path = Path(db_path).resolve() if db_path else out_dir / "personc.duckdb"
    config = replace(config, out_dir=str(out_dir), sources_a=_resolved(config.sources_a),
                     sources_b=_resolved(config.sources_b))
    defs = build_definitions(db_path=str(db_path), **resource_values(config))
    job = defs.resolve_job_def("personc_main")
    start = time.perf_counter()
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance, raise_on_error=False,
            run_config={"loggers": {"progress": {"config": {"total_steps": len(job.nodes)}}}})
        durations = _step_durations(instance, result.run_id, DagsterEventType)
    from .core.lineage.store import LineageStore

    LineageStore.open(db_path).finish_run(result.run_id, "success" if result.success else "failure")
    total = time.perf_counter() - start
    guard, indexes, explained, sources = _stored_values(out_dir / "state")
    ids = {e.content_hash: e.source_id for e in sources.entries} if sources else {}
    released = [r.as_dict() | {"donor_ids": [ids.get(d, d[:10]) for d in r.donors]} for r in guard.released] \
        if guard and result.success else []
    taus = [{"encoder": t.encoder, "tau": t.tau, "why": t.why} for t in indexes.tau_choices().values()] \
        if indexes else []
    if not result.success:
        failure = next((e for e in result.all_events if e.event_type == DagsterEventType.STEP_FAILURE), None)
        msg = _root_cause(failure.event_specific_data.error) if failure else "the run failed"
        return DemoResult(False, f"step {failure.step_key if failure else '?'} failed: {msg}", out_dir, db_path,
                          released, taus, durations, total)
    ok = len(released) >= config.num_samples
    unreleased = guard.unreleased if guard else ()
    why = "".join(f"\n  slot {u.slot}: last of {u.attempts} attempts rejected: {u.last_reason[:160]}"
                  for u in unreleased)
    message = (f"released {len(released)} of {config.num_samples} faces" if ok else
               f"only {len(released)} of {config.num_samples} faces passed every gate within "
               f"{config.max_attempts} attempts each; more, and more varied, source photos give the "
               f"face model room (or raise --max-attempts){why}")
    manifest = Path(explained.manifest) if explained and explained.manifest else None
    return DemoResult(ok, message, out_dir, db_path, released, taus, durations, total,
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


def _root_cause(error) -> str:
    """The innermost error message of a Dagster step failure (what the user can act on)."""
    while getattr(error, "cause", None) is not None:
        error = error.cause
    return error.message.strip()


def _stored_values(state: Path):
    """The values the demo reports on, as the IO manager stored them (None for a step that never ran)."""
    from .core.pipeline.explaining import IcsReports
    from .core.pipeline.indexing import EmbeddingIndexes
    from .core.pipeline.judging import GuardVerdicts
    from .core.pipeline.sources import SourceSet

    return (_read_value(state / "guard_verdicts.json", GuardVerdicts),
            _read_value(state / "embedding_indexes.json", EmbeddingIndexes),
            _read_value(state / "ics_reports.json", IcsReports), _read_value(state / "source_images.json", SourceSet))


def _read_value(path: Path, kind: type[V]) -> V | None:
    return kind.from_dict(json.loads(path.read_text())) if path.exists() else None

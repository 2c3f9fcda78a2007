"""Step 1: ingest groups A and B into aligned, hashed source faces."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from ..atomic import file_sha256, load_npz
from ..faces.demo import prepare_demo_sources
from ..faces.ingest import Accepted, IngestResult, Role, iter_ingest, save_aligned
from ..faces.walk import WALK_CODES
from ..index import source_set_hash
from ..lineage.store import LineageStore, now
from ..types import SourceFace
from ..values import checked
from ..versioning import code_version
from .config import RunConfig, Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceEntry:
    """One accepted photo of a ``SourceSet``: where it is, whose it is and what it may be used for."""

    content_hash: str
    group: str                      # "A" or "B"
    label: str                      # the person's label (sub-folder name, else the file's stem)
    path: str                       # the photo as found in the source folder
    aligned_path: str               # its aligned face (``.npz``)
    source_id: str                  # short readable id used in reports
    role: Role = "donor"            # "donor" or "protect_only" (entries or protect_only)
    role_code: str | None = None    # protect-only: why it is no donor (codes, comma-separated)
    role_reason: str | None = None  # protect-only: the same, in sentences

    def as_dict(self) -> dict[str, Any]:
        d = {"content_hash": self.content_hash, "group": self.group, "label": self.label, "path": self.path,
             "aligned_path": self.aligned_path, "source_id": self.source_id, "role": self.role}
        if self.role_code is not None:
            d["role_code"] = self.role_code
        if self.role_reason is not None:
            d["role_reason"] = self.role_reason
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SourceEntry":
        d = checked(d, "SourceEntry", "source_images",
                    ("content_hash", "group", "label", "path", "aligned_path", "source_id"),
                    ("role", "role_code", "role_reason"))
        return cls(d["content_hash"], d["group"], d["label"], d["path"], d["aligned_path"], d["source_id"],
                   d.get("role", "donor"), d.get("role_code"), d.get("role_reason"))

    def face(self) -> SourceFace:
        """The aligned face back from its ``.npz`` file (no pickle)."""
        arr = load_npz(Path(self.aligned_path))
        return SourceFace(self.content_hash, self.group, self.label, self.path, arr["image"], arr["landmarks"])


@dataclass(frozen=True)
class SourceSet:
    """The ``source_images`` value: the accepted sources of a run.

    ``entries`` are the donor photos: they lend factors to new faces and
    protect their persons. ``protect_only`` are photos that cannot be donors
    (grayscale, a small face: ``ingest.PROTECT_ONLY_CODES``) but protect their
    persons all the same. The guard indexes both (``guarded_entries``);
    ``source_set_hash`` covers both.
    """

    source_set_hash: str
    entries: tuple[SourceEntry, ...]
    demo: bool
    protect_only: tuple[SourceEntry, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"source_set_hash": self.source_set_hash, "entries": [e.as_dict() for e in self.entries],
                "demo": self.demo, "protect_only": [e.as_dict() for e in self.protect_only]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SourceSet":
        d = checked(d, "SourceSet", "source_images", ("source_set_hash", "entries", "demo"), ("protect_only",))
        return cls(d["source_set_hash"], tuple(SourceEntry.from_dict(e) for e in d["entries"]), bool(d["demo"]),
                   tuple(SourceEntry.from_dict(e) for e in d.get("protect_only", ())))

    def hashes(self) -> list[str]:
        """The donors' content hashes."""
        return [e.content_hash for e in self.entries]

    def guarded_entries(self) -> tuple[SourceEntry, ...]:
        """Every photo the guard protects: the donors, then the protect-only photos."""
        return (*self.entries, *self.protect_only)

    def guarded_hashes(self) -> list[str]:
        return [e.content_hash for e in self.guarded_entries()]

    def by_hash(self) -> dict[str, SourceEntry]:
        """Every guarded photo by content hash."""
        return {e.content_hash: e for e in self.guarded_entries()}

    def load_faces(self) -> list[SourceFace]:
        """The donors' aligned faces back from their ``.npz`` files (no pickle)."""
        return [face for batch in self.iter_faces() for face in batch]

    def iter_faces(self, batch_size: int = 64) -> Iterator[list[SourceFace]]:
        """The donors' aligned faces in batches of ``batch_size``: memory bounded by one batch."""
        return _iter_faces(self.entries, batch_size)

    def iter_guarded_faces(self, batch_size: int = 64) -> Iterator[list[SourceFace]]:
        """``iter_faces`` over ``guarded_entries``: what the guard's indexes hold."""
        return _iter_faces(self.guarded_entries(), batch_size)


def _iter_faces(entries: tuple[SourceEntry, ...], batch_size: int) -> Iterator[list[SourceFace]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(entries), batch_size):
        yield [e.face() for e in entries[start:start + batch_size]]


def source_folders(cfg: RunConfig, ws: Workspace) -> tuple[dict[str, Path], bool]:
    """The configured A/B folders, or the demo sources when none are configured."""
    if cfg.sources_a is None and cfg.sources_b is None:
        return prepare_demo_sources(ws.demo_sources), True
    if cfg.sources_a is None or cfg.sources_b is None:
        raise ValueError("configure both sources_a and sources_b (or neither, for the demo sources)")
    folders = {"A": Path(cfg.sources_a).expanduser(), "B": Path(cfg.sources_b).expanduser()}
    for group, folder in folders.items():
        if not folder.is_dir():
            raise FileNotFoundError(f"source folder for group {group} does not exist or is not a folder: "
                                    f"{folder}")
    return folders, False


def quarantined_file_hash(path: str) -> str:
    """sha256 of a quarantined file's bytes ("" when it cannot be read: the reason already says why)."""
    try:
        return file_sha256(Path(path))
    except OSError:
        return ""


#: Temporary files of interrupted atomic writes older than this are removed at
#: the start of a run (younger ones may belong to a run still writing them).
STALE_TMP_S = 3600.0


def remove_stale_temp_files(root: Path, older_than_s: float = STALE_TMP_S) -> int:
    """Delete ``.*.tmp`` leftovers of killed writers under ``root``; returns how many.

    ``atomic`` writes go to ``.<name>.<random>.tmp`` and are renamed when
    complete, so such a file is never read by anything; it only takes space.
    """
    if not Path(root).is_dir():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for tmp in Path(root).rglob(".*.tmp"):
        try:
            if tmp.is_file() and tmp.stat().st_mtime < cutoff:
                tmp.unlink()
                removed += 1
        except OSError:  # another process removed or renamed it first
            continue
    if removed:
        log.info("removed %d stale temporary files under %s", removed, root)
    return removed


def ingest_sources(cfg: RunConfig, ws: Workspace, store: LineageStore, run_id: str,
                   progress: Callable[[int, int, str], None] | None = None,
                   workers: int | None = None) -> tuple[SourceSet, IngestResult]:
    """Ingest, save aligned faces and record sources/quarantine/duplicates in one transaction.

    Faces are streamed from a pool of workers and written to disk as they
    arrive, so memory does not grow with the number of photos; the returned
    ``IngestResult`` holds the quarantined files, duplicates and notes (its
    ``faces`` stays empty: the accepted faces are the ``SourceSet``).
    """
    remove_stale_temp_files(ws.root)
    folders, demo = source_folders(cfg, ws)
    result = IngestResult()
    donors, protect_only = [], []
    for outcome in iter_ingest(folders, cfg.min_face_px, workers, progress, aligned_dir=ws.aligned):
        result.add(outcome, keep_faces=False)
        if not isinstance(outcome, Accepted):
            continue
        entry = source_entry(outcome, save_aligned(outcome.face, ws.aligned))  # saved by the worker: a check
        (protect_only if outcome.not_donor else donors).append(entry)
    groups = {e.group for e in donors}
    if groups != {"A", "B"}:
        missing = sorted({"A", "B"} - groups)
        raise ValueError(f"no usable donor face in group(s) {', '.join(missing)}; see the quarantine table "
                         f"({result.reason_counts()}) and the protect-only photos ({len(protect_only)})")
    entries = donors + protect_only
    sset = SourceSet(source_set_hash([e.content_hash for e in entries]), tuple(donors), demo,
                     tuple(protect_only))
    t = now()
    with store.transaction() as tx:
        tx.supersede_changed_paths({e.path: e.content_hash for e in entries}, run_id,
                                   roots=[str(f) for f in folders.values()])
        known = {h for (h,) in tx.query("SELECT content_hash FROM sources")}
        tx.upsert("sources", [
            {"content_hash": e.content_hash, "source_id": e.source_id, "grp": e.group,
             "label": e.label, "path": e.path, "aligned_path": e.aligned_path, "superseded": False,
             "superseded_by": None, "first_run_id": run_id, "last_run_id": run_id,
             "code_version": code_version(), "updated_at": t, "role": e.role,
             "role_code": e.role_code, "role_reason": e.role_reason}
            for e in entries if e.content_hash not in known])
        tx.update_many(
            "UPDATE sources SET last_run_id = ?, superseded = FALSE, superseded_by = NULL, path = ?, "
            "updated_at = ?, role = ?, role_code = ?, role_reason = ? WHERE content_hash = ?",
            [[run_id, e.path, t, e.role, e.role_code, e.role_reason, e.content_hash]
             for e in entries if e.content_hash in known])
        tx.upsert("quarantine", [
            {"path": q.path, "grp": q.group, "code": q.code, "reason": q.reason,
             "file_sha256": "" if q.code in WALK_CODES else quarantined_file_hash(q.path), "run_id": run_id,
             "seen_at": t} for q in result.quarantined])
        tx.upsert("duplicates", [
            {"path": d.path, "content_hash": d.content_hash, "kept_path": d.kept_path, "run_id": run_id}
            for d in result.duplicates])
    store.begin_run(run_id, cfg.as_dict(), cfg.backbone, sset.source_set_hash)
    return sset, result


def source_entry(outcome: Accepted, aligned_path: Path) -> SourceEntry:
    """The ``SourceSet`` entry of an accepted photo; a protect-only one says why it is no donor."""
    face = outcome.face
    code = ",".join(code for code, _ in outcome.not_donor) if outcome.not_donor else None
    reason = "; ".join(reason for _, reason in outcome.not_donor) if outcome.not_donor else None
    return SourceEntry(face.content_hash, face.group, face.label, face.path, str(aligned_path), face.source_id,
                       outcome.role, code, reason)


def outcome_table(sset: SourceSet, result: IngestResult) -> list[dict[str, str]]:
    """One row per file seen: accepted (with notes), protect-only (why it is no donor), duplicate or
    quarantined (with its code)."""
    rows = [{"file": e.path, "group": e.group, "outcome": "accepted",
             "code": "exif_rotated" if "EXIF" in result.notes.get(e.path, "") else "ok",
             "reason": result.notes.get(e.path, "")} for e in sset.entries]
    rows += [{"file": e.path, "group": e.group, "outcome": "protect_only", "code": e.role_code,
              "reason": e.role_reason} for e in sset.protect_only]
    rows += [{"file": d.path, "group": d.group, "outcome": "duplicate", "code": "duplicate",
              "reason": f"same pixels as {d.kept_path}"} for d in result.duplicates]
    rows += [{"file": q.path, "group": q.group, "outcome": "quarantined", "code": q.code, "reason": q.reason}
             for q in result.quarantined]
    return sorted(rows, key=lambda r: r["file"])

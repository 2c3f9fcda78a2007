"""Ingest photos of groups A and B: validate, orient, detect, align, hash.

Every file in a source folder ends as exactly one of: an accepted
``SourceFace``, a duplicate of an accepted face (recorded), or a quarantined
file with a reason. One bad file never stops the others.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..types import GROUPS, Group, SourceFace
from .align import ALIGNED_SIZE, align_face
from .detect import detect_faces
from .loading import ImageRejected, decode_image

log = logging.getLogger(__name__)

#: Faces whose detector box is narrower than this (in source pixels) are too
#: small to describe reliably.
MIN_FACE_PX = 64


@dataclass(frozen=True)
class Quarantined:
    """A file that was not used, and why."""

    path: str
    group: Group
    code: str
    reason: str
    content_hash: str | None = None


@dataclass(frozen=True)
class Duplicate:
    """A file whose decoded pixels equal an accepted face's."""

    path: str
    group: Group
    content_hash: str
    kept_path: str


@dataclass
class IngestResult:
    faces: list[SourceFace] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # path -> e.g. "EXIF rotation applied"

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for q in self.quarantined:
            counts[q.code] = counts.get(q.code, 0) + 1
        return counts


def list_source_files(folder: Path) -> Iterable[tuple[Path, str | None]]:
    """Files under ``folder`` (recursive, sorted), each with a problem or None.

    Hidden files are skipped. A symlink that resolves outside ``folder`` is
    reported, not followed.
    """
    root = folder.resolve()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            problem = None
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    problem = f"symlink points outside the source folder (to {target})"
                elif not target.is_file():
                    problem = "symlink target is not a file"
            yield path, problem


def label_for(path: Path, folder: Path) -> str:
    """Person label: the sub-folder name when photos are grouped by person, else the file stem."""
    rel = path.relative_to(folder)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def ingest_file(path: Path, group: Group, label: str,
                min_face_px: int = MIN_FACE_PX, size: int = ALIGNED_SIZE) -> SourceFace:
    """One photo → an aligned ``SourceFace``, or raise ``ImageRejected``."""
    decoded = decode_image(path)
    faces = detect_faces(decoded.pixels)
    if not faces:
        raise ImageRejected("no_face", "no face was detected")
    if len(faces) > 1:
        raise ImageRejected("multiple_faces", f"{len(faces)} faces detected; exactly one is required")
    face = faces[0]
    width = face.box[2] - face.box[0]
    if width < min_face_px:
        raise ImageRejected("face_too_small", f"face is {width} px wide; at least {min_face_px} px needed")
    aligned, landmarks, _ = align_face(decoded.pixels, face.landmarks, size)
    return SourceFace(decoded.content_hash, group, label, str(path), aligned, landmarks)


def ingest_folders(folders: Mapping[Group, Path], min_face_px: int = MIN_FACE_PX,
                   progress: Callable[[int, int, str], None] | None = None) -> IngestResult:
    """Ingest every file of each group's folder; see the module docstring."""
    for group in folders:
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; groups are {GROUPS}")
    jobs: list[tuple[Path, Group, Path, str | None]] = []
    for group, folder in folders.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"source folder for group {group} does not exist: {folder}")
        jobs += [(p, group, folder, problem) for p, problem in list_source_files(folder)]
    result = IngestResult()
    by_hash: dict[str, SourceFace] = {}
    for done, (path, group, folder, problem) in enumerate(jobs, 1):
        if progress:
            progress(done, len(jobs), str(path))
        if problem:
            result.quarantined.append(Quarantined(str(path), group, "outside_source_dir", problem))
            continue
        try:
            face = ingest_file(path, group, label_for(path, folder), min_face_px)
        except ImageRejected as exc:
            log.info("quarantined %s: %s", path, exc)
            result.quarantined.append(Quarantined(str(path), group, exc.code, exc.reason))
            continue
        except Exception as exc:  # never lose the run to one file
            log.warning("unexpected error on %s: %s", path, exc)
            result.quarantined.append(Quarantined(str(path), group, "error", f"{type(exc).__name__}: {exc}"))
            continue
        if face.content_hash in by_hash:
            kept = by_hash[face.content_hash]
            result.duplicates.append(Duplicate(str(path), group, face.content_hash, kept.path))
            continue
        by_hash[face.content_hash] = face
        result.faces.append(face)
    log.info("ingested %d faces, %d quarantined, %d duplicates",
             len(result.faces), len(result.quarantined), len(result.duplicates))
    return result

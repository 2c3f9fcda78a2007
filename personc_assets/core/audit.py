"""Audit arbitrary images against a source set with the guard.

``personc audit`` uses this module. It judges with the same ``Guard`` the
asset graph uses (``core/guard.py``), built by ``ensemble.guard_over_faces``
(the red team builds its guard the same way): sources are ingested with
``faces/ingest.py``, embedded with the cached ``ensemble.embed_sources``,
indexed with ``EmbeddingIndex`` and every candidate image goes through
``Guard.check`` (face detection, every encoder, fail-closed rules).

Each candidate ends with a status:

``clear``       every gating encoder stays below its tau;
``leak``        some gating encoder's max similarity to a source reaches tau;
``unverified``  the guard could not check it (unreadable file, no face, several
                faces, an encoder or index error; a symlink leading outside the
                candidate folder, a broken link, a link loop): rejected, fail closed.

Every file under the candidate folder gets a row (``faces/walk.py``): hidden
files are judged like any other, symlinks inside the folder are followed.

Witness encoders (``gating=False``) are measured and reported but never
decide; their would-be leaks are counted in ``AuditReport.witness_leaks``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .encoders.base import Encoder
from .ensemble import GuardedEncoder, TauChoice, check_witnesses, guard_over_faces
from .faces.ingest import IngestResult, MIN_FACE_PX, Quarantined, ingest_folders
from .faces.loading import ImageRejected, decode_image
from .faces.walk import ListedFile, list_files
from .gates import REUSE
from .guard import PASS, REJECT, Guard, Verdict
from .lineage.store import LineageStore
from .types import SourceFace

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]

CLEAR, LEAK, UNVERIFIED = "clear", "leak", "unverified"
#: Candidates judged per ``Guard.check`` call (bounds the images held in memory).
BATCH = 16


@dataclass(frozen=True)
class EncoderResult:
    """One encoder's measurement of one candidate."""

    encoder: str
    max_similarity: float | None   # None when not measured
    nearest_source: str | None     # label/file of the nearest source
    tau: float
    verdict: str
    gating: bool
    reason: str

    @property
    def leaks(self) -> bool:
        return self.max_similarity is not None and self.max_similarity >= self.tau


@dataclass(frozen=True)
class AuditRow:
    candidate: str
    status: str   # clear, leak or unverified
    verdict: str  # the guard's PASS or REJECT
    reason: str
    encoders: tuple[EncoderResult, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "status": self.status, "verdict": self.verdict,
                "reason": self.reason,
                "encoders": {e.encoder: {"max_similarity": e.max_similarity, "nearest_source": e.nearest_source,
                                         "tau": e.tau, "verdict": e.verdict, "gating": e.gating,
                                         "reason": e.reason} for e in self.encoders}}


@dataclass(frozen=True)
class AuditReport:
    rows: tuple[AuditRow, ...]
    encoders: tuple[GuardedEncoder, ...]
    sources: int
    source_problems: tuple[Quarantined, ...]
    skipped_encoders: tuple[dict[str, str], ...] = field(default=())

    @property
    def leaks(self) -> int:
        return sum(r.status == LEAK for r in self.rows)

    @property
    def unverified(self) -> int:
        return sum(r.status == UNVERIFIED for r in self.rows)

    @property
    def witness_leaks(self) -> dict[str, int]:
        """Per witness encoder: candidates it would have rejected by similarity."""
        return {e.name: sum(any(x.encoder == e.name and x.leaks for x in r.encoders) for r in self.rows)
                for e in self.encoders if not e.gating}

    def as_dict(self) -> dict[str, Any]:
        return {"candidates": len(self.rows), "leaks": self.leaks, "unverified": self.unverified,
                "sources": self.sources,
                "source_problems": [{"path": q.path, "code": q.code, "reason": q.reason}
                                    for q in self.source_problems],
                "encoders": [vars(e) for e in self.encoders], "skipped_encoders": list(self.skipped_encoders),
                "witness_leaks": self.witness_leaks, "rows": [r.as_dict() for r in self.rows]}


def ingest_source_dirs(dirs: Sequence[Path], min_face_px: int = MIN_FACE_PX,
                       progress: Progress | None = None) -> IngestResult:
    """Every face photo under ``dirs`` (same rules as the pipeline), deduplicated across folders."""
    merged = IngestResult()
    seen: dict[str, SourceFace] = {}
    for folder in dirs:
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"source folder does not exist or is not a folder: {folder}")
        part = ingest_folders({"A": Path(folder)}, min_face_px, progress)
        merged.quarantined += part.quarantined
        merged.duplicates += part.duplicates
        for face in part.faces:
            if face.content_hash not in seen:
                seen[face.content_hash] = face
                merged.faces.append(face)
    return merged


def list_candidates(folder: Path) -> list[ListedFile]:
    """Every file under ``folder``: hidden files too, symlinks inside it followed, the rest with a reason."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"candidate folder does not exist or is not a folder: {folder}")
    return list(list_files(Path(folder)))


def unlisted_rows(listed: Sequence[ListedFile]) -> list[AuditRow]:
    """An ``unverified`` row for each listed path that is not read (link outside the folder, loop, ...)."""
    return [AuditRow(str(f.path), UNVERIFIED, REJECT, f"{f.problem[0]}: {f.problem[1]}", ())
            for f in listed if f.problem is not None]


def _number(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def row_from_verdict(candidate: str, v: Verdict, source_names: Mapping[str, str]) -> AuditRow:
    """An ``AuditRow`` from the guard's verdict (status derived from the per-encoder results)."""
    results = tuple(EncoderResult(ev.encoder, _number(ev.max_similarity),
                                  source_names.get(ev.nearest_source or "", ev.nearest_source),
                                  ev.tau, ev.verdict, ev.gating, ev.reason) for ev in v.per_encoder)
    reused = any(g.gate == REUSE and not g.passed and math.isfinite(g.score) and g.score >= g.threshold
                 for g in v.gates)
    if v.verdict == PASS:
        status = CLEAR
    elif reused or any(r.gating and r.leaks for r in results):
        status = LEAK
    else:
        status = UNVERIFIED
    return AuditRow(candidate, status, v.verdict, v.reason, results)


def audit_images(guard: Guard, candidates: Sequence[Path], source_names: Mapping[str, str],
                 progress: Progress | None = None) -> list[AuditRow]:
    """Judge every candidate file with ``guard``; unreadable files are ``unverified``."""
    rows: list[AuditRow] = []
    for start in range(0, len(candidates), BATCH):
        batch: list[tuple[str, np.ndarray]] = []
        for path in candidates[start:start + BATCH]:
            try:
                batch.append((str(path), decode_image(path).pixels))
            except ImageRejected as exc:
                rows.append(AuditRow(str(path), UNVERIFIED, REJECT, f"{exc.code}: {exc.reason}", ()))
        for (name, _), verdict in zip(batch, guard.check(batch)):
            rows.append(row_from_verdict(name, verdict, source_names))
        if progress:
            progress(min(start + BATCH, len(candidates)), len(candidates), "candidates judged")
    order = {str(p): i for i, p in enumerate(candidates)}
    return sorted(rows, key=lambda r: order[r.candidate])


def source_display_names(faces: Sequence[SourceFace]) -> dict[str, str]:
    """``content_hash -> "label/file"`` for tables."""
    return {f.content_hash: f"{f.label}/{Path(f.path).name}" if f.label != Path(f.path).stem
            else Path(f.path).name for f in faces}


def run_audit(source_dirs: Sequence[Path], candidate_dir: Path, encoders: Sequence[Encoder],
              taus: Mapping[str, TauChoice], store: LineageStore, run_id: str, witnesses: Sequence[str] = (),
              min_face_px: int = MIN_FACE_PX, skipped: Sequence[dict[str, str]] = (),
              progress: Progress | None = None) -> AuditReport:
    """Ingest ``source_dirs``, build the guard over them and judge every file of ``candidate_dir``."""
    check_witnesses(encoders, witnesses)
    listed = list_candidates(candidate_dir)
    ingested = ingest_source_dirs(source_dirs, min_face_px, progress)
    guard, used = guard_over_faces(encoders, taus, ingested.faces, store, run_id, witnesses, progress)
    readable = [f.path for f in listed if f.problem is None]
    judged = {r.candidate: r for r in audit_images(guard, readable, source_display_names(ingested.faces), progress)}
    judged.update({r.candidate: r for r in unlisted_rows(listed)})
    rows = [judged[str(f.path)] for f in listed]
    return AuditReport(tuple(rows), tuple(used), len(ingested.faces), tuple(ingested.quarantined), tuple(skipped))


def render_table(report: AuditReport) -> str:
    """A fixed-width text table: one line per candidate, max similarity and nearest source per encoder."""
    names = [e.name for e in report.encoders]
    head = ["candidate", "status"] + [f"{n}{'' if e.gating else ' (witness)'} sim / nearest"
                                      for n, e in zip(names, report.encoders)] + ["reason"]
    lines = []
    for r in report.rows:
        by = {e.encoder: e for e in r.encoders}
        cells = [Path(r.candidate).name, r.status.upper()]
        for n in names:
            e = by.get(n)
            cells.append("-" if e is None or e.max_similarity is None
                         else f"{e.max_similarity:.3f} / {e.nearest_source}")
        cells.append("" if r.status == CLEAR else r.reason)
        lines.append(cells)
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*c) for c in lines]
    taus = ", ".join(f"{e.name} tau {e.tau:.3f} ({'gating' if e.gating else 'witness'}, {e.index_kind}, "
                     f"{e.sources} sources)" for e in report.encoders)
    out += ["", f"{len(report.rows)} candidates: {report.leaks} leak(s), {report.unverified} unverified, "
                f"{len(report.rows) - report.leaks - report.unverified} clear. {taus}."]
    for name, n in report.witness_leaks.items():
        out.append(f"witness {name} would have rejected {n} of {len(report.rows)} candidates by similarity")
    for q in report.source_problems:
        out.append(f"source not indexed: {q.path}: {q.code}: {q.reason}")
    for s in report.skipped_encoders:
        out.append(f"encoder skipped: {s.get('encoder')}: {s.get('reason')}")
    return "\n".join(out) + "\n"

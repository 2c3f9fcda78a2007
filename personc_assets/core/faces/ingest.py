"""Ingest photos of groups A and B: validate, orient, detect, align, hash.

Every file in a source folder ends as exactly one of: an accepted
``SourceFace``, a duplicate of an accepted face (recorded), or a quarantined
file with a reason code. One bad file never stops the others.

An accepted photo has one of two roles. A *donor* may lend factors to new
faces and protects its person. A *protect-only* photo (grayscale or CMYK, a
face under ``min_face_px``) cannot be a donor but an encoder can embed it, so
the guard indexes it like every other: every photo of a source person
protects that person. Only what cannot be embedded (no face, several faces,
an unreadable file, ...) is quarantined.

``iter_ingest`` streams the outcomes in file order while this process and a
pool of worker processes (one dlib detector each) decode and align the next
files, so peak memory is bounded by the pool's window, not by the number of
photos, and every core of the machine is busy. ``ingest_folders`` collects the stream into
an ``IngestResult`` (convenient for small sets and tests).
"""

from __future__ import annotations

import collections
import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, Mapping, Sequence

from ..types import GROUPS, Group, SourceFace
from .align import ALIGNED_SIZE, align_face
from .detect import detect_faces, load_models
from ..atomic import atomic_save_npz, atomic_save_png
from .loading import DONOR_CODES, ImageRejected, decode_image
from .walk import WALK_CODES, list_files

log = logging.getLogger(__name__)

#: Faces whose detector box is narrower than this (in source pixels) are too
#: small to describe reliably.
MIN_FACE_PX = 64
#: Below this many files a pool costs more than it saves (each worker imports dlib
#: and loads the 68-point model: 1-3 s).
MIN_FILES_FOR_POOL = 24
#: Files in flight per worker: enough to keep workers busy, small enough that
#: finished-but-unconsumed faces (~200 KB each) stay few.
WINDOW_PER_WORKER = 4

Progress = Callable[[int, int, str], None]

#: Codes ingestion adds to ``loading.REJECTION_CODES``.
INGEST_CODES: dict[str, str] = {
    **WALK_CODES,
    "no_face": "no face was detected",
    "multiple_faces": "more than one face; crop the photo to one person",
    "worker_crashed": "decoding or detection crashed the worker process",
    "error": "an unexpected error (the message says which)",
}


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


#: Why a photo that protects its person is no donor, by code (``loading.DONOR_CODES`` and these).
PROTECT_ONLY_CODES: dict[str, str] = {
    **DONOR_CODES,
    "face_too_small": f"the face is narrower than the minimum (default {MIN_FACE_PX} px): too little detail to "
                      "lend, enough to recognise",
}

#: ``donor``: lends factors to new faces and protects its person; ``protect_only``: only protects.
Role = Literal["donor", "protect_only"]


@dataclass(frozen=True)
class Accepted:
    """A file that became a source face; ``notes`` say what was done to it (e.g. EXIF rotation).

    ``not_donor`` holds ``(code, reason)`` pairs (codes of ``PROTECT_ONLY_CODES``)
    when the photo cannot be a donor; it protects its person either way.
    """

    face: SourceFace
    notes: tuple[str, ...] = ()
    not_donor: tuple[tuple[str, str], ...] = ()

    @property
    def role(self) -> Role:
        return "protect_only" if self.not_donor else "donor"


Outcome = Accepted | Quarantined | Duplicate


@dataclass
class IngestResult:
    faces: list[SourceFace] = field(default_factory=list)  # every accepted face: donors and protect-only
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # path -> e.g. "EXIF rotation applied"
    accepted: int = 0  # faces accepted (``faces`` may be left empty by streaming callers)
    not_donor: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # protect-only path -> why

    def add(self, outcome: Outcome, keep_faces: bool = True) -> None:
        if isinstance(outcome, Accepted):
            self.accepted += 1
            if keep_faces:
                self.faces.append(outcome.face)
            if outcome.notes:
                self.notes[outcome.face.path] = "; ".join(outcome.notes)
            if outcome.not_donor:
                self.not_donor[outcome.face.path] = outcome.not_donor
        elif isinstance(outcome, Quarantined):
            self.quarantined.append(outcome)
        else:
            self.duplicates.append(outcome)

    def reason_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for q in self.quarantined:
            counts[q.code] = counts.get(q.code, 0) + 1
        return counts


def list_source_files(folder: Path) -> Iterable[tuple[Path, tuple[str, str] | None]]:
    """Every file under ``folder`` (recursive, stable order), each with ``(code, reason)`` or None.

    Hidden files are listed like any other; symlinks inside ``folder`` are
    followed (loops reported), those leading outside it are reported, not
    followed (see ``walk.list_files``).
    """
    for listed in list_files(folder):
        yield listed.path, listed.problem


def label_for(path: Path, folder: Path) -> str:
    """Person label: the sub-folder name when photos are grouped by person, else the file stem."""
    rel = path.relative_to(folder)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def ingest_file(path: Path, group: Group, label: str,
                min_face_px: int = MIN_FACE_PX, size: int = ALIGNED_SIZE) -> SourceFace:
    """One photo → an aligned ``SourceFace`` fit to be a donor, or raise ``ImageRejected``.

    For callers that mix the face's factors (the privacy modes' inputs): a
    protect-only photo is refused with the reason it is no donor.
    """
    accepted = _ingest_file(path, group, label, min_face_px, size)
    if accepted.not_donor:
        raise ImageRejected(*accepted.not_donor[0])
    return accepted.face


def _ingest_file(path: Path, group: Group, label: str, min_face_px: int, size: int) -> Accepted:
    decoded = decode_image(path)
    faces = detect_faces(decoded.pixels)
    if not faces:
        # HOG sees faces of 80 px and up; one upsampled pass (4x the cost, paid only
        # for photos without a face) tells "face too small" apart from "no face"
        faces = detect_faces(decoded.pixels, upsample=1)
    if not faces:
        raise ImageRejected("no_face", "no face was detected")
    if len(faces) > 1:
        raise ImageRejected("multiple_faces", f"{len(faces)} faces detected; exactly one is required — "
                            "crop the photo to one person")
    face = faces[0]
    not_donor = list(decoded.donor_problems)
    width = face.box[2] - face.box[0]
    if width < min_face_px:
        not_donor.append(("face_too_small", f"face is {width} px wide: it protects its person but is no donor "
                          f"(at least {min_face_px} px needed) — use a larger photo or a closer crop to make it one"))
    aligned, landmarks, _ = align_face(decoded.pixels, face.landmarks, size)
    notes = ("EXIF rotation applied",) if decoded.exif_rotated else ()
    return Accepted(SourceFace(decoded.content_hash, group, label, str(path), aligned, landmarks), notes,
                    tuple(not_donor))


@dataclass(frozen=True)
class IngestJob:
    """One file to ingest (picklable: it crosses to a worker process)."""

    path: str
    group: Group
    label: str
    problem: tuple[str, str] | None  # (code, reason): quarantined without being read
    min_face_px: int
    aligned_dir: str | None = None  # where the worker writes the aligned crop (see ``save_aligned``)


def process_job(job: IngestJob) -> Accepted | Quarantined:
    """Run one job; every failure becomes a ``Quarantined`` (never raises)."""
    if job.problem:
        return Quarantined(job.path, job.group, *job.problem)
    try:
        accepted = _ingest_file(Path(job.path), job.group, job.label, job.min_face_px, ALIGNED_SIZE)
        if job.aligned_dir:
            save_aligned(accepted.face, Path(job.aligned_dir))
        return accepted
    except ImageRejected as exc:
        log.info("quarantined %s: %s", job.path, exc)
        return Quarantined(job.path, job.group, exc.code, exc.reason)
    except Exception as exc:  # never lose the run to one file
        log.warning("unexpected error on %s: %s", job.path, exc)
        return Quarantined(job.path, job.group, "error", f"{type(exc).__name__}: {exc}")


def save_aligned(face: SourceFace, folder: Path) -> Path:
    """Write ``<hash>.npz`` (crop and landmarks) and a ``<hash>.png`` preview once; returns the ``.npz``.

    Done by the worker that aligned the face, so compression and fsync run in
    parallel instead of queueing in the process that consumes the stream.
    """
    npz = Path(folder) / f"{face.content_hash}.npz"
    if not npz.exists():
        atomic_save_npz(npz, image=face.aligned, landmarks=face.landmarks)
        atomic_save_png(npz.with_suffix(".png"), face.aligned)
    return npz


def plan_jobs(folders: Mapping[Group, Path], min_face_px: int = MIN_FACE_PX,
              aligned_dir: Path | None = None) -> list[IngestJob]:
    """Every file of each group's folder as a job, in a stable order."""
    for group in folders:
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r}; groups are {GROUPS}")
    jobs: list[IngestJob] = []
    for group, folder in folders.items():
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"source folder for group {group} does not exist: {folder}")
        jobs += [IngestJob(str(p), group, label_for(p, folder), problem, min_face_px,
                           str(aligned_dir) if aligned_dir else None)
                 for p, problem in list_source_files(folder)]
    return jobs


#: Environment variable that sets the number of processes that ingest, this one included
#: (default: one per CPU).
WORKERS_ENV = "PERSONC_INGEST_WORKERS"


def default_workers() -> int:
    """Processes that ingest, this one included: ``$PERSONC_INGEST_WORKERS``, else the CPUs this process
    may use."""
    configured = os.environ.get(WORKERS_ENV, "").strip()
    if configured:
        try:
            return max(1, int(configured))
        except ValueError:
            raise ValueError(f"{WORKERS_ENV} must be a whole number of worker processes, "
                             f"got {configured!r}") from None
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def iter_ingest(folders: Mapping[Group, Path], min_face_px: int = MIN_FACE_PX, workers: int | None = None,
                progress: Progress | None = None, aligned_dir: Path | None = None) -> Iterator[Outcome]:
    """Stream one outcome per file (file order), de-duplicating by content hash.

    ``workers`` processes, this one included, decode and align in parallel
    (default: one per CPU; 1 or a handful of files: this process alone). At most
    ``WINDOW_PER_WORKER * workers`` files are in flight, so memory stays flat.
    With ``aligned_dir``, each accepted face is also saved there by the worker
    that aligned it (``save_aligned``).
    """
    jobs = plan_jobs(folders, min_face_px, aligned_dir)
    workers = default_workers() if workers is None else max(1, int(workers))
    if workers == 1 or len(jobs) < MIN_FILES_FOR_POOL:
        results: Iterator[Accepted | Quarantined] = map(process_job, jobs)
    else:
        results = _pooled(jobs, workers)
    kept: dict[str, str] = {}  # content hash -> path of the accepted face
    counts = collections.Counter()
    for done, (job, outcome) in enumerate(zip(jobs, results), 1):
        if isinstance(outcome, Accepted):
            first = kept.setdefault(outcome.face.content_hash, outcome.face.path)
            if first != outcome.face.path:
                outcome = Duplicate(job.path, job.group, outcome.face.content_hash, first)
        counts[type(outcome).__name__] += 1
        counts["protect_only"] += isinstance(outcome, Accepted) and outcome.role == "protect_only"
        if progress:
            progress(done, len(jobs), job.path)
        yield outcome
    log.info("ingested %d files: %d accepted (%d protect-only), %d quarantined, %d duplicates", len(jobs),
             counts["Accepted"], counts["protect_only"], counts["Quarantined"], counts["Duplicate"])


def ingest_folders(folders: Mapping[Group, Path], min_face_px: int = MIN_FACE_PX,
                   progress: Progress | None = None, workers: int | None = None) -> IngestResult:
    """Ingest every file of each group's folder into memory; see the module docstring."""
    result = IngestResult()
    for outcome in iter_ingest(folders, min_face_px, workers, progress):
        result.add(outcome)
    return result


def _worker_init(warm: bool) -> None:
    """One thread per worker (the processes are the parallelism); with ``warm``, dlib's models loaded
    before the worker reports ready (see ``_pooled``)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - cv2 is a dependency; threads are only a tuning
        pass
    if warm:
        load_models()


def _new_pool(workers: int, warm: bool = False) -> ProcessPoolExecutor:
    # spawn: forking a process that already runs threads (Dagster, torch) can deadlock
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_init, initargs=(warm,))


def _done(outcome: Accepted | Quarantined) -> Future:
    future: Future = Future()
    future.set_result(outcome)
    return future


def _pooled(jobs: Sequence[IngestJob], workers: int, run: Callable[[IngestJob], Accepted | Quarantined] = process_job,
            warm: bool = True) -> Iterator[Accepted | Quarantined]:
    """``run`` of each of ``jobs`` in order, computed by this process and ``workers - 1`` worker processes
    (``warm``: that load dlib's models as they start).

    A worker process needs seconds to start (import dlib, load its two models)
    before it ingests anything: until one is ready this process ingests the
    files itself, and from then on it takes the next file whenever the oldest
    file in flight is not done, so no CPU waits for a worker to start. At most
    ``WINDOW_PER_WORKER * workers`` files are in flight.

    A worker that dies (a decoder crashing on a hostile file) breaks the pool:
    the unfinished files are then retried one at a time in a fresh worker, the
    one that crashes again is quarantined as ``worker_crashed``, and the rest
    continue in a new pool.
    """
    children = workers - 1
    window = WINDOW_PER_WORKER * workers
    pending = collections.deque(jobs)
    inflight: collections.deque[tuple[IngestJob, Future, bool]] = collections.deque()  # (job, result, here)
    pool = _new_pool(children, warm)
    ready = pool.submit(os.getpid)  # done once a worker has started (and loaded the models)
    local_only = False  # the pool is out of use
    try:
        while pending or inflight:
            if ready.done() and not local_only:
                local_only = not _feed(pool, run, ready, pending, inflight, WINDOW_PER_WORKER * children, window)
            if pending and len(inflight) < window and not (inflight and inflight[0][1].done()):
                job = pending.popleft()
                inflight.append((job, _done(run(job)), True))
                continue
            job, future, here = inflight.popleft()
            try:
                result = future.result()
            except BrokenProcessPool:
                pool.shutdown(wait=False, cancel_futures=True)
                unfinished = [(job, future, here), *inflight]
                inflight.clear()
                if not _workers_start():
                    log.warning("ingestion worker processes cannot start; ingesting %d files in this process",
                                len(unfinished) + len(pending))
                    yield from (f.result() if h else run(j) for j, f, h in unfinished)
                    yield from map(run, pending)
                    return
                for j, f, h in unfinished:
                    yield f.result() if h else _isolated(j, run)
                pool = _new_pool(children, warm)
                ready = pool.submit(os.getpid)
                continue
            yield result
    finally:
        # a worker still loading its models is not waited for; one that ingested is reaped now
        pool.shutdown(wait=ready.done() and not pending and not inflight, cancel_futures=True)


def _feed(pool: ProcessPoolExecutor, run: Callable[[IngestJob], Accepted | Quarantined], ready: Future,
          pending: collections.deque, inflight: collections.deque, on_pool: int, window: int) -> bool:
    """Move pending jobs onto the started ``pool`` until it holds ``on_pool`` of them (and ``inflight``
    ``window``); False when the pool cannot take work (its workers could not start or died idle)."""
    if ready.exception() is not None:
        log.warning("ingestion worker processes cannot start (%s); ingesting in this process", ready.exception())
        return False
    room = on_pool - sum(not here for _, _, here in inflight)
    while pending and room > 0 and len(inflight) < window:
        job = pending.popleft()
        try:
            inflight.append((job, pool.submit(run, job), False))
        except BrokenProcessPool as exc:
            pending.appendleft(job)
            if not any(not here for _, _, here in inflight):
                log.warning("ingestion worker processes stopped (%s); ingesting in this process", exc)
                return False
            break  # the broken future in flight retries its files
        room -= 1
    return True


def _workers_start() -> bool:
    """Whether a fresh worker process can run at all (else a broken pool says nothing about a file)."""
    try:
        with _new_pool(1) as probe:
            probe.submit(os.getpid).result()
        return True
    except BrokenProcessPool:
        return False


def _isolated(job: IngestJob, run: Callable[[IngestJob], Accepted | Quarantined]) -> Accepted | Quarantined:
    """Run one job in its own worker so that a crash can be pinned on its file."""
    with _new_pool(1) as solo:
        try:
            return solo.submit(run, job).result()
        except BrokenProcessPool:
            log.error("ingesting %s crashed a worker process; quarantined", job.path)
            return Quarantined(job.path, job.group, "worker_crashed",
                               "decoding or face detection crashed the worker process (a malformed or hostile file)")


def snapshot_folders(folders: Mapping[Group, Path]) -> dict[str, str]:
    """``{path: "size:mtime_ns"}`` of every file ingestion would look at (cheap: no decoding).

    A missing folder contributes nothing (ingestion itself reports it).
    """
    snap: dict[str, str] = {}
    for folder in folders.values():
        if not Path(folder).is_dir():
            continue
        for path, _ in list_source_files(Path(folder)):
            try:
                st = path.stat()  # follows symlinks: a changed target counts as a change
                snap[str(path)] = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                snap[str(path)] = "unreadable"
    return snap


def diff_snapshots(old: Mapping[str, str], new: Mapping[str, str]) -> dict[str, list[str]]:
    """Files ``added``, ``changed`` and ``removed`` between two ``snapshot_folders`` results."""
    return {"added": sorted(set(new) - set(old)),
            "changed": sorted(p for p in set(new) & set(old) if new[p] != old[p]),
            "removed": sorted(set(old) - set(new))}

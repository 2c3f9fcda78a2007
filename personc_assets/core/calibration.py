"""Per-encoder thresholds from labelled faces, and what they mean for 1:N search.

Scores
------
For one encoder and a set of faces labelled by person, every unordered pair of
faces gives a cosine score: *same-person* (genuine) pairs and *different-person*
(impostor) pairs. Their distributions are summarised (count, min, percentiles,
max) and the *best single threshold* is the one that minimises
FMR + FNMR on the sample, where at threshold t

- FMR(t)  = share of different-person pairs scoring >= t (false matches),
- FNMR(t) = share of same-person pairs scoring < t (misses).

tau for a target false-match rate per released face
---------------------------------------------------
The guard compares each released face with all N sources: a 1:N search. A
pair threshold with per-pair false-match rate p makes, for a face of a new
person and N independent sources, the chance that *some* source scores >= t

    FMR_face(t) = 1 - (1 - p(t))^N    (~ N·p for small p).

So a verification threshold for one pair is far too lax at N sources
(p = 1e-3 at N = 1000 gives FMR_face ~ 63%). For a target FMR_face the pair
threshold must satisfy

    p(t) <= p* = 1 - (1 - target)^(1/N)    (~ target / N),

and tau is the smallest such t. p(t) is estimated from the different-person
scores (n pairs) in two ways, and the result says which one it used:

1. **Empirical, with a 95% confidence bound.** tau_emp is the smallest sample
   threshold at which the one-sided 95% Clopper–Pearson upper bound of the
   exceedance count is <= p*. It exists only when n >= ln(0.05)/ln(1 - p*)
   (~ 3/p*: with zero exceedances in n pairs one can only claim p < 3/n).
2. **Parametric normal tail** when the data are too thin for (1): a normal
   distribution is fitted to the different-person scores (mean, sd) and
   tau_par = mean + sd · Φ⁻¹(1 - p*). This is an extrapolation far beyond the
   data (p* = 1e-6 needs z ~ 4.75). Real impostor tails are usually heavier
   than normal, so tau_par is optimistic (too low for the target); it is never
   allowed below tau_pt, the smallest threshold whose empirical exceedance
   share is already <= p* (so it cannot contradict the observed scores).

What the sample supports is reported beside tau: n, the pairs that (1) would
need, the empirical FMR at tau, and FNMR at tau — the share of same-person
pairs that would score below tau. FNMR is the other side of the trade: a
higher tau rejects fewer new faces by accident but lets more look-alikes of a
source through, so a guard should also respect the same-person minimum.
Pairs share photos and people, so they are not independent: the effective
sample is smaller than n, and every bound here is optimistic by that much.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Literal, Sequence

import numpy as np

from .encoders.base import Encoder
from .faces.detect import detect_faces
from .faces.loading import ImageRejected, decode_image
from .types import FaceObservation

logger = logging.getLogger(__name__)

#: Percentiles reported for each score distribution.
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
#: Confidence level of the empirical bound.
CONFIDENCE = 0.95
#: Default targets: (false-match rate per released face, gallery size N).
DEFAULT_TARGETS: tuple[tuple[float, int], ...] = ((1e-3, 10), (1e-3, 1000))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

TauMethod = Literal["empirical-bound", "parametric-normal", "empirical-point"]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ScoreSummary:
    """Figures of one score distribution (cosines)."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    #: percentile -> score, for ``PERCENTILES``
    percentiles: tuple[tuple[int, float], ...]

    def percentile(self, q: int) -> float:
        return dict(self.percentiles)[q]


@dataclass(frozen=True)
class TauForTarget:
    """tau for a target false-match rate per released face at gallery size N."""

    target_fmr: float          # per released face, over N sources
    gallery_size: int          # N
    per_pair_fmr: float        # p* = 1 - (1 - target)^(1/N)
    tau: float
    method: TauMethod
    supported_by_data: bool    # True only for the empirical bound
    tau_empirical: float | None  # empirical-bound tau, when the sample allows one
    tau_parametric: float      # normal-tail tau
    tau_point: float           # smallest t with empirical exceedance share <= p*
    n_diff: int                # different-person pairs available
    n_diff_needed: int         # pairs needed for the empirical bound
    empirical_fmr_at_tau: float
    fnmr_at_tau: float         # same-person pairs scoring below tau
    note: str


@dataclass(frozen=True)
class EncoderCalibration:
    """Score distributions and thresholds of one encoder on one labelled set."""

    encoder: str
    encoder_version: str
    n_faces: int
    n_people: int
    same: ScoreSummary
    diff: ScoreSummary
    best_threshold: float
    best_fmr: float
    best_fnmr: float
    taus: tuple[TauForTarget, ...]


@dataclass(frozen=True)
class CalibrationResult:
    """Calibration of several encoders on one labelled folder."""

    folder: str
    n_people: int
    n_faces: int
    encoders: tuple[EncoderCalibration, ...]
    #: (path, reason) of photos that gave no usable face
    skipped_photos: tuple[tuple[str, str], ...] = ()
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


# --------------------------------------------------------------------------- scores


def pair_scores(embeddings: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of all unordered pairs: ``(same-person [S], different-person [D])``.

    ``embeddings`` are unit rows ``[N, dim]``; ``labels`` name each row's person.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(labels):
        raise ValueError(f"embeddings must be [N, dim] with N = {len(labels)} labels, got {emb.shape}")
    if not np.all(np.isfinite(emb)):
        raise ValueError("embeddings contain NaN or inf")
    norms = np.linalg.norm(emb, axis=1)
    if np.any(np.abs(norms - 1.0) > 1e-3):
        raise ValueError("embeddings must be L2-normalised rows (cosine = dot product)")
    sims = emb @ emb.T
    lab = np.asarray(labels, dtype=object)
    iu, ju = np.triu_indices(len(lab), k=1)
    same = lab[iu] == lab[ju]
    scores = sims[iu, ju]
    return scores[same], scores[~same]


def summarise(scores: np.ndarray) -> ScoreSummary:
    """Count, mean, sd, min, max and ``PERCENTILES`` of ``scores`` ``[K]`` (K >= 1)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"need a non-empty 1-D score array, got shape {s.shape}")
    pct = np.percentile(s, PERCENTILES)
    return ScoreSummary(int(s.size), float(s.mean()), float(s.std(ddof=1)) if s.size > 1 else 0.0,
                        float(s.min()), float(s.max()),
                        tuple((q, float(v)) for q, v in zip(PERCENTILES, pct)))


def fmr_at(diff: np.ndarray, t: float) -> float:
    """Share of different-person scores >= t."""
    return float(np.mean(np.asarray(diff) >= t)) if len(diff) else math.nan


def fnmr_at(same: np.ndarray, t: float) -> float:
    """Share of same-person scores < t."""
    return float(np.mean(np.asarray(same) < t)) if len(same) else math.nan


def best_threshold(same: np.ndarray, diff: np.ndarray) -> tuple[float, float, float]:
    """The threshold minimising FMR + FNMR: ``(t, FMR(t), FNMR(t))``.

    Candidates are midpoints between consecutive distinct scores; among equally
    good ones the middle one is taken (the centre of the gap when the two
    distributions are separated).
    """
    same = np.sort(np.asarray(same, dtype=np.float64))
    diff = np.sort(np.asarray(diff, dtype=np.float64))
    if not same.size or not diff.size:
        raise ValueError("best_threshold needs both same-person and different-person scores")
    values = np.unique(np.concatenate([same, diff]))
    if values.size == 1:
        return float(values[0]), fmr_at(diff, values[0]), fnmr_at(same, values[0])
    cand = (values[:-1] + values[1:]) / 2
    fmr = (diff.size - np.searchsorted(diff, cand, side="left")) / diff.size
    fnmr = np.searchsorted(same, cand, side="left") / same.size
    err = fmr + fnmr
    best = np.flatnonzero(err <= err.min() + 1e-12)
    i = int(best[len(best) // 2])
    return float(cand[i]), float(fmr[i]), float(fnmr[i])


# --------------------------------------------------------------------------- 1:N tau


def per_pair_target(target_fmr: float, gallery_size: int) -> float:
    """p* = 1 - (1 - target)^(1/N): the per-pair FMR giving ``target_fmr`` per face over N."""
    if not 0.0 < target_fmr < 1.0:
        raise ValueError(f"target false-match rate must be in (0, 1), got {target_fmr}")
    if gallery_size < 1:
        raise ValueError(f"gallery size must be >= 1, got {gallery_size}")
    return float(-math.expm1(math.log1p(-target_fmr) / gallery_size))


def per_face_fmr(per_pair_fmr: float, gallery_size: int) -> float:
    """1 - (1 - p)^N: chance that some of N independent sources falsely matches a face."""
    return float(-math.expm1(gallery_size * math.log1p(-per_pair_fmr)))


def pairs_needed(p: float, confidence: float = CONFIDENCE) -> int:
    """Impostor pairs needed before zero exceedances bound the rate below ``p``."""
    return int(math.ceil(math.log(1 - confidence) / math.log1p(-p)))


def _upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper–Pearson upper bound of a rate with k events in n trials."""
    from scipy.stats import beta

    return 1.0 if k >= n else float(beta.ppf(confidence, k + 1, n - k))


def tau_for_target(same: np.ndarray, diff: np.ndarray, target_fmr: float,
                   gallery_size: int) -> TauForTarget:
    """tau for ``target_fmr`` per released face over ``gallery_size`` sources (see module doc)."""
    from scipy.stats import norm

    diff = np.sort(np.asarray(diff, dtype=np.float64))[::-1]  # descending
    same = np.asarray(same, dtype=np.float64)
    n = int(diff.size)
    if n < 2:
        raise ValueError(f"need at least 2 different-person scores to choose tau, got {n}")
    p = per_pair_target(target_fmr, gallery_size)

    def just_above(k: int) -> float:  # the threshold admitting exactly the k largest scores
        return float(np.nextafter(diff[k], np.inf)) if k < n else float(diff[-1])

    t_point = just_above(int(math.floor(p * n + 1e-9)))
    mu, sd = float(diff.mean()), float(diff.std(ddof=1))
    t_par = mu + sd * float(norm.isf(p))
    t_emp = None
    if _upper_bound(0, n) <= p:
        k = 0
        while k + 1 < n and _upper_bound(k + 1, n) <= p:
            k += 1
        t_emp = just_above(k)
    needed = pairs_needed(p)
    if t_emp is not None:
        tau, method = t_emp, "empirical-bound"
        note = (f"{n} different-person pairs bound the per-pair FMR below {p:.2g} "
                f"at {CONFIDENCE:.0%} confidence")
    elif t_par >= t_point:
        tau, method = t_par, "parametric-normal"
        note = (f"extrapolated: {n} pairs cannot show a per-pair FMR of {p:.2g} (that needs "
                f">= {needed}); normal tail fit mean {mu:.3f} sd {sd:.3f}, z = {norm.isf(p):.2f}; "
                "heavier real tails make this tau too low")
    else:
        tau, method = t_point, "empirical-point"
        note = (f"the normal fit ({t_par:.3f}) sits below observed different-person scores; tau "
                f"is set just above them; {n} pairs cannot confirm a per-pair FMR of {p:.2g} "
                f"(needs >= {needed})")
    return TauForTarget(
        target_fmr=float(target_fmr), gallery_size=int(gallery_size), per_pair_fmr=p, tau=float(tau),
        method=method, supported_by_data=t_emp is not None, tau_empirical=t_emp,
        tau_parametric=float(t_par), tau_point=t_point, n_diff=n, n_diff_needed=needed,
        empirical_fmr_at_tau=fmr_at(diff, tau), fnmr_at_tau=fnmr_at(same, tau), note=note)


def calibrate_embeddings(encoder: str, encoder_version: str, embeddings: np.ndarray,
                         labels: Sequence[str],
                         targets: Iterable[tuple[float, int]] = DEFAULT_TARGETS) -> EncoderCalibration:
    """Distributions, best threshold and 1:N taus for one encoder's labelled embeddings ``[N, dim]``."""
    same, diff = pair_scores(embeddings, labels)
    if not same.size or not diff.size:
        raise ValueError("calibration needs at least one person with two faces and two people "
                         f"(got {same.size} same-person and {diff.size} different-person pairs)")
    t, fmr, fnmr = best_threshold(same, diff)
    return EncoderCalibration(
        encoder=encoder, encoder_version=encoder_version, n_faces=len(labels),
        n_people=len(set(labels)), same=summarise(same), diff=summarise(diff),
        best_threshold=t, best_fmr=fmr, best_fnmr=fnmr,
        taus=tuple(tau_for_target(same, diff, fmr_target, n) for fmr_target, n in targets))


# --------------------------------------------------------------------------- folders


def labelled_photos(folder: Path) -> list[tuple[str, Path]]:
    """``(person, photo)`` pairs of a labelled folder: one subfolder per person.

    Subfolders and files whose names start with ``_`` or ``.`` are skipped.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"labelled folder {folder} does not exist (expected one "
                                "subfolder of photos per person)")
    photos = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        if person.name.startswith(("_", ".")):
            continue
        for path in sorted(person.iterdir()):
            if path.is_file() and not path.name.startswith(("_", ".")) \
                    and path.suffix.lower() in IMAGE_SUFFIXES:
                photos.append((person.name, path))
    return photos


def load_labelled_faces(folder: Path) -> tuple[list[FaceObservation], list[str], list[tuple[str, str]]]:
    """The best-scoring face of each photo: ``(faces, labels, skipped (path, reason))``."""
    faces, labels, skipped = [], [], []
    for person, path in labelled_photos(folder):
        try:
            found = detect_faces(decode_image(path).pixels)
        except ImageRejected as exc:
            skipped.append((str(path), exc.reason))
            continue
        if not found:
            skipped.append((str(path), "no face found"))
            continue
        if len(found) > 1:
            logger.info("calibration: %s has %d faces; using the best-scoring one", path, len(found))
        faces.append(found[0])
        labels.append(person)
    for path, reason in skipped:
        logger.warning("calibration: skipped %s: %s", path, reason)
    return faces, labels, skipped


def calibrate_folder(folder: Path, encoders: Sequence[Encoder],
                     targets: Iterable[tuple[float, int]] = DEFAULT_TARGETS) -> CalibrationResult:
    """Calibrate every encoder on a labelled folder (one subfolder per person)."""
    targets = tuple(targets)
    faces, labels, skipped = load_labelled_faces(Path(folder))
    if len(set(labels)) < 2:
        raise ValueError(f"{folder}: calibration needs faces of at least two people, "
                         f"found {len(set(labels))}")
    results = []
    for enc in encoders:
        emb = enc.embed(faces)
        if emb.shape != (len(faces), enc.dim):
            raise RuntimeError(f"encoder {enc.name} returned {emb.shape}, expected {(len(faces), enc.dim)}")
        results.append(calibrate_embeddings(enc.name, enc.version, emb, labels, targets))
        logger.info("calibration: %s best threshold %.3f on %d faces", enc.name,
                    results[-1].best_threshold, len(faces))
    return CalibrationResult(str(folder), len(set(labels)), len(faces), tuple(results), tuple(skipped))


# --------------------------------------------------------------------------- DuckDB


def _schema_sql() -> str:
    return Path(__file__).with_name("calibration.sql").read_text(encoding="utf-8")


def write_calibration(conn, result: CalibrationResult, run_id: str) -> None:
    """Write ``result`` into tables ``calibration`` and ``calibration_tau`` (created if absent).

    ``conn`` is a ``duckdb.DuckDBPyConnection``. Rows of an earlier write with
    the same ``run_id`` are replaced, in one transaction.
    """
    conn.execute(_schema_sql())
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute("DELETE FROM calibration_tau WHERE run_id = ?", [run_id])
        conn.execute("DELETE FROM calibration WHERE run_id = ?", [run_id])
        for cal in result.encoders:
            s, d = cal.same, cal.diff
            _insert(conn, "calibration", {
                "run_id": run_id, "created_at": result.created_at, "folder": result.folder,
                "encoder": cal.encoder, "encoder_version": cal.encoder_version,
                "n_people": cal.n_people, "n_faces": cal.n_faces,
                "same_count": s.count, "same_min": s.min, "same_p1": s.percentile(1),
                "same_p5": s.percentile(5), "same_p50": s.percentile(50),
                "same_p95": s.percentile(95), "same_max": s.max, "same_mean": s.mean,
                "same_std": s.std,
                "diff_count": d.count, "diff_min": d.min, "diff_p5": d.percentile(5),
                "diff_p50": d.percentile(50), "diff_p95": d.percentile(95),
                "diff_p99": d.percentile(99), "diff_max": d.max, "diff_mean": d.mean,
                "diff_std": d.std,
                "best_threshold": cal.best_threshold, "best_fmr": cal.best_fmr,
                "best_fnmr": cal.best_fnmr, "skipped_photos": len(result.skipped_photos)})
            for t in cal.taus:
                _insert(conn, "calibration_tau", {
                    "run_id": run_id, "encoder": cal.encoder, "encoder_version": cal.encoder_version,
                    "target_fmr": t.target_fmr, "gallery_size": t.gallery_size,
                    "per_pair_fmr": t.per_pair_fmr, "tau": t.tau, "method": t.method,
                    "supported_by_data": t.supported_by_data, "tau_empirical": t.tau_empirical,
                    "tau_parametric": t.tau_parametric, "n_diff": t.n_diff,
                    "n_diff_needed": t.n_diff_needed, "empirical_fmr_at_tau": t.empirical_fmr_at_tau,
                    "fnmr_at_tau": t.fnmr_at_tau, "note": t.note})
        conn.execute("COMMIT")
    except Exception:
        conn.execute("ROLLBACK")
        raise


def _insert(conn, table: str, row: dict[str, object]) -> None:
    columns = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    conn.execute(f"INSERT INTO {table} ({columns}) VALUES ({marks})", list(row.values()))


# --------------------------------------------------------------------------- report


def render_report(result: CalibrationResult, skipped_encoders: Sequence[str] = ()) -> str:
    """A Markdown report of ``result`` (figures, thresholds and what the sample supports)."""
    lines = [f"# Encoder calibration on `{result.folder}`", "",
             f"{result.n_faces} faces of {result.n_people} people ({result.created_at}).", ""]
    for name in skipped_encoders:
        lines.append(f"- skipped encoder: {name}")
    if result.skipped_photos:
        lines.append(f"- {len(result.skipped_photos)} photos without a usable face: "
                     + ", ".join(f"`{Path(p).name}` ({r})" for p, r in result.skipped_photos))
    for cal in result.encoders:
        lines += ["", f"## {cal.encoder} (`{cal.encoder_version}`)", "",
                  "| pairs | n | min | p1 | p5 | p50 | p95 | p99 | max | mean | sd |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for label, s in (("same person", cal.same), ("different people", cal.diff)):
            pct = " | ".join(f"{s.percentile(q):.3f}" for q in (1, 5, 50, 95, 99))
            lines.append(f"| {label} | {s.count} | {s.min:.3f} | {pct} | {s.max:.3f} | "
                         f"{s.mean:.3f} | {s.std:.3f} |")
        lines += ["", f"Best single threshold: **{cal.best_threshold:.3f}** "
                      f"(FMR {cal.best_fmr:.3f}, FNMR {cal.best_fnmr:.3f} on this sample).", "",
                  "| target FMR per face | N | per-pair FMR | tau | method | supported | "
                  "FNMR at tau | note |", "|---|---|---|---|---|---|---|---|"]
        for t in cal.taus:
            lines.append(f"| {t.target_fmr:.0e} | {t.gallery_size} | {t.per_pair_fmr:.2e} | "
                         f"**{t.tau:.3f}** | {t.method} | {'yes' if t.supported_by_data else 'no'} | "
                         f"{t.fnmr_at_tau:.3f} | {t.note} |")
    lines += ["", "tau is the smallest pair threshold whose per-pair false-match rate p satisfies "
              "1 - (1 - p)^N <= target (see `personc_assets.core.calibration`).",
              "",
              "Which error each rate is: a false match is a face of nobody among the sources that scores tau "
              "or more against one of them, so the guard rejects it (a cost in released faces, not a leak). "
              "The safety-relevant error is FNMR at tau: a likeness of a source person scoring below tau "
              "passes. `personc demo --target-fmr` therefore never uses a tau above the same-person minimum "
              "nor above the encoder's default; only `--tau ENCODER=VALUE` can set a laxer one.", ""]
    return "\n".join(lines)

"""Red team: disguised copies of source faces that the guard must all reject.

Each ``Target`` is one source face (the base image — in the pipeline its
canonical aligned crop — with its 68 landmarks), optionally a second photo of
the same person that is *not* in the guard's index, and optionally a
different source person to morph with. ``VARIANTS`` names every disguise:

==================  ============================================================
original            the base image itself (control)
second_photo        another photo of the same person (not in the index)
mirrored            left-right flip
crop_-15 / +15      square crop around the face, 15% smaller / larger than the
                    base image (edges replicated where it reaches outside)
rot_-10 / +10       rotation by -10 / +10 degrees about the image centre
jpeg_q20            JPEG re-encoding at quality 20
resize_64           the image shrunk to 64 px on its longest side, as published
resize_64_up        shrunk to 64 px, then enlarged back to the original size
brightness_+30      brightness x1.3          (Pillow ImageEnhance)
contrast_-30        contrast x0.7            (Pillow ImageEnhance)
colour_shift        saturation x1.5 and a warm cast (red x1.12, blue x0.85)
blur                Gaussian blur, sigma 2% of the face size
sunglasses          both eyes covered by dark lenses placed from the landmarks
morph_70_30         70% this face + 30% another person, cross-dissolved after
                    aligning both to the canonical frame by their landmarks
==================  ============================================================

``run_redteam`` judges every variant with a ``Guard`` and tallies, per variant
and encoder, how many were rejected and why: *similarity* (max similarity
reached tau) or *fail-closed* (no face, several faces, errors — the guard
rejects what it cannot verify). The ensemble row is the guard's own verdict.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from .faces.align import align_face
from .guard import PASS, Guard, Verdict
from .types import check_image, check_landmarks
from .values import checked

if TYPE_CHECKING:
    from .encoders.base import Encoder
    from .ensemble import TauChoice
    from .lineage.store import LineageStore
    from .types import SourceFace

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
ASSET = "redteam_report"


@dataclass(frozen=True)
class FaceImage:
    """An image ``[H, W, 3]`` with the 68 landmarks ``[68, 2]`` of its face."""

    image: np.ndarray
    landmarks: np.ndarray

    def __post_init__(self) -> None:
        check_image(self.image, "red-team image")
        check_landmarks(self.landmarks, "red-team landmarks")


@dataclass(frozen=True)
class Target:
    """A source face to disguise: ``source_id`` must be in the guard's index."""

    source_id: str
    label: str
    base: FaceImage
    second_photo: np.ndarray | None = field(default=None, repr=False)  # [H, W, 3], not in the index
    morph_partner: FaceImage | None = field(default=None, repr=False)  # another person


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image)


def _face_size(lm: np.ndarray) -> float:
    span = lm.max(axis=0) - lm.min(axis=0)
    return float(max(span))


def _square_crop(t: Target, scale: float) -> np.ndarray:
    import cv2

    img, lm = t.base.image, t.base.landmarks
    side = int(round(scale * max(img.shape[:2])))
    cx, cy = (lm.min(axis=0) + lm.max(axis=0)) / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    pad = max(0, -x0, -y0, x0 + side - img.shape[1], y0 + side - img.shape[0])
    padded = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else img
    return np.ascontiguousarray(padded[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side])


def _rotate(t: Target, degrees: float) -> np.ndarray:
    import cv2

    img = t.base.image
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)


def _jpeg(t: Target, quality: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    _pil(t.base.image).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _resize(t: Target, longest: int, back_up: bool) -> np.ndarray:
    from PIL import Image

    img = _pil(t.base.image)
    w, h = img.size
    k = longest / max(w, h)
    small = img.resize((max(1, round(w * k)), max(1, round(h * k))), Image.Resampling.LANCZOS)
    return np.asarray(small.resize((w, h), Image.Resampling.BICUBIC) if back_up else small)


def _enhance(t: Target, what: str, factor: float) -> np.ndarray:
    from PIL import ImageEnhance

    return np.asarray(getattr(ImageEnhance, what)(_pil(t.base.image)).enhance(factor))


def _colour_shift(t: Target) -> np.ndarray:
    from PIL import ImageEnhance

    sat = np.asarray(ImageEnhance.Color(_pil(t.base.image)).enhance(1.5), dtype=np.float32)
    return np.clip(sat * np.array([1.12, 1.0, 0.85], np.float32), 0, 255).round().astype(np.uint8)


def _blur(t: Target) -> np.ndarray:
    import cv2

    sigma = max(0.5, 0.02 * _face_size(t.base.landmarks))
    return cv2.GaussianBlur(t.base.image, (0, 0), sigmaX=sigma)


def _sunglasses(t: Target) -> np.ndarray:
    import cv2

    img, lm = t.base.image.copy(), t.base.landmarks
    right, left = lm[36:42], lm[42:48]
    eye_dist = float(np.linalg.norm(left.mean(axis=0) - right.mean(axis=0)))
    angle = math.degrees(math.atan2(*(left.mean(axis=0) - right.mean(axis=0))[::-1]))
    axes = (int(round(0.42 * eye_dist)), int(round(0.32 * eye_dist)))  # lens half-width, half-height
    dark = (18, 18, 22)
    for eye in (right, left):
        centre = tuple(int(round(v)) for v in eye.mean(axis=0))
        cv2.ellipse(img, centre, axes, angle, 0, 360, dark, thickness=-1, lineType=cv2.LINE_AA)
    bridge = [tuple(int(round(v)) for v in p) for p in (right[3], left[0])]
    cv2.line(img, bridge[0], bridge[1], dark, thickness=max(2, int(0.06 * eye_dist)), lineType=cv2.LINE_AA)
    return img


def _morph(t: Target, weight: float) -> np.ndarray | None:
    if t.morph_partner is None:
        return None
    size = 256
    a, _, _ = align_face(t.base.image, t.base.landmarks, size)
    b, _, _ = align_face(t.morph_partner.image, t.morph_partner.landmarks, size)
    mix = weight * a.astype(np.float32) + (1.0 - weight) * b.astype(np.float32)
    return np.clip(mix, 0, 255).round().astype(np.uint8)


#: name -> function(target) -> disguised image, or None when the target lacks what it needs.
VARIANTS: Mapping[str, Callable[[Target], np.ndarray | None]] = {
    "original": lambda t: t.base.image,
    "second_photo": lambda t: t.second_photo,
    "mirrored": lambda t: np.ascontiguousarray(t.base.image[:, ::-1]),
    "crop_-15": lambda t: _square_crop(t, 0.85),
    "crop_+15": lambda t: _square_crop(t, 1.15),
    "rot_-10": lambda t: _rotate(t, -10.0),
    "rot_+10": lambda t: _rotate(t, 10.0),
    "jpeg_q20": lambda t: _jpeg(t, 20),
    "resize_64": lambda t: _resize(t, 64, back_up=False),
    "resize_64_up": lambda t: _resize(t, 64, back_up=True),
    "brightness_+30": lambda t: _enhance(t, "Brightness", 1.3),
    "contrast_-30": lambda t: _enhance(t, "Contrast", 0.7),
    "colour_shift": _colour_shift,
    "blur": _blur,
    "sunglasses": _sunglasses,
    "morph_70_30": lambda t: _morph(t, 0.7),
}


def make_variants(target: Target, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """The disguised images ``{variant: [H, W, 3]}`` of ``target`` (variants it cannot make are left out)."""
    names = list(VARIANTS) if names is None else list(names)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown red-team variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    out = {}
    for name in names:
        image = VARIANTS[name](target)
        if image is not None:
            out[name] = check_image(np.ascontiguousarray(image), f"variant {name}")
    return out


@dataclass(frozen=True)
class Trial:
    """One disguised image judged by the guard."""

    variant: str
    source_id: str
    label: str
    verdict: Verdict

    def rejected_by(self, encoder: str) -> tuple[bool, str]:
        """(rejected?, why) for one encoder or ``ENSEMBLE``: why is similarity, fail-closed or pass."""
        if encoder == ENSEMBLE:
            if self.verdict.verdict == PASS:
                return False, "pass"
            similar = any(ev.gating and _reached(ev) for ev in self.verdict.per_encoder)
            return True, "similarity" if similar else f"fail-closed: {_short(self.verdict.reason)}"
        ev = next(e for e in self.verdict.per_encoder if e.encoder == encoder)
        if ev.verdict == PASS:
            return False, "pass"
        return True, "similarity" if _reached(ev) else f"fail-closed: {_short(ev.reason)}"

    def similarity(self, encoder: str) -> float | None:
        ev = next(e for e in self.verdict.per_encoder if e.encoder == encoder)
        return float(ev.max_similarity) if math.isfinite(ev.max_similarity) else None


def _reached(ev) -> bool:
    return math.isfinite(ev.max_similarity) and ev.max_similarity >= ev.tau


def _short(reason: str) -> str:
    if "no face" in reason:
        return "no face found"
    if "faces found" in reason:
        return "several faces"
    return reason.split(":")[0][:40]


@dataclass(frozen=True)
class VariantRow:
    """Rejection tally of one variant for one encoder (or the ensemble)."""

    variant: str
    encoder: str
    gating: bool
    trials: int
    rejected: int
    by_similarity: int
    fail_closed: Mapping[str, int]   # reason -> count
    min_similarity: float | None     # lowest measured max similarity (the weakest catch)
    tau: float | None

    @property
    def rate(self) -> float:
        return self.rejected / self.trials if self.trials else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "encoder": self.encoder, "gating": self.gating, "trials": self.trials,
                "rejected": self.rejected, "rate": self.rate, "by_similarity": self.by_similarity,
                "fail_closed": dict(self.fail_closed), "min_similarity": self.min_similarity, "tau": self.tau}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VariantRow":
        d = checked(d, "VariantRow", ASSET, ("variant", "encoder", "gating", "trials", "rejected", "by_similarity",
                                             "fail_closed", "min_similarity", "tau"), ("rate",))
        return cls(d["variant"], d["encoder"], bool(d["gating"]), int(d["trials"]), int(d["rejected"]),
                   int(d["by_similarity"]), dict(d["fail_closed"]), d["min_similarity"], d["tau"])


@dataclass(frozen=True)
class MissedTrial:
    """A disguise the ensemble let pass."""

    variant: str
    label: str
    source_id: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "label": self.label, "source_id": self.source_id, "reason": self.reason}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "MissedTrial":
        d = checked(d, "MissedTrial", ASSET, ("variant", "label", "source_id", "reason"))
        return cls(d["variant"], d["label"], d["source_id"], d["reason"])


@dataclass(frozen=True)
class RedTeamSummary:
    """The ``redteam_report`` value: rejection tallies per variant and encoder, and what passed."""

    encoders: tuple[str, ...]
    rows: tuple[VariantRow, ...]
    missed: tuple[MissedTrial, ...]

    #: Written for readers of the stored JSON; recomputed from the rows when read back.
    DERIVED = ("all_rejected",)

    @property
    def all_rejected(self) -> bool:
        """Whether the ensemble rejected every disguise."""
        return all(r.rejected == r.trials for r in self.rows if r.encoder == ENSEMBLE)

    def as_dict(self) -> dict[str, Any]:
        return {"encoders": list(self.encoders), "all_rejected": self.all_rejected,
                "rows": [r.as_dict() for r in self.rows], "missed": [m.as_dict() for m in self.missed]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RedTeamSummary":
        d = checked(d, "RedTeamSummary", ASSET, ("encoders", "rows", "missed"), cls.DERIVED)
        return cls(tuple(d["encoders"]), tuple(VariantRow.from_dict(r) for r in d["rows"]),
                   tuple(MissedTrial.from_dict(m) for m in d["missed"]))


@dataclass(frozen=True)
class RedTeamReport:
    trials: tuple[Trial, ...]
    rows: tuple[VariantRow, ...]
    encoders: tuple[str, ...]

    @property
    def ensemble_rows(self) -> list[VariantRow]:
        return [r for r in self.rows if r.encoder == ENSEMBLE]

    @property
    def all_rejected(self) -> bool:
        return all(r.rejected == r.trials for r in self.ensemble_rows)

    def missed(self) -> list[Trial]:
        """Trials the ensemble let pass."""
        return [t for t in self.trials if t.verdict.verdict == PASS]

    def summary(self) -> RedTeamSummary:
        """The tallies and the missed disguises, without the verdicts' details."""
        return RedTeamSummary(self.encoders, self.rows, tuple(MissedTrial(t.variant, t.label, t.source_id,
                                                                          t.verdict.reason) for t in self.missed()))


def run_redteam(guard: Guard, targets: Sequence[Target], variants: Sequence[str] | None = None) -> RedTeamReport:
    """Judge every variant of every target with ``guard``; tally per variant and encoder."""
    trials: list[Trial] = []
    for target in targets:
        images = make_variants(target, variants)
        verdicts = guard.check([(f"{target.label}:{name}", img) for name, img in images.items()])
        trials += [Trial(name, target.source_id, target.label, v) for name, v in zip(images, verdicts)]
    encoders = tuple(m.encoder.name for m in guard.members)
    gating = {m.encoder.name: m.gating for m in guard.members}
    taus = {m.encoder.name: m.tau for m in guard.members}
    rows = []
    order = list(VARIANTS) if variants is None else list(variants)
    for variant in order:
        mine = [t for t in trials if t.variant == variant]
        if not mine:
            continue
        for enc in (ENSEMBLE, *encoders):
            results = [t.rejected_by(enc) for t in mine]
            # encoders' scales differ: similarities are listed per encoder only
            sims = [] if enc == ENSEMBLE else [s for s in (t.similarity(enc) for t in mine) if s is not None]
            rows.append(VariantRow(
                variant, enc, gating.get(enc, True), len(mine), sum(r for r, _ in results),
                sum(why == "similarity" for _, why in results),
                dict(Counter(why[len("fail-closed: "):] for _, why in results if why.startswith("fail-closed"))),
                min(sims) if sims else None, taus.get(enc)))
    report = RedTeamReport(tuple(trials), tuple(rows), encoders)
    for t in report.missed():
        log.warning("red team: %s of %s PASSED the guard: %s", t.variant, t.label, t.verdict.reason)
    return report


def render_markdown(report: RedTeamReport) -> str:
    """Per-variant table: the ensemble's rejection rate and why, then each encoder's rate."""
    encs = report.encoders
    head = ["variant", "n", "ensemble rejected", "by similarity", "fail-closed (reason)"] + [
        f"{e} rejected (min sim / tau)" for e in encs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by = {(r.variant, r.encoder): r for r in report.rows}
    for variant in dict.fromkeys(r.variant for r in report.rows):
        ens = by[(variant, ENSEMBLE)]
        cells = [variant, str(ens.trials), f"{ens.rejected}/{ens.trials} ({ens.rate:.0%})", str(ens.by_similarity),
                 ", ".join(f"{n} {why}" for why, n in ens.fail_closed.items()) or "0"]
        for e in encs:
            r = by[(variant, e)]
            sim = "-" if r.min_similarity is None else f"{r.min_similarity:.3f}"
            cells.append(f"{r.rate:.0%} ({sim} / {r.tau:.3f}){'' if r.gating else ' witness'}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def redteam_sources(faces: Sequence["SourceFace"], encoders: Sequence["Encoder"], taus: Mapping[str, "TauChoice"],
                    store: "LineageStore", run_id: str, witnesses: Sequence[str] = (),
                    max_targets: int = 8, variants: Sequence[str] | None = None) -> RedTeamReport:
    """The red team over a run's sources (what the ``redteam_report`` asset materializes).

    For every person with two or more photos (same label), one photo is held
    out of the guard's index and used as that person's ``second_photo``; the
    guard is built over the remaining faces with the run's encoders and taus
    (embeddings come from the store's cache) and up to ``max_targets`` of them
    are disguised, each morphed with the next target of another person.
    """
    from .ensemble import guard_over_faces

    by_label: dict[str, list] = {}
    for face in sorted(faces, key=lambda f: (f.label, f.path)):
        by_label.setdefault(face.label, []).append(face)
    held_out = {label: fs[-1] for label, fs in by_label.items() if len(fs) >= 2}
    held_hashes = {f.content_hash for f in held_out.values()}
    indexed = [f for f in faces if f.content_hash not in held_hashes]
    guard, _ = guard_over_faces(encoders, taus, indexed, store, run_id, witnesses)
    # people with a held-out photo first, then one face per other person, then the rest
    firsts = [by_label[label][0] for label in by_label]
    first_hashes = {f.content_hash for f in firsts}
    order = (sorted(firsts, key=lambda f: f.label not in held_out)
             + [f for f in indexed if f.content_hash not in first_hashes])
    chosen = order[:max_targets]
    targets = []
    for i, face in enumerate(chosen):
        partner = next((g for g in chosen[i + 1:] + chosen[:i] if g.label != face.label), None)
        second = held_out.get(face.label)
        targets.append(Target(face.content_hash, face.label, FaceImage(face.aligned, face.landmarks),
                              None if second is None else second.aligned,
                              None if partner is None else FaceImage(partner.aligned, partner.landmarks)))
    log.info("red team: %d targets (%d with a held-out second photo), %d faces indexed",
             len(targets), sum(t.second_photo is not None for t in targets), len(indexed))
    return run_redteam(guard, targets, variants)

"""The guard's gates besides identity: a coherent face, and no reused source photo.

Each gate adapts a core check to ``guard.Gate``: it judges the faces the guard
found and returns one ``GateVerdict`` each. Errors propagate to the guard,
which turns them into REJECTs (fail closed).
"""

from __future__ import annotations

import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .guard import GateVerdict
from .realism import DEFAULT_THRESHOLDS, LIMITS, RealismError, RealismGate, RealismThresholds, measure
from .reuse import ReuseIndex
from .types import FaceObservation, SourceFace

log = logging.getLogger(__name__)

REALISM, REUSE = "realism", "reuse"


class RealismCheck:
    """A coherent face: the realism gate's named criteria (``core.realism``).

    ``score`` is the number of failed criteria; one is enough to reject.
    """

    name = REALISM

    def __init__(self, thresholds: RealismThresholds = DEFAULT_THRESHOLDS) -> None:
        self._gate = RealismGate(thresholds)

    def judge(self, faces: Sequence[FaceObservation]) -> list[GateVerdict]:
        out = []
        for face in faces:
            v = self._gate.judge(face.image)
            reason = "a coherent face" if v.passed else "not a coherent face: " + "; ".join(v.reasons)
            out.append(GateVerdict(self.name, v.passed, float(len(v.reasons)), 1.0, None, reason))
        return out


class ReuseCheck:
    """No region of any source photo (``core.reuse``); ``score`` >= 1 means reused."""

    name = REUSE

    def __init__(self, index: ReuseIndex) -> None:
        self._index = index

    def judge(self, faces: Sequence[FaceObservation]) -> list[GateVerdict]:
        matches = self._index.check_many([f.image for f in faces])
        return [GateVerdict(self.name, not m.reused, float(m.score), 1.0, m.nearest, m.reason) for m in matches]


#: Limits that describe how a photo was taken (focus, light, pose), not whether a face is
#: coherent: only these widen to a run's own sources. Defect limits (doubled features, copied
#: features, glasses rims, colour patches and blobs, seams, feature detail) never widen — a
#: source's warm light patches or glasses are real, their ghosts in a render are defects.
WIDENED_LIMITS = frozenset({"min_sharpness", "max_sharpness", "max_lr_colour", "max_template_error",
                            "max_eye_model_disagreement", "max_lr_shape", "min_eye_contrast",
                            "min_mouth_contrast"})


def thresholds_for_sources(faces: Iterable[SourceFace],
                           base: RealismThresholds = DEFAULT_THRESHOLDS) -> RealismThresholds:
    """``base`` widened just enough that every donor source's own aligned face passes.

    The defaults are calibrated on ../shared/faces; a run's own photos (small
    crops of a group photo, a studio portrait) can lie outside them, and a
    render need not be more typical than the real faces it is made from —
    "inside the sources' range". Only ``WIDENED_LIMITS`` widen, and only to a
    real source's value, never past it.
    """
    scores = []
    for face in faces:
        try:
            scores.append(measure(np.ascontiguousarray(face.aligned)))
        except RealismError as exc:
            log.info("realism calibration: source %s not measurable (%s)", face.content_hash[:10], exc)
    updates = {}
    for f in fields(base):
        kind, score = LIMITS[f.name]
        values = [s[score] for s in scores if score in s]
        if not values or f.name not in WIDENED_LIMITS:
            continue
        current = getattr(base, f.name)
        updates[f.name] = max(current, max(values)) if kind == "max" else min(current, min(values))
    widened = replace(base, **updates).check()
    changed = {k: (getattr(base, k), v) for k, v in updates.items() if v != getattr(base, k)}
    if changed:
        log.info("realism limits widened to the sources' own range: %s",
                 ", ".join(f"{k} {a:.3g}->{b:.3g}" for k, (a, b) in changed.items()))
    return widened


def reuse_photos(faces: Iterable[SourceFace]) -> list[tuple[str, np.ndarray]]:
    """``(content hash, image)`` pairs to index for the reuse check: each source's
    original photo (as decoded for ingest) and its aligned crop."""
    from .faces.loading import decode_image

    out: list[tuple[str, np.ndarray]] = []
    for face in faces:
        out.append((face.content_hash, np.ascontiguousarray(face.aligned)))
        if face.path and Path(face.path).is_file():
            out.append((face.content_hash, decode_image(Path(face.path)).pixels))
        else:
            log.warning("reuse index: original photo of %s is gone (%s); its aligned crop stands in",
                        face.content_hash[:10], face.path)
    return out

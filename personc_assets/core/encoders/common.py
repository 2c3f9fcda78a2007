"""Helpers every encoder family shares: the face crops they read and the hash of their weights.

Adapters (``dlib/``, ``arcface.py``, ``magface.py``) import these and never
each other:

- ``dlib_chip``: dlib's aligned 150 px chip (padding 0.25) from the 68
  landmarks, read by both dlib engines;
- ``arcface_crop``: the five-point similarity crop onto ArcFace's template
  (``template_for``, ``arcface_matrix``), read by ArcFace and MagFace;
- ``weights_sha256``: the hash an encoder's ``version`` is made from.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import atomic
from ..types import FaceObservation, check_image, check_landmarks

# ------------------------------------------------------------------- dlib chip

CHIP_SIZE = 150
CHIP_PADDING = 0.25


def dlib_chip(face: FaceObservation, size: int = CHIP_SIZE,
              padding: float = CHIP_PADDING) -> np.ndarray:
    """dlib's aligned face chip ``[size, size, 3]`` from the 68 landmarks."""
    import dlib

    image = check_image(face.image)
    lm = check_landmarks(face.landmarks)
    rect = dlib.rectangle(*[int(v) for v in face.box])
    shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in lm])
    return np.asarray(dlib.get_face_chip(image, shape, size=size, padding=padding))


# ------------------------------------------------------------- ArcFace crop

#: ArcFace's five-point template for a 112×112 crop, (x, y) in pixels:
#: image-left eye, image-right eye, nose tip, image-left and -right mouth corner.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)


def template_for(size: int) -> np.ndarray:
    """ArcFace template ``[5, 2]`` for a ``size`` px crop (as insightface scales it)."""
    if size % 112 == 0:
        return ARCFACE_TEMPLATE_112 * (size / 112.0)
    if size % 128 == 0:  # insightface's 128-family layout: scaled and shifted right
        ratio = size / 128.0
        return ARCFACE_TEMPLATE_112 * ratio + np.array([8.0 * ratio, 0.0])
    raise ValueError(f"ArcFace crops must be a multiple of 112 or 128 px, got {size}")


def arcface_matrix(points: np.ndarray, size: int = 112) -> np.ndarray:
    """Similarity ``[2, 3]`` mapping five image points ``[5, 2]`` onto the template."""
    from skimage.transform import SimilarityTransform

    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (5, 2) or not np.all(np.isfinite(pts)):
        raise ValueError(f"five alignment points must be finite and shaped [5, 2], got {pts.shape}")
    tform = SimilarityTransform.from_estimate(pts, template_for(size))
    if not tform:
        raise ValueError("ArcFace alignment failed: the five points are degenerate")
    return tform.params[:2].astype(np.float64)


def arcface_crop(image: np.ndarray, points: np.ndarray, size: int = 112) -> np.ndarray:
    """The ``[size, size, 3]`` ArcFace crop of ``image`` ``[H, W, 3]`` (channel order kept).

    Same warp as insightface's ``face_align.norm_crop``: bilinear, black border.
    """
    import cv2

    check_image(image)
    return cv2.warpAffine(image, arcface_matrix(points, size), (size, size), borderValue=0.0)


# ----------------------------------------------------------------- weights

@lru_cache(maxsize=8)
def weights_sha256(path: str) -> str:
    """sha256 of a weights file, cached by path: weights are large and hashed once per process."""
    return atomic.file_sha256(Path(path))

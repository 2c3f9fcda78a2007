"""Similarity alignment of a face to PersonC's canonical frame.

The canonical frame is a square crop of ``ALIGNED_SIZE`` pixels where five
points derived from the 68 landmarks (eye centres, nose tip, mouth corners)
land on a fixed template. The template is ArcFace's five-point layout scaled
to leave room for forehead, hair and chin, so every backbone sees the face at
the same place and scale.
"""

from __future__ import annotations

import numpy as np

from ..types import check_image, check_landmarks

ALIGNED_SIZE = 256

# ArcFace's 112 px five-point template, normalised to [0, 1].
_ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
     [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64) / 112.0

#: Template in unit coordinates of the canonical crop: eyes at 42% height,
#: eye distance 22% of the width, room for the forehead, hair line and chin.
CANONICAL_TEMPLATE = np.column_stack([
    0.15 + 0.7 * _ARCFACE_112[:, 0],
    0.10 + 0.7 * _ARCFACE_112[:, 1],
])


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners ``[5, 2]`` from dlib-68 points."""
    lm = check_landmarks(landmarks)
    return np.stack([
        lm[36:42].mean(axis=0),  # subject's right eye (image left)
        lm[42:48].mean(axis=0),  # subject's left eye
        lm[30],                  # nose tip
        lm[48],                  # mouth corners
        lm[54],
    ]).astype(np.float64)


def estimate_yaw(landmarks: np.ndarray) -> float:
    """Signed head-turn estimate from dlib-68 points ``[68, 2]`` (0 = frontal).

    The nose tip's offset between the two jaw ends, ``(dl - dr) / (dl + dr)``;
    frontal photos stay within about ±0.15, a three-quarter view reaches ±0.6.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be [68, 2], got {lm.shape}")
    dl = float(np.hypot(*(lm[30] - lm[0])))
    dr = float(np.hypot(*(lm[16] - lm[30])))
    return (dl - dr) / max(dl + dr, 1e-9)


def similarity_to_template(points: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``[2, 3]`` mapping ``points`` onto ``template``."""
    from skimage.transform import SimilarityTransform

    tform = SimilarityTransform.from_estimate(points, template)
    if not tform:
        raise ValueError("alignment failed: landmarks are degenerate")
    return tform.params[:2].astype(np.float64)


def align_face(image: np.ndarray, landmarks: np.ndarray,
               size: int = ALIGNED_SIZE) -> tuple[np.ndarray, np.ndarray, float]:
    """Warp ``image`` so the face sits on the canonical template.

    Returns the aligned crop ``[size, size, 3]``, the landmarks in the crop
    ``[68, 2]`` and the face scale in source pixels per crop pixel (small
    values mean the crop was upsampled from a small face).
    """
    import cv2

    check_image(image)
    lm = check_landmarks(landmarks)
    matrix = similarity_to_template(five_points(lm), CANONICAL_TEMPLATE * size)
    zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # crop px per source px
    src, warp = image, matrix
    if zoom < 0.5:  # shrinking by more than 2x: pre-filter to avoid aliasing
        shrink = 2.0 * zoom  # leaves a final 2x reduction for the warp
        src = cv2.resize(image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA)
        warp = matrix @ np.diag([1.0 / shrink, 1.0 / shrink, 1.0])
    aligned = cv2.warpAffine(src, warp, (size, size), flags=cv2.INTER_CUBIC,
                             borderMode=cv2.BORDER_REPLICATE)
    lm_aligned = (lm @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    return aligned, lm_aligned, 1.0 / zoom

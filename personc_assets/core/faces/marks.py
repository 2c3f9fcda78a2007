"""Marks of a face's skin that a face model cannot split between factors: lipstick, a beard,
a black-and-white print (measured on the aligned crop from its dlib-68 landmarks)."""

from __future__ import annotations

import numpy as np


def _region_lab(lab: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Mean Lab ``[3]`` of ``lab [H, W, 3]`` inside ``polygon [K, 2]`` (NaN when empty)."""
    import cv2

    mask = np.zeros(lab.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    inside = lab[mask > 0]
    return inside.mean(axis=0) if len(inside) else np.full(3, np.nan)


def skin_marks(image: np.ndarray, landmarks: np.ndarray) -> tuple[float, float, float]:
    """(lip colour, beard shade, colourfulness) of a face ``[H, W, 3]`` RGB with
    dlib-68 ``landmarks``.

    *Lip colour*: redness (Lab a*, 0..255 scale) of the lips minus that of the
    cheeks — high with lipstick. *Beard shade*: how much darker the upper lip
    and chin are than the cheeks, relative to the cheeks — high with a beard
    or stubble. Mixing donors far apart on either gives the "lipstick on a
    bearded face" look, so the sampler matches donors on them. *Colourfulness*:
    chroma of the cheeks (Lab, 0..255 scale); near 0 for a black-and-white photo,
    whose hard studio light and missing colour make it a poor feature donor.
    """
    import cv2

    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB).astype(np.float32)
    lm = np.asarray(landmarks, dtype=np.float64)
    cheek = np.nanmean([_region_lab(lab, lm[[1, 31, 48, 4]]),
                        _region_lab(lab, lm[[15, 35, 54, 12]])], axis=0)
    lips = _region_lab(lab, lm[48:60])
    below = np.nanmean([_region_lab(lab, lm[[31, 35, 53, 49]]),
                        _region_lab(lab, lm[[57, 7, 8, 9]])], axis=0)
    lip_colour = float(lips[1] - cheek[1])
    beard = float((cheek[0] - below[0]) / max(cheek[0], 1.0))
    chroma = float(np.hypot(cheek[1] - 128.0, cheek[2] - 128.0))
    lip_colour, beard, chroma = (v if np.isfinite(v) else 0.0 for v in (lip_colour, beard, chroma))
    return lip_colour, beard, chroma

"""Seamless compositing: multi-band (Laplacian pyramid) blending and colour moves.

``laplacian_blend`` joins a rendered face to its context image band by band:
coarse bands (colour, shading) cross over a wide zone, fine bands (pores,
hair) over a narrow one, which is what hides seams without halos
(Burt & Adelson's multiresolution spline).
"""

from __future__ import annotations

import numpy as np


def _pyr_down(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.pyrDown(img)


def _pyr_up(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.pyrUp(img, dstsize=(shape[1], shape[0]))


def laplacian_blend(front: np.ndarray, back: np.ndarray, mask: np.ndarray,
                    levels: int = 5) -> np.ndarray:
    """Blend ``front`` over ``back`` (float32 ``[H, W, 3]``) with ``mask [H, W]`` in [0, 1].

    Returns ``float32 [H, W, 3]``; where ``mask`` is 1 (0) far from its edge the
    result equals ``front`` (``back``).
    """
    if front.shape != back.shape or front.shape[:2] != mask.shape:
        raise ValueError(f"front {front.shape}, back {back.shape} and mask {mask.shape} must match")
    f = np.asarray(front, np.float32)
    b = np.asarray(back, np.float32)
    gm = [np.asarray(mask, np.float32)]
    lf, lb = [], []
    for _ in range(levels - 1):
        fd, bd = _pyr_down(f), _pyr_down(b)
        lf.append(f - _pyr_up(fd, f.shape[:2]))
        lb.append(b - _pyr_up(bd, b.shape[:2]))
        f, b = fd, bd
        gm.append(_pyr_down(gm[-1]))
    gm = [g[..., None] for g in gm]
    out = gm[-1] * f + (1.0 - gm[-1]) * b  # coarsest Gaussian level
    for lev in range(levels - 2, -1, -1):
        band = gm[lev] * lf[lev] + (1.0 - gm[lev]) * lb[lev]
        out = _pyr_up(out, band.shape[:2]) + band
    return out


def soft_light_match(face: np.ndarray, context: np.ndarray, mask: np.ndarray,
                     sigma: float, strength: float = 1.0) -> np.ndarray:
    """Shift the low-frequency colour of ``context`` near the face toward ``face``.

    Both are float32 ``[H, W, 3]`` in the same (output) frame; ``mask [H, W]``
    marks where ``face`` is valid. The low-pass colour difference inside the
    mask is spread outward by normalised convolution (``sigma`` px) and added
    to ``context`` with a weight that fades with distance, so neck, ears and
    the hairline take on the new skin tone and no colour step remains at the
    face border. Returns the adjusted context ``float32 [H, W, 3]``.
    """
    import cv2

    m = np.asarray(mask, np.float32)
    diff = (face - context) * m[..., None]
    num = cv2.GaussianBlur(diff, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    spread = num / np.maximum(den, 1e-4)[..., None]
    reach = np.clip(den / max(float(den.max()), 1e-6), 0.0, 1.0) ** 0.5
    return context + strength * reach[..., None] * spread


def detail_layer(image: np.ndarray, sigma: float) -> np.ndarray:
    """High-pass ``float32 [H, W, 3]``: ``image`` minus its Gaussian blur."""
    import cv2

    img = np.asarray(image, np.float32)
    return img - cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float ``[H, W, 3]`` in [0, 1] -> uint8, rounded and clipped."""
    return np.clip(np.round(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)

"""Piecewise-affine image warps over a fixed triangulation.

``triangle_maps`` builds the sampling maps for ``cv2.remap`` in one
vectorised pass: every destination pixel is assigned the triangle that covers
it (rasterised with ``cv2.fillConvexPoly``) and mapped through that
triangle's affine transform. ``triangle_maps_reference`` computes the same
maps pixel by pixel from barycentric coordinates (slow; the parity test
checks the fast path against it).

Point sets include fixed crop-border points, so the triangulation covers the
whole crop and a warp never tears or leaves holes.
"""

from __future__ import annotations

import numpy as np


def triangulate(points: np.ndarray) -> np.ndarray:
    """Delaunay triangles ``[T, 3]`` (int32 vertex indices) of ``points [P, 2]``."""
    from scipy.spatial import Delaunay

    tri = Delaunay(np.asarray(points, dtype=np.float64))
    return tri.simplices.astype(np.int32)


def _affines(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Per-triangle affine ``[T, 2, 3]`` mapping destination to source pixels."""
    d = dst[triangles]  # [T, 3, 2]
    s = src[triangles]
    ones = np.ones(d.shape[:2] + (1,))
    dh = np.concatenate([d, ones], axis=2)  # [T, 3, 3] rows (x, y, 1)
    # solve dh @ A^T = s for each triangle; degenerate triangles get a
    # pseudo-inverse (they cover no pixel anyway)
    det = np.linalg.det(dh)
    good = np.abs(det) > 1e-9
    mats = np.zeros((len(triangles), 2, 3))
    if good.any():
        mats[good] = np.linalg.solve(dh[good], s[good]).transpose(0, 2, 1)
    if (~good).any():
        mats[~good] = (np.linalg.pinv(dh[~good]) @ s[~good]).transpose(0, 2, 1)
    return mats


def triangle_index_map(dst: np.ndarray, triangles: np.ndarray,
                       size: tuple[int, int]) -> np.ndarray:
    """``int32 [H, W]``: which triangle covers each destination pixel (-1: none).

    Triangles are drawn largest first so that, where a strongly deformed
    shape makes triangles overlap, the smaller (detail) triangles win.
    """
    import cv2

    h, w = size
    index = np.full((h, w), -1, dtype=np.int32)
    d = np.asarray(dst, dtype=np.float64)[triangles]
    e1, e2 = d[:, 1] - d[:, 0], d[:, 2] - d[:, 0]
    area = np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
    shift = 4  # sub-pixel vertex precision for the rasteriser
    for t in np.argsort(-area):
        poly = np.round(d[t] * (1 << shift)).astype(np.int32)
        cv2.fillConvexPoly(index, poly, int(t), lineType=cv2.LINE_8, shift=shift)
    return index


def triangle_maps(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray,
                  size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``float32 [H, W]`` maps (x, y) into the source image for ``cv2.remap``.

    ``src``/``dst`` are matching points ``[P, 2]`` in source and destination
    pixels; ``triangles [T, 3]`` index them. Pixels outside every triangle
    map to themselves.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
        raise ValueError(f"src and dst must both be [P, 2], got {src.shape} and {dst.shape}")
    h, w = size
    index = triangle_index_map(dst, triangles, size)
    mats = _affines(src, dst, triangles).astype(np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xs.copy(), ys.copy()
    inside = index >= 0
    m = mats[index[inside]]  # [K, 2, 3]
    x, y = xs[inside], ys[inside]
    map_x[inside] = m[:, 0, 0] * x + m[:, 0, 1] * y + m[:, 0, 2]
    map_y[inside] = m[:, 1, 0] * x + m[:, 1, 1] * y + m[:, 1, 2]
    return map_x, map_y


def triangle_maps_reference(src: np.ndarray, dst: np.ndarray, triangles: np.ndarray,
                            size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Slow reference for ``triangle_maps``: barycentric mapping per pixel.

    A pixel inside a destination triangle (barycentric coordinates all ≥ 0)
    is mapped to the same barycentric combination of the source triangle.
    Pixels on shared edges may pick either neighbour (both agree there).
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    h, w = size
    map_x = np.tile(np.arange(w, dtype=np.float64), (h, 1))
    map_y = np.tile(np.arange(h, dtype=np.float64)[:, None], (1, w))
    for yy in range(h):
        for xx in range(w):
            for tri in triangles:
                a, b, c = dst[tri]
                mat = np.array([[b[0] - a[0], c[0] - a[0]], [b[1] - a[1], c[1] - a[1]]])
                if abs(np.linalg.det(mat)) < 1e-12:
                    continue
                u, v = np.linalg.solve(mat, np.array([xx - a[0], yy - a[1]]))
                if u >= -1e-9 and v >= -1e-9 and u + v <= 1 + 1e-9:
                    sa, sb, sc = src[tri]
                    p = sa + u * (sb - sa) + v * (sc - sa)
                    map_x[yy, xx], map_y[yy, xx] = p
                    break
    return map_x.astype(np.float32), map_y.astype(np.float32)


def warp_image(image: np.ndarray, src: np.ndarray, dst: np.ndarray, triangles: np.ndarray,
               size: tuple[int, int] | None = None, cubic: bool = True) -> np.ndarray:
    """Warp ``image [H, W, C]`` so that ``src`` points land on ``dst`` points.

    Returns an array of the same dtype shaped ``[h, w, C]`` (``size`` defaults
    to the input size). Bicubic sampling keeps detail; out-of-image samples
    replicate the border.
    """
    import cv2

    h, w = size if size is not None else image.shape[:2]
    map_x, map_y = triangle_maps(src, dst, triangles, (h, w))
    flags = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
    out = cv2.remap(image, map_x, map_y, flags, borderMode=cv2.BORDER_REPLICATE)
    if image.dtype != np.uint8 and cubic:  # cubic overshoot
        lo, hi = float(image.min()), float(image.max())
        out = np.clip(out, lo, hi)
    return out

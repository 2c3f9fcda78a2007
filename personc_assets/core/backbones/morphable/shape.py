"""Shape side of the morphable model: dlib-68 points, Procrustes, shape PCA.

A face shape is its 68 dlib landmarks in the aligned crop ``[68, 2]``. Each
shape is split into a *pose* (a 2-D similarity: scale, rotation, shift) and a
*normalised shape* (centred, unit RMS size, rotated onto the mean). The
normalised shapes are modelled by PCA in two orthogonal parts:

* **symmetric** deviations from the mean (left and right halves move as mirror
  images: face width, jaw, eye spacing, mouth size) — the ``geometry`` factor;
* **antisymmetric** deviations (one side differs from the other: a crooked
  smile, a tilted nose, residual head turn) — the ``symmetry`` factor.

Mirroring uses the dlib-68 left/right correspondence ``MIRROR_PERM``; the mean
shape is kept mirror-symmetric about ``x = 0`` so that mirroring is a linear
involution ``M`` and ``d = (d + M d)/2 + (d - M d)/2`` splits any deviation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...types import check_landmarks

N_POINTS = 68


def _mirror_permutation() -> np.ndarray:
    """dlib-68 index of each point's mirror partner (``perm[perm] == id``)."""
    pairs = [(i, 16 - i) for i in range(8)]                      # jaw 0..16, 8 is the chin
    pairs += [(17 + i, 26 - i) for i in range(5)]                # brows
    pairs += [(31, 35), (32, 34)]                                # nostrils, 33 is the tip
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lips
    pairs += [(60, 64), (61, 63), (67, 65)]                      # inner lips
    perm = np.arange(N_POINTS)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


#: ``MIRROR_PERM[i]`` is the landmark that point ``i`` becomes in a mirror image.
MIRROR_PERM: np.ndarray = _mirror_permutation()
#: Upper/lower inner-lip point pairs that must not cross.
_INNER_LIP_PAIRS = ((61, 67), (62, 66), (63, 65))


def mirror(points: np.ndarray) -> np.ndarray:
    """Mirror normalised shapes ``[..., 68, 2]`` about ``x = 0`` (left<->right)."""
    out = points[..., MIRROR_PERM, :].copy()
    out[..., 0] *= -1.0
    return out


def uncross_lips(points: np.ndarray) -> np.ndarray:
    """Return ``[68, 2]`` points whose inner upper lip is not below the lower lip.

    Closed mouths often get crossed inner-lip points from dlib, which flips
    the triangles between them; such pairs are moved to their midpoint.
    """
    pts = np.array(points, dtype=np.float64, copy=True)
    for up, low in _INNER_LIP_PAIRS:
        if pts[up, 1] > pts[low, 1]:
            mid = 0.5 * (pts[up] + pts[low])
            pts[up] = mid
            pts[low] = mid
    return pts


def _mouth_direction() -> np.ndarray:
    """Unit opening of the mouth as a displacement of normalised points ``[68, 2]``.

    Opening by ``m`` moves the inner upper lip up by ``m/4`` and the lower lip
    (inner and outer) down by ``3m/4`` (the jaw drops), the corners a little:
    the inner-lip gap grows by exactly ``m``. Mirror-symmetric.
    """
    d = np.zeros((N_POINTS, 2))
    d[[61, 62, 63], 1] = -0.25
    d[[65, 66, 67, 55, 56, 57, 58, 59], 1] = 0.75
    d[[48, 54, 60, 64], 1] = 0.3
    return d


#: Displacement that opens the mouth by one unit of inner-lip gap (normalised shape units).
MOUTH_DIRECTION: np.ndarray = _mouth_direction()


def _eye_direction() -> np.ndarray:
    """Unit opening of both eyes: upper lids up, lower lids down by half a unit each."""
    d = np.zeros((N_POINTS, 2))
    d[[37, 38, 43, 44], 1] = -0.5
    d[[40, 41, 46, 47], 1] = 0.5
    return d


#: Displacement that opens the eyes by one unit of lid aperture (normalised shape units).
EYE_DIRECTION: np.ndarray = _eye_direction()
_LID_PAIRS = ((37, 41), (38, 40), (43, 47), (44, 46))


def eye_aperture(shape: np.ndarray) -> float:
    """Mean vertical lid aperture of a normalised (upright) shape ``[68, 2]`` (≥ 0)."""
    return float(np.mean([max(0.0, shape[low, 1] - shape[up, 1]) for up, low in _LID_PAIRS]))


def inner_lip_gap(shape: np.ndarray) -> float:
    """Mean vertical inner-lip gap of a normalised (upright) shape ``[68, 2]`` (≥ 0)."""
    return float(np.mean([max(0.0, shape[low, 1] - shape[up, 1]) for up, low in _INNER_LIP_PAIRS]))


# --------------------------------------------------------------------------- pose

def normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre and scale ``[68, 2]`` points to unit RMS; return (shape, pose).

    ``pose`` is ``[a, b, tx, ty]`` with ``points = [[a, -b], [b, a]] @ shape + t``
    (rotation is 0 here; ``align_to`` adds it).
    """
    pts = np.asarray(points, dtype=np.float64)
    centre = pts.mean(axis=0)
    centred = pts - centre
    scale = float(np.sqrt((centred ** 2).sum() / len(pts)))
    if scale <= 1e-9:
        raise ValueError("shape is degenerate: all landmarks coincide")
    return centred / scale, np.array([scale, 0.0, centre[0], centre[1]])


def align_to(points: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Similarity-align ``points [68, 2]`` onto a unit-RMS, centred ``reference``.

    Returns the normalised shape (``[68, 2]``, least-squares rotated onto the
    reference) and its pose ``[a, b, tx, ty]`` so that
    ``apply_pose(shape, pose) == points`` up to rounding.
    """
    shape, (scale, _, tx, ty) = normalise(points)
    # optimal rotation (Procrustes, no reflection) of shape onto reference
    num = float((shape[:, 0] * reference[:, 1] - shape[:, 1] * reference[:, 0]).sum())
    den = float((shape * reference).sum())
    theta = np.arctan2(num, den)
    c, s = np.cos(theta), np.sin(theta)
    rotated = shape @ np.array([[c, s], [-s, c]])  # rotate by +theta
    # points = scale * R(-theta) @ rotated + t
    pose = np.array([scale * c, -scale * s, tx, ty])
    return rotated, pose


def apply_pose(shape: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Map a normalised shape ``[K, 2]`` into crop pixels with ``pose [4]``."""
    a, b, tx, ty = (float(v) for v in pose)
    mat = np.array([[a, -b], [b, a]])
    return np.asarray(shape, dtype=np.float64) @ mat.T + np.array([tx, ty])


def generalised_procrustes(shapes: np.ndarray, weights: np.ndarray,
                           iterations: int = 10) -> np.ndarray:
    """Mirror-symmetric mean ``[68, 2]`` of ``shapes [N, 68, 2]`` (crop pixels).

    Iterates: align every shape to the current mean, take the weighted mean,
    symmetrise it about ``x = 0`` and renormalise.
    """
    mean, _ = normalise(np.average(shapes, axis=0, weights=weights))
    mean = _symmetrise(mean)
    for _ in range(iterations):
        aligned = np.stack([align_to(s, mean)[0] for s in shapes])
        new, _ = normalise(np.average(aligned, axis=0, weights=weights))
        new = _symmetrise(new)
        if np.abs(new - mean).max() < 1e-9:
            mean = new
            break
        mean = new
    return mean


def _symmetrise(shape: np.ndarray) -> np.ndarray:
    sym = 0.5 * (shape + mirror(shape))
    return normalise(sym)[0]


# --------------------------------------------------------------------------- PCA

@dataclass(frozen=True)
class PCA:
    """Weighted PCA: ``x ≈ mean + coeffs @ basis``.

    ``mean [D]``, ``basis [K, D]`` (orthonormal rows), ``sdev [K]`` the
    weighted standard deviation of each mode.
    """

    mean: np.ndarray
    basis: np.ndarray
    sdev: np.ndarray

    @property
    def n_modes(self) -> int:
        return int(self.basis.shape[0])

    def project(self, x: np.ndarray) -> np.ndarray:
        """Coefficients ``[..., K]`` of ``x [..., D]``."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) @ self.basis.T).astype(np.float32)

    def reconstruct(self, coeffs: np.ndarray) -> np.ndarray:
        """``[..., D]`` from ``coeffs [..., K]``."""
        c = np.asarray(coeffs, dtype=np.float64)
        if c.shape[-1] != self.n_modes:
            raise ValueError(f"expected {self.n_modes} coefficients, got {c.shape[-1]}")
        return self.mean + c @ self.basis


def fit_pca(data: np.ndarray, weights: np.ndarray, max_modes: int,
            mean: np.ndarray | None = None, rel_tol: float = 1e-6) -> PCA:
    """Weighted PCA of ``data [N, D]`` keeping at most ``max_modes`` (≤ N-1) modes.

    ``weights [N]`` (summing to 1) let every person count once however many
    photos they have. Modes whose singular value is below ``rel_tol`` of the
    largest are dropped (mirror-symmetric data has no antisymmetric modes).
    """
    x = np.asarray(data, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if x.ndim != 2 or w.shape != (x.shape[0],):
        raise ValueError(f"fit_pca needs data [N, D] and weights [N], got {x.shape} and {w.shape}")
    mu = np.average(x, axis=0, weights=w) if mean is None else np.asarray(mean, np.float64)
    centred = np.sqrt(w)[:, None] * (x - mu)
    if x.shape[0] < 2:
        return PCA(mu, np.zeros((0, x.shape[1])), np.zeros(0))
    # economy SVD through the small Gram matrix when N << D
    gram = centred @ centred.T
    evals, evecs = np.linalg.eigh(gram)
    order = np.argsort(evals)[::-1]
    evals, evecs = np.clip(evals[order], 0.0, None), evecs[:, order]
    sv = np.sqrt(evals)
    keep = sv > rel_tol * max(sv[0], 1e-30)
    keep[min(max_modes, x.shape[0] - 1):] = False
    sv, evecs = sv[keep], evecs[:, keep]
    basis = (evecs.T @ centred) / sv[:, None]
    # re-orthonormalise (numerical hygiene for near-degenerate modes) through
    # the small [K, K] Gram matrix instead of a QR of the [D, K] basis
    chol = np.linalg.cholesky(basis @ basis.T)
    basis = np.linalg.solve(chol, basis)
    return PCA(mu, basis, sv)


@dataclass(frozen=True)
class ShapeModel:
    """Mean shape plus symmetric (geometry) and antisymmetric (symmetry) PCA.

    ``mean [68, 2]`` is normalised (centred, unit RMS, mirror-symmetric);
    ``sym`` and ``asym`` are PCAs of flattened ``[136]`` deviations with zero
    mean.
    """

    mean: np.ndarray
    sym: PCA
    asym: PCA

    def encode(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(symmetric ``[Ks]``, antisymmetric ``[Ka]`` coefficients, pose ``[4]``,
        normalised shape ``[68, 2]``) of crop points ``[68, 2]``."""
        lm = check_landmarks(points)
        shape, pose = align_to(uncross_lips(lm), self.mean)
        dev = shape - self.mean
        sym = 0.5 * (dev + mirror(dev))
        asym = dev - sym
        return (self.sym.project(sym.reshape(-1)), self.asym.project(asym.reshape(-1)),
                pose.astype(np.float32), shape)

    def decode(self, sym: np.ndarray, asym: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """Crop points ``[68, 2]`` from PCA coefficients and a pose."""
        dev = self.sym.reconstruct(sym) + self.asym.reconstruct(asym)
        shape = self.mean + dev.reshape(N_POINTS, 2)
        return uncross_lips(apply_pose(shape, pose))


def fit_shape_model(points: np.ndarray, weights: np.ndarray, max_modes: int) -> ShapeModel:
    """Fit a ``ShapeModel`` to crop landmarks ``[N, 68, 2]`` with person weights ``[N]``."""
    pts = np.stack([uncross_lips(check_landmarks(p)) for p in points])
    mean = generalised_procrustes(pts, weights)
    devs = np.stack([align_to(p, mean)[0] for p in pts]) - mean
    sym = 0.5 * (devs + mirror(devs))
    asym = devs - sym
    zero = np.zeros(2 * N_POINTS)
    return ShapeModel(
        mean=mean,
        sym=fit_pca(sym.reshape(len(pts), -1), weights, max_modes, mean=zero),
        asym=fit_pca(asym.reshape(len(pts), -1), weights, max_modes, mean=zero),
    )


# ---------------------------------------------------------------- derived points

#: Brow landmarks lifted to make forehead points, with the lift as a fraction of
#: the nose-bridge-to-chin length (outer points lower: the hairline curves).
_FOREHEAD = ((17, 0.22), (19, 0.36), (21, 0.42), (22, 0.42), (24, 0.36), (26, 0.22))
N_FOREHEAD = len(_FOREHEAD)


def forehead_points(points: np.ndarray) -> np.ndarray:
    """``[6, 2]`` points above the brows, a fixed function of the 68 landmarks.

    dlib-68 stops at the brows; these extend the face model over the forehead
    so that the warp moves the whole face, not just the part below the brows.
    """
    pts = np.asarray(points, dtype=np.float64)
    up = pts[27] - pts[8]  # chin -> top of the nose bridge
    length = float(np.hypot(*up))
    up = up / max(length, 1e-9)
    return np.stack([pts[i] + lift * length * up for i, lift in _FOREHEAD])


def border_points(size: int, per_side: int = 4) -> np.ndarray:
    """``[4 * per_side, 2]`` fixed points around the crop border (for warps)."""
    t = np.linspace(0.0, size - 1.0, per_side + 1)[:-1]
    e = size - 1.0
    top = np.column_stack([t, np.zeros_like(t)])
    right = np.column_stack([np.full_like(t, e), t])
    bottom = np.column_stack([e - t, np.full_like(t, e)])
    left = np.column_stack([np.zeros_like(t), e - t])
    return np.concatenate([top, right, bottom, left])


def full_points(points: np.ndarray, size: int) -> np.ndarray:
    """68 landmarks + forehead + border points ``[68 + 6 + 16, 2]`` for warping."""
    pts = np.asarray(points, dtype=np.float64)
    return np.concatenate([pts, forehead_points(pts), border_points(size)])

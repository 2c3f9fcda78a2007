"""Appearance side of the morphable model: shape-free texture and region detail.

Every source crop is warped onto the mean shape (the *mean frame*, same size as
the crop), which removes shape and leaves appearance. Appearance is modelled in
two layers so that mixing donors cannot leave colour seams:

* ``texture`` — a PCA of the whole shape-free face (skin tone, shading, beard,
  make-up, everything outside the feature regions);
* ``eyes`` (eyes + brows), ``nose``, ``mouth`` — PCAs of each region's
  *band-pass detail*: the texture minus its Gaussian low-pass (``sigma``
  pixels). Colour and shading at scales above ``sigma`` always come from the
  ``texture`` factor, so a region from one donor takes on the skin tone and
  lighting of the others instead of being pasted in.

Lighting is not identity: the broad light field of a face (its Gaussian
low-pass at ``light_sigma``: skin tone, shading, colour cast of the photo)
and the contrast of everything finer (harsh or soft light, a high-contrast
black-and-white print) are normalised away before modelling and supplied at
decoding time, normally from the photo the face is rendered into, so face
and context always share one light.

Composition: ``T = T_tex + sum_r m_r * (D_r - D_tex) - L_mean + L`` where
``D`` is the band-pass detail, ``m_r`` a soft region weight map (1 in the
region core, fading to 0 over a few pixels), ``L_mean`` the mean light field
and ``L`` the wanted one. With every mode kept, a source face encoded and
decoded with its own light field comes back exactly (up to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .shape import PCA, fit_pca, forehead_points

#: Region name -> dlib-68 landmark indices whose hull (grown) forms the region.
REGION_LANDMARKS: dict[str, tuple[tuple[int, ...], ...]] = {
    # each eye with its brow is a separate hull: the skin between them is texture
    "eyes": (tuple(range(17, 22)) + tuple(range(36, 42)),
             tuple(range(22, 27)) + tuple(range(42, 48))),
    "nose": (tuple(range(27, 36)),),
    "mouth": (tuple(range(48, 60)),),
}
#: How far each region's hull is grown, in units of the inter-ocular distance. The mouth region
#: is the lips: the skin around them (stubble, the philtrum) is the texture's, so a clean-shaven
#: mouth donor leaves no clean ring inside a stubbled texture nor a stubbled one on a smooth face
#: (grown 0.14 it did; docs/novelty.md, "The lips alone"). The nose region stops at the nostrils
#: for the same reason: grown 0.12 it held the philtrum, and its modes painted a dark smudge
#: there (docs/novelty.md, "The nose alone").
REGION_GROW: dict[str, float] = {"eyes": 0.12, "nose": 0.04, "mouth": 0.04}
REGION_NAMES: tuple[str, ...] = tuple(REGION_LANDMARKS)


def interocular(points: np.ndarray) -> float:
    """Distance between the eye centres of dlib-68 ``points [68, 2]``."""
    pts = np.asarray(points, dtype=np.float64)
    return float(np.hypot(*(pts[42:48].mean(0) - pts[36:42].mean(0))))


def _hull_mask(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    mask = np.zeros(size, np.uint8)
    hull = cv2.convexHull(np.round(points * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1, lineType=cv2.LINE_AA, shift=4)
    return mask


def _grow_and_feather(mask: np.ndarray, grow: float, feather: float) -> np.ndarray:
    """Dilate a 0/1 mask by ``grow`` px, then Gaussian-feather it (float32 [H, W])."""
    import cv2

    if grow > 0:
        r = max(1, int(round(grow)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        mask = cv2.dilate(mask, kernel)
    soft = mask.astype(np.float32)
    if feather > 0:
        soft = cv2.GaussianBlur(soft, (0, 0), feather)
    return np.clip(soft, 0.0, 1.0)


def region_masks(points: np.ndarray, size: tuple[int, int],
                 feather: float = 0.10) -> dict[str, np.ndarray]:
    """Soft weight maps ``{region: float32 [H, W]}`` for dlib-68 ``points``.

    ``feather`` is the Gaussian edge width in inter-ocular units; the regions'
    cores are 1 and their weights never sum above 1 anywhere.
    """
    iod = interocular(points)
    masks = {}
    for name, groups in REGION_LANDMARKS.items():
        hard = np.zeros(size, np.uint8)
        for idx in groups:
            hard |= _hull_mask(np.asarray(points, np.float64)[list(idx)], size)
        masks[name] = _grow_and_feather(hard, REGION_GROW[name] * iod, feather * iod)
    total = sum(masks.values())
    over = np.maximum(total, 1.0)  # where soft edges overlap, share the weight
    return {k: (v / over).astype(np.float32) for k, v in masks.items()}


#: The parts of a face whose colour is not skin colour: each eye and the lips (dlib-68
#: indices), tighter than ``REGION_LANDMARKS``: lids and the skin around them are skin.
#: Brows are not among them: a brow's colour is its darkness on the skin's hue (a brow's
#: detail from one donor, added onto another donor's skin, keeps the first donor's colour
#: difference and came out orange; docs/novelty.md, "Orange brows").
FEATURE_PARTS: tuple[tuple[int, ...], ...] = (
    tuple(range(36, 42)), tuple(range(42, 48)), tuple(range(48, 60)))


def feature_mask(points: np.ndarray, size: tuple[int, int], grow: float = 0.06,
                 feather: float = 0.05) -> np.ndarray:
    """Soft mask ``float32 [H, W]`` of the eyes and lips (``FEATURE_PARTS``) of dlib-68
    ``points``; ``grow`` and ``feather`` in inter-ocular units."""
    pts = np.asarray(points, np.float64)
    iod = interocular(pts)
    hard = np.zeros(size, np.uint8)
    for idx in FEATURE_PARTS:
        hard |= _hull_mask(pts[list(idx)], size)
    return _grow_and_feather(hard, grow * iod, feather * iod)


def face_mask(points: np.ndarray, size: tuple[int, int], grow: float = 0.0,
              feather: float = 0.0, forehead: float = 1.0) -> np.ndarray:
    """Mask ``float32 [H, W]`` of the face: hull of jaw and forehead points.

    ``grow`` (negative shrinks) and ``feather`` are in inter-ocular units;
    ``forehead`` scales how far the forehead points sit above the brows
    (1: the model's forehead points, 0: the brows themselves).
    """
    import cv2

    pts = np.asarray(points, np.float64)
    brows = pts[[17, 19, 21, 22, 24, 26]]
    top = brows + float(forehead) * (forehead_points(pts) - brows)
    hull_pts = np.concatenate([pts[:17], top])
    hard = _hull_mask(hull_pts, size)
    iod = interocular(pts)
    if grow < 0:
        r = max(1, int(round(-grow * iod)))
        hard = cv2.erode(hard, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        grow = 0.0
    return _grow_and_feather(hard, grow * iod, feather * iod)


def low_pass_reference(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of a float image ``[H, W, C]`` at full resolution."""
    import cv2

    return cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def low_pass(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian low-pass of a float image ``[H, W, C]``.

    Wide blurs (``sigma`` ≥ 8 px) run on a 4x smaller copy and are upsampled
    bilinearly, about ten times faster than ``low_pass_reference`` and within
    a fraction of a grey level of it on smooth images (parity test).
    """
    import cv2

    if sigma < 8.0:
        return low_pass_reference(image, sigma)
    h, w = image.shape[:2]
    small = cv2.resize(image, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    # INTER_AREA already averaged 4x4 blocks (variance 15/12 px^2 at full size)
    s_small = float(np.sqrt(max(sigma ** 2 - 15.0 / 12.0, 1.0))) / 4.0
    small = cv2.GaussianBlur(small, (0, 0), s_small, borderType=cv2.BORDER_REFLECT)
    out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    return out.reshape(image.shape)


@dataclass(frozen=True)
class Region:
    """One feature region: its pixels (flat indices), soft weights and detail PCA."""

    pixels: np.ndarray   # int64 [Pr] flat indices into [H * W]
    weights: np.ndarray  # float32 [Pr] soft weight of each pixel
    pca: PCA             # over [Pr * 3] band-pass detail values


@dataclass(frozen=True)
class AppearanceModel:
    """Shape-free appearance in the mean frame ``[H, W]``.

    ``pixels`` are the flat indices of the modelled face support; elsewhere
    the texture is ``mean_image``. ``texture`` is a PCA over ``[P * 3]``
    RGB values in [0, 1]; ``regions`` hold the band-pass detail models.
    """

    size: tuple[int, int]
    pixels: np.ndarray
    mean_image: np.ndarray  # float32 [H, W, 3]
    texture: PCA
    regions: Mapping[str, Region]
    sigma: float
    light_sigma: float
    #: typical (person-weighted median) contrast of the sources
    ref_contrast: float = 1.0
    #: flat indices of the inner face where contrast is measured (empty: all of ``pixels``)
    inner: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def mean_light(self) -> np.ndarray:
        """Light field of ``mean_image`` ``float32 [H, W, 3]`` (computed once)."""
        cached = self.__dict__.get("_mean_light")
        if cached is None:
            cached = low_pass(self.mean_image, self.light_sigma)
            object.__setattr__(self, "_mean_light", cached)
        return cached

    def to_image(self, values: np.ndarray) -> np.ndarray:
        """Texture image ``float32 [H, W, 3]`` from support values ``[P * 3]``."""
        img = self.mean_image.reshape(-1, 3).copy()
        img[self.pixels] = np.asarray(values, np.float32).reshape(-1, 3)
        return img.reshape(self.size + (3,))

    def vector(self, image: np.ndarray) -> np.ndarray:
        """Support values ``[P * 3]`` of a texture image ``[H, W, 3]``."""
        return np.asarray(image, np.float32).reshape(-1, 3)[self.pixels].reshape(-1)

    def detail(self, image: np.ndarray) -> np.ndarray:
        """Band-pass detail ``float32 [H, W, 3]`` (image minus its low-pass)."""
        return image - low_pass(image, self.sigma)

    def light(self, image: np.ndarray) -> np.ndarray:
        """Light field ``float32 [H, W, 3]`` of a shape-free image (broad low-pass)."""
        return low_pass(self.to_image(self.vector(image)), self.light_sigma)

    def contrast(self, image: np.ndarray) -> float:
        """RMS of a shape-free image's detail above its light field, over the face."""
        img = self.to_image(self.vector(image))
        where = self.inner if self.inner.size else self.pixels
        det = (img - low_pass(img, self.light_sigma)).reshape(-1, 3)[where]
        return float(np.sqrt(np.mean(det ** 2)))

    def _gain(self, contrast: float) -> float:
        return float(np.clip(contrast / max(self.ref_contrast, 1e-6), 0.5, 2.0))

    def unlit(self, image: np.ndarray) -> np.ndarray:
        """The image with its light field replaced by the mean one and its
        contrast brought to ``ref_contrast``."""
        img = self.to_image(self.vector(image))  # outside the support: the mean
        det = img - low_pass(img, self.light_sigma)
        return det / self._gain(self.contrast(img)) + self.mean_light

    def encode(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """Coefficients ``{"texture": [Kt], region: [Kr]}`` of a shape-free image
        (its light field is discarded)."""
        img = self.to_image(self.vector(self.unlit(image)))
        out = {"texture": self.texture.project(self.vector(img))}
        det = self.detail(img).reshape(-1, 3)
        for name, region in self.regions.items():
            out[name] = region.pca.project(det[region.pixels].reshape(-1))
        return out

    def decode(self, coeffs: Mapping[str, np.ndarray], light: np.ndarray | None = None,
               contrast: float | None = None) -> np.ndarray:
        """Shape-free texture ``float32 [H, W, 3]`` from coefficients, lit by ``light``
        (a light field from ``light()``; ``None`` keeps the mean light) with
        ``contrast`` (from ``contrast()``; ``None`` keeps ``ref_contrast``)."""
        base = self.to_image(self.texture.reconstruct(coeffs["texture"]).astype(np.float32))
        base_detail = self.detail(base).reshape(-1, 3)
        out = base.reshape(-1, 3).copy()
        for name, region in self.regions.items():
            det = region.pca.reconstruct(coeffs[name]).reshape(-1, 3).astype(np.float32)
            w = region.weights[:, None]
            out[region.pixels] += w * (det - base_detail[region.pixels])
        out = out.reshape(self.size + (3,))
        gain = 1.0 if contrast is None else self._gain(contrast)
        return (out - self.mean_light) * gain + (self.mean_light if light is None else light)


def fit_appearance(textures: np.ndarray, weights: np.ndarray, mean_points: np.ndarray,
                   sigma: float, light_sigma: float, max_modes: int,
                   support_grow: float = 0.08) -> AppearanceModel:
    """Fit the appearance model to shape-free textures ``[N, H, W, 3]`` in [0, 1].

    ``mean_points [68, 2]`` are the mean shape in the mean frame; ``weights
    [N]`` sum to 1 (one unit per person).
    """
    n, h, w, c = textures.shape
    if c != 3:
        raise ValueError(f"textures must be [N, H, W, 3], got {textures.shape}")
    size = (h, w)
    support = face_mask(mean_points, size, grow=support_grow) > 0.0
    pixels = np.flatnonzero(support.reshape(-1))
    mean_image = np.average(textures, axis=0, weights=weights).astype(np.float32)
    empty = PCA(np.zeros(0), np.zeros((0, 0)), np.zeros(0))
    inner = np.flatnonzero(face_mask(mean_points, size, grow=-0.25).reshape(-1) > 0.0)
    model = AppearanceModel(size, pixels, mean_image, empty, {}, float(sigma), float(light_sigma),
                            1.0, inner)
    contrasts = np.array([model.contrast(t) for t in textures])
    order = np.argsort(contrasts)
    ref = float(contrasts[order][np.searchsorted(np.cumsum(weights[order]), 0.5)])
    model = AppearanceModel(size, pixels, mean_image, empty, {}, float(sigma), float(light_sigma),
                            ref, inner)
    flat = np.stack([model.vector(model.unlit(t)) for t in textures])
    tex_pca = fit_pca(flat, weights, max_modes)
    details = np.stack([model.detail(model.to_image(f)).reshape(-1, 3) for f in flat])
    regions = {}
    for name, mask in region_masks(mean_points, size).items():
        rp = np.flatnonzero((mask.reshape(-1) > 1e-3) & support.reshape(-1))
        data = details[:, rp].reshape(n, -1)
        regions[name] = Region(rp, mask.reshape(-1)[rp].astype(np.float32),
                               fit_pca(data, weights, max_modes))
    return AppearanceModel(size, pixels, mean_image, tex_pca, regions, float(sigma),
                           float(light_sigma), ref, inner)

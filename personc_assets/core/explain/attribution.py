"""Attribution maps: which regions of a released face drive its likeness to a source.

Two paths, both returning an ``AttributionMap`` in the released image's pixels:

- ``occlusion_map`` (any encoder, black box): grey out (or blur) a square
  patch, re-embed, and record the similarity drop to each target embedding
  ``s_t(image) - s_t(occluded)``; each pixel gets the mean drop of the patches
  that cover it (Zeiler & Fergus' occlusion sensitivity, the same averaging
  as ``captum.attr.Occlusion``, which the tests use as the reference). The
  face is embedded at the landmarks of the unoccluded image
  (``embed_at_landmarks``), so a patch over an eye changes the pixels the
  encoder sees, not where it looks. Patches are limited to a region of
  interest (by default the landmarks' box grown by ``ROI_MARGIN``, which
  contains dlib's and ArcFace's crops) and embedded in batches.
- ``gradient_map`` (encoders that are PyTorch modules): integrated gradients
  (or plain saliency) through ``captum`` of the cosine to each target with
  respect to the encoder's input crop, summed over colour channels, then
  warped from the crop back to the image with the crop's affine matrix.
  ``dlib_gradient_map`` wires it to the torch dlib encoder.

Positive values mean "this region makes the face look like the target".
``save_overlay_png`` draws a map over the face with a colour bar (matplotlib,
Agg) and writes the PNG atomically.
"""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Mapping, Sequence

import numpy as np

from ..encoders.base import Encoder
from ..types import FaceObservation, check_image

if TYPE_CHECKING:  # torch is imported lazily: the occlusion path does not need it
    import torch

log = logging.getLogger(__name__)

#: images ``[H, W, 3]`` in, unit embeddings ``[N, D]`` out (NaN rows where embedding failed)
ImageEmbedder = Callable[[Sequence[np.ndarray]], np.ndarray]
Fill = Literal["grey", "blur"]
GradientMethod = Literal["integrated_gradients", "saliency"]
GRADIENT_METHODS: tuple[str, ...] = ("integrated_gradients", "saliency")

#: landmark box grown by this fraction of its size on every side (dlib's chip pads 0.25)
ROI_MARGIN = 0.35
GREY = 128


@dataclass(frozen=True)
class AttributionMap:
    """Per-target attribution maps over one image.

    ``maps`` is ``float32 [T, H, W]`` in the image's pixels (NaN where not
    evaluated: outside the region of interest or outside the encoder's
    crop); ``base_similarity`` is ``[T]``, the cosine of the unaltered image to
    each target. ``evaluations`` counts encoder forward passes (occlusion) or
    gradient steps.
    """

    method: str
    target_names: tuple[str, ...]
    maps: np.ndarray
    base_similarity: np.ndarray
    evaluations: int
    seconds: float
    params: Mapping[str, object] = field(default_factory=dict)

    def map_for(self, target: str) -> np.ndarray:
        if target not in self.target_names:
            raise KeyError(f"unknown target {target!r}; known: {', '.join(self.target_names)}")
        return self.maps[self.target_names.index(target)]

    def top_region(self, target: str, cell: int = 32) -> tuple[int, int, int, int]:
        """Box ``(left, top, right, bottom)`` of the ``cell``-px cell with the largest mean value."""
        m = np.nan_to_num(self.map_for(target), nan=-np.inf)
        h, w = m.shape
        best, box = -np.inf, (0, 0, min(cell, w), min(cell, h))
        for y in range(0, h, cell):
            for x in range(0, w, cell):
                v = m[y:y + cell, x:x + cell]
                score = float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else -np.inf
                if score > best:
                    best, box = score, (x, y, min(x + cell, w), min(y + cell, h))
        return box


# --------------------------------------------------------------------------- occlusion


def embed_at_landmarks(encoder: Encoder, face: FaceObservation) -> ImageEmbedder:
    """An embedder that reuses ``face``'s landmarks and box for every image given to it."""

    def embed(images: Sequence[np.ndarray]) -> np.ndarray:
        obs = [FaceObservation(img, face.landmarks, face.box, face.detector_score) for img in images]
        return np.asarray(encoder.embed(obs), dtype=np.float32)

    return embed


def landmark_roi(landmarks: np.ndarray, shape: tuple[int, int], margin: float = ROI_MARGIN) -> tuple[int, int, int, int]:
    """``(left, top, right, bottom)`` of the landmarks' box grown by ``margin``, clipped to ``shape`` (H, W)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    x0, y0 = lm.min(axis=0)
    x1, y1 = lm.max(axis=0)
    gx, gy = (x1 - x0) * margin, (y1 - y0) * margin
    h, w = shape
    return (max(0, int(x0 - gx)), max(0, int(y0 - gy)), min(w, int(math.ceil(x1 + gx))),
            min(h, int(math.ceil(y1 + gy))))


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch origins along one axis: every ``stride`` until the axis is covered (last patch may be cut)."""
    if length <= patch:
        return [0]
    return [i * stride for i in range(math.ceil((length - patch) / stride) + 1)]


def _occlude(image: np.ndarray, blurred: np.ndarray | None, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    out = image.copy()
    out[y0:y1, x0:x1] = GREY if blurred is None else blurred[y0:y1, x0:x1]
    return out


def occlusion_map(image: np.ndarray, embed: ImageEmbedder, targets: np.ndarray,
                  target_names: Sequence[str], *,
                  patch: int | None = None,      # side of the square patch; default image side / 8
                  stride: int | None = None,     # default patch (no overlap; patch / 2 is 3x slower, smoother)
                  fill: Fill = "grey",           # mid-grey, or a strong blur of the image
                  roi: tuple[int, int, int, int] | None = None,  # (left, top, right, bottom); None = whole image
                  batch_size: int = 16) -> AttributionMap:
    """Occlusion sensitivity of ``image`` ``[H, W, 3]`` towards each target ``[T, D]`` (unit rows)."""
    check_image(image, "image")
    targets = np.asarray(targets, dtype=np.float32)
    if targets.ndim != 2 or targets.shape[0] != len(target_names):
        raise ValueError(f"targets must be [T={len(target_names)}, D], got {targets.shape}")
    if fill not in ("grey", "blur"):
        raise ValueError(f"fill must be 'grey' or 'blur', got {fill!r}")
    h, w = image.shape[:2]
    patch = int(patch or max(4, min(h, w) // 8))
    stride = int(stride or patch)
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be >= 1, got {patch}, {stride}")
    x0, y0, x1, y1 = roi if roi is not None else (0, 0, w, h)
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"roi {roi} must lie inside the {w}x{h} image")
    blurred = None
    if fill == "blur":
        import cv2

        blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=patch / 2)
    boxes = [(x0 + px, y0 + py, min(x0 + px + patch, x1), min(y0 + py + patch, y1))
             for py in patch_starts(y1 - y0, patch, stride) for px in patch_starts(x1 - x0, patch, stride)]
    t0 = time.perf_counter()
    base = np.asarray(embed([image]), dtype=np.float32)
    if base.shape != (1, targets.shape[1]) or not np.all(np.isfinite(base)):
        raise ValueError(f"the unoccluded image could not be embedded (got {base.shape}); "
                         "occlusion maps need a face the encoder can embed")
    base_sim = (base @ targets.T)[0]
    total = np.zeros((len(targets), h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    failed = 0
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        emb = np.asarray(embed([_occlude(image, blurred, b) for b in chunk]), dtype=np.float32)
        if emb.shape != (len(chunk), targets.shape[1]):
            raise ValueError(f"embedder returned {emb.shape} for {len(chunk)} images")
        for (bx0, by0, bx1, by1), e in zip(chunk, emb):
            if not np.all(np.isfinite(e)):
                failed += 1  # the encoder could not embed this occlusion: leave it out
                continue
            total[:, by0:by1, bx0:bx1] += (base_sim - targets @ e)[:, None, None]
            count[by0:by1, bx0:bx1] += 1
    if failed:
        log.warning("occlusion: %d of %d occluded images could not be embedded and were left out",
                    failed, len(boxes))
    with np.errstate(invalid="ignore", divide="ignore"):
        maps = np.where(count > 0, total / count, np.nan).astype(np.float32)
    return AttributionMap("occlusion", tuple(target_names), maps, base_sim.astype(np.float32),
                          len(boxes) + 1, time.perf_counter() - t0,
                          dict(patch=patch, stride=stride, fill=fill, roi=(x0, y0, x1, y1),
                               failed=failed))


def face_occlusion_map(image: np.ndarray, face: FaceObservation, encoder: Encoder,
                       targets: np.ndarray, target_names: Sequence[str], **kwargs) -> AttributionMap:
    """``occlusion_map`` for an ``Encoder``: embeds at ``face``'s landmarks, ROI from the landmarks."""
    kwargs.setdefault("roi", landmark_roi(face.landmarks, image.shape[:2]))
    amap = occlusion_map(image, embed_at_landmarks(encoder, face), targets, target_names, **kwargs)
    return AttributionMap(amap.method, amap.target_names, amap.maps, amap.base_similarity,
                          amap.evaluations, amap.seconds, dict(amap.params, encoder=encoder.name))


# --------------------------------------------------------------------------- gradients


def gradient_map(model: "torch.nn.Module", preprocess: Callable[["torch.Tensor"], "torch.Tensor"],
                 crop: np.ndarray, targets: np.ndarray, target_names: Sequence[str], *,
                 method: GradientMethod = "integrated_gradients",
                 n_steps: int = 16,                       # integration steps (integrated gradients)
                 crop_matrix: np.ndarray | None = None,   # [2, 3] affine image -> crop
                 image_shape: tuple[int, int] | None = None,  # (H, W) of the image to map back to
                 device: str | None = None) -> AttributionMap:
    """Gradient attribution of ``cos(model(preprocess(crop)), target)`` for each target.

    ``crop`` is the encoder's uint8 input ``[h, w, 3]``; ``preprocess`` maps a
    uint8 tensor ``[N, h, w, 3]`` to the model's float input ``[N, 3, h, w]``;
    the model returns ``[N, D]``. Integrated gradients start from a mid-grey
    crop; ``saliency`` is the plain gradient times ``(input - grey)`` (one
    backward pass per target, noisier). With ``crop_matrix`` and ``image_shape`` the ``[h, w]`` maps are
    warped back into image pixels (NaN outside the crop).
    """
    import torch
    from captum.attr import IntegratedGradients, Saliency

    check_image(crop, "crop")
    if method not in GRADIENT_METHODS:
        raise ValueError(f"method must be one of {GRADIENT_METHODS}, got {method!r}")
    targets_np = np.asarray(targets, dtype=np.float32)
    if targets_np.ndim != 2 or targets_np.shape[0] != len(target_names):
        raise ValueError(f"targets must be [T={len(target_names)}, D], got {targets_np.shape}")
    dev = torch.device(device or next(model.parameters()).device)
    t0 = time.perf_counter()
    x = torch.from_numpy(np.ascontiguousarray(crop)[None]).to(dev)
    t = torch.from_numpy(targets_np).to(dev)

    def forward(raw: torch.Tensor) -> torch.Tensor:
        """[N, 3, h, w] float pixels (0..255) -> [N, T] cosines."""
        emb = model(preprocess(raw.permute(0, 2, 3, 1)))
        return torch.nn.functional.normalize(emb, dim=1) @ t.T

    inp = x.permute(0, 3, 1, 2).float().requires_grad_()
    with torch.no_grad():
        base = forward(inp)[0].cpu().numpy()
    maps = []
    for ti in range(len(target_names)):
        if method == "integrated_gradients":
            attr = IntegratedGradients(forward).attribute(inp, baselines=torch.full_like(inp, GREY),
                                                          target=ti, n_steps=n_steps,
                                                          internal_batch_size=n_steps)
        else:
            attr = Saliency(forward).attribute(inp, target=ti, abs=False) * (inp - GREY)
        maps.append(attr[0].sum(dim=0).detach().cpu().numpy())
    crop_maps = np.stack(maps).astype(np.float32)  # [T, h, w]
    out = crop_maps
    if crop_matrix is not None:
        if image_shape is None:
            raise ValueError("image_shape (H, W) is needed to map the crop back to the image")
        out = np.stack([warp_crop_map(m, crop_matrix, image_shape) for m in crop_maps])
    steps = n_steps if method == "integrated_gradients" else 1
    return AttributionMap(method, tuple(target_names), out, base.astype(np.float32),
                          steps * len(target_names), time.perf_counter() - t0,
                          dict(n_steps=steps, crop_shape=crop.shape[:2]))


def warp_crop_map(crop_map: np.ndarray, crop_matrix: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Warp a ``[h, w]`` map in crop pixels back to ``[H, W]`` image pixels (NaN outside the crop).

    Values are per-pixel attributions; the map is rescaled by the area ratio so
    the total over the face is preserved.
    """
    import cv2

    m = np.asarray(crop_matrix, dtype=np.float64)
    if m.shape != (2, 3):
        raise ValueError(f"crop_matrix must be [2, 3], got {m.shape}")
    h, w = image_shape
    area = abs(np.linalg.det(m[:, :2]))  # crop px per image px, squared
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    warped = cv2.warpAffine(crop_map.astype(np.float32), m, (w, h), flags=flags, borderValue=0.0)
    inside = cv2.warpAffine(np.ones_like(crop_map, np.float32), m, (w, h), flags=flags, borderValue=0.0)
    return np.where(inside > 0.5, warped * area, np.nan).astype(np.float32)


def dlib_chip_matrix(face: FaceObservation, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Affine ``[2, 3]`` from image pixels to dlib's face chip (as ``dlib.get_face_chip`` cuts it)."""
    import cv2
    import dlib

    rect = dlib.rectangle(*[int(v) for v in face.box])
    shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks])
    d = dlib.get_face_chip_details(shape, size=size, padding=padding)
    r = d.rect
    cx, cy = (r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2
    c, s = math.cos(d.angle), math.sin(d.angle)

    def rotate(px: float, py: float) -> tuple[float, float]:
        x, y = px - cx, py - cy
        return cx + c * x - s * y, cy + s * x + c * y

    src = np.float32([rotate(r.left(), r.top()), rotate(r.right(), r.top()), rotate(r.right(), r.bottom())])
    dst = np.float32([[0, 0], [d.cols - 1, 0], [d.cols - 1, d.rows - 1]])
    return cv2.getAffineTransform(src, dst)


def dlib_gradient_map(encoder, face: FaceObservation, targets: np.ndarray, target_names: Sequence[str],
                      **kwargs) -> AttributionMap:
    """``gradient_map`` through the torch dlib encoder (``encoders.dlib.TorchDlibEncoder``)."""
    from ..encoders.common import CHIP_PADDING, CHIP_SIZE, dlib_chip

    model = getattr(encoder, "model", None)
    if model is None or not hasattr(model, "normalise"):
        raise TypeError(f"encoder {getattr(encoder, 'name', encoder)!r} has no torch model; gradient maps "
                        "need the torch dlib encoder (make_dlib_encoder('torch')) — use face_occlusion_map "
                        "for black-box encoders")
    chip = dlib_chip(face, CHIP_SIZE, CHIP_PADDING)
    matrix = dlib_chip_matrix(face, CHIP_SIZE, CHIP_PADDING)
    amap = gradient_map(model, model.normalise, chip, targets, target_names, crop_matrix=matrix,
                        image_shape=face.image.shape[:2], **kwargs)
    return AttributionMap(amap.method, amap.target_names, amap.maps, amap.base_similarity,
                          amap.evaluations, amap.seconds, dict(amap.params, encoder=encoder.name))


# --------------------------------------------------------------------------- overlay


def smooth_map(heat: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian-smoothed copy of a ``[H, W]`` map that keeps NaN outside the evaluated area."""
    import cv2

    if sigma <= 0:
        return heat
    valid = np.isfinite(heat).astype(np.float32)
    num = cv2.GaussianBlur(np.nan_to_num(heat).astype(np.float32), (0, 0), sigma)
    den = cv2.GaussianBlur(valid, (0, 0), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(valid > 0, num / np.maximum(den, 1e-6), np.nan).astype(np.float32)


def draw_overlay(ax, cax, image: np.ndarray, heat: np.ndarray, *, label: str = "cosine drop when occluded",
                 max_alpha: float = 0.75) -> None:
    """Draw ``heat`` ``[H, W]`` (NaN = not evaluated) over ``image`` on matplotlib axes, colour bar in ``cax``.

    Diverging colours centred on zero, opacity growing with ``|value|`` so that
    regions that do not matter leave the face visible: red regions make the
    face look like the target, blue ones make it look less like it.
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    check_image(image, "image")
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat map {heat.shape} must match the image {image.shape[:2]}")
    finite = heat[np.isfinite(heat)]
    lim = float(np.percentile(np.abs(finite), 99.5)) if finite.size else 1.0
    lim = lim if lim > 0 else 1e-6
    norm = Normalize(vmin=-lim, vmax=lim)
    cmap = colormaps["RdBu_r"]
    values = np.nan_to_num(heat)
    rgba = cmap(norm(values))
    rgba[..., 3] = np.where(np.isfinite(heat), max_alpha * np.clip(np.abs(values) / lim, 0, 1), 0)
    ax.imshow(image)
    ax.imshow(rgba)
    ax.set_axis_off()
    bar = ax.figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
    bar.ax.tick_params(labelsize=6)
    bar.formatter.set_powerlimits((-2, 2))
    bar.ax.yaxis.get_offset_text().set_fontsize(6)
    bar.set_label(label, fontsize=7)


def overlay_png_bytes(image: np.ndarray, heat: np.ndarray, *, title: str = "",
                      label: str = "cosine drop when occluded", max_alpha: float = 0.75,
                      size_inches: float = 3.2, dpi: int = 100) -> bytes:
    """PNG of ``heat`` over ``image`` with a colour bar (see ``draw_overlay``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size_inches * 1.35, size_inches), dpi=dpi)
    top = 0.88 if title else 0.98
    ax = fig.add_axes((0.02, 0.02, 0.70, top - 0.02))
    cax = fig.add_axes((0.75, 0.1, 0.035, top - 0.2))
    draw_overlay(ax, cax, image, heat, label=label, max_alpha=max_alpha)
    if title:
        fig.text(0.37, 0.94, title, ha="center", va="center", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_overlay_png(path: Path, image: np.ndarray, amap: AttributionMap, target: str, *,
                     title: str | None = None, smooth_sigma: float | None = None) -> Path:
    """Write the overlay of ``amap``'s map for ``target`` over ``image`` as PNG (atomically).

    Gradient maps are pixel-noisy; they are shown smoothed (``smooth_sigma``,
    default 1/64 of the image side) — the stored map stays raw.
    """
    from ..atomic import atomic_write_bytes

    data = overlay_png_bytes(image, display_map(amap, target, image.shape[:2], smooth_sigma),
                             title=title or overlay_title(amap, target), label=overlay_label(amap))
    atomic_write_bytes(Path(path), data)
    return Path(path)


def display_map(amap: AttributionMap, target: str, shape: tuple[int, int],
                smooth_sigma: float | None = None) -> np.ndarray:
    """The map for ``target`` as shown: smoothed for gradient methods."""
    if smooth_sigma is None:
        smooth_sigma = 0.0 if amap.method == "occlusion" else max(shape) / 64
    return smooth_map(amap.map_for(target), smooth_sigma)


def overlay_label(amap: AttributionMap) -> str:
    return {"occlusion": "cosine drop when occluded",
            "integrated_gradients": "integrated gradients (cosine)",
            "saliency": "gradient x (input - grey) (cosine)"}.get(amap.method, amap.method)


def overlay_title(amap: AttributionMap, target: str) -> str:
    sim = float(amap.base_similarity[amap.target_names.index(target)])
    encoder = amap.params.get("encoder")
    enc = f"{encoder} " if encoder else ""
    return f"{target} — {enc}{amap.method.replace('_', ' ')}, cos {sim:.3f}"

"""Coalition images of one released face, rendered once each with shared work.

The ``2**k`` coalitions of a face (see ``ics``) differ only in which factors
come from the face and which from the population mean, so most of what a
render computes recurs across them. ``coalition_images`` prepares every
coalition of a face and hands out the images one at a time (``image(i)``,
safe to call from several threads), so that a caller can overlap rendering
with face detection:

* ``SynthesizedImages`` (any backbone, the reference behaviour): each
  coalition composed and synthesized by the backbone itself, in batches.
* ``NeutralFrameImages`` (the morphable backbone's ``"neutral"`` frame): the
  render of ``MorphableBackbone._render_neutral`` in stages. The landmarks,
  warp maps, face oval and skin mask depend on the shape factors alone and
  are computed once per distinct shape; the faded shape-free texture (and
  its value range) depends on the appearance coefficients alone and is
  decoded once per distinct appearance; only the warp, the blend onto the
  backdrop and the restoration run per coalition. Every stage performs the
  very float operations of the backbone's own render in the same order, so
  the images are bit-identical to ``backbone.synthesize``. The stages are the
  backbone's own methods (``_neutral_points``, ``_oval``, ``_skin``,
  ``_restore``, ...), so a change inside one carries over; a change to how
  ``_render_neutral`` puts them together must be mirrored here, and the
  parity tests in ``tests/test_ics.py`` fail until it is.
"""

from __future__ import annotations

from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Protocol, Sequence

import numpy as np

from ..backbones.base import Backbone
from ..parallel import map_in
from ..types import Factors

if TYPE_CHECKING:
    from ..backbones.morphable import MorphableBackbone


class CoalitionImages(Protocol):
    """The ``n`` coalition images of one face, ``uint8 [S, S, 3]`` each, rendered on demand."""

    def __len__(self) -> int: ...

    def image(self, i: int) -> np.ndarray: ...


class SynthesizedImages:
    """Each coalition composed and synthesized by the backbone (batches of ``batch_size``)."""

    def __init__(self, backbone: Backbone, factors: Sequence[Factors], batch_size: int = 16) -> None:
        images: list[np.ndarray] = []
        step = max(1, batch_size)
        for start in range(0, len(factors), step):
            latents = [backbone.compose(f) for f in factors[start:start + step]]
            batch = backbone.synthesize(latents)
            if len(batch) != len(latents):
                raise RuntimeError(f"backbone {backbone.name!r} returned {len(batch)} images for "
                                   f"{len(latents)} latents")
            images.extend(batch)
        self._images = images

    def __len__(self) -> int:
        return len(self._images)

    def image(self, i: int) -> np.ndarray:
        return self._images[i]


@dataclass(frozen=True)
class _Shape:
    """What one face shape fixes in a neutral-frame render (all ``float32 [S, S, *]``)."""

    map_x: np.ndarray      # [S, S] warp map into the mean frame
    map_y: np.ndarray      # [S, S]
    oval: np.ndarray       # [S, S, 1] face oval
    skin: np.ndarray       # [S, S, 1] oval without eyes and lips
    backdrop: np.ndarray   # [S, S, 3] (1 - oval) * backdrop


@dataclass(frozen=True)
class _Appearance:
    """A faded shape-free texture ``float32 [S, S, 3]`` and its value range (the warp's clip)."""

    texture: np.ndarray
    lo: float
    hi: float


def _key(*arrays: np.ndarray) -> bytes:
    return b"|".join(np.ascontiguousarray(a).tobytes() for a in arrays)


class NeutralFrameImages:
    """``MorphableBackbone``'s neutral-frame render, staged and shared across coalitions.

    Mirrors ``_render_neutral`` step by step (see the module docstring):
    ``to_uint8(restore(oval * warp(fade(decode(appearance))) + (1 - oval) * backdrop))``.
    Shapes and appearances are keyed by their exact bytes, so coalitions
    that share them share the work, whichever factors determine them.
    """

    def __init__(self, backbone: "MorphableBackbone", factors: Sequence[Factors],
                 executor: Executor | None = None) -> None:
        from ..backbones.morphable.shape import full_points

        self._bb = bb = backbone
        s = bb.image_size
        latents = [bb.compose(f) for f in factors]  # validates every coalition's latent
        points = [bb._neutral_points(lat) for lat in latents]
        coeffs = [bb._appearance(lat) for lat in latents]
        shape_keys = [_key(p) for p in points]
        app_keys = [_key(*(c[name] for name in sorted(c))) for c in coeffs]
        self._mean_frame = full_points(bb.mean_points(), s)
        self._backdrop = bb._backdrop()
        app = bb._require_app()
        self._mean_texture = app.decode(bb._zero_appearance()) if bb._core() is not None else None
        shapes = dict(zip(shape_keys, points))
        appearances = dict(zip(app_keys, coeffs))
        made_shapes = map_in(executor, self._shape, list(shapes.values()))
        made_apps = map_in(executor, self._appearance, list(appearances.values()))
        by_shape = dict(zip(shapes, made_shapes))
        by_app = dict(zip(appearances, made_apps))
        self._items = [(by_shape[sk], by_app[ak]) for sk, ak in zip(shape_keys, app_keys)]

    def _shape(self, pts: np.ndarray) -> _Shape:
        from ..backbones.morphable.shape import full_points
        from ..backbones.morphable.warp import triangle_maps

        bb, s = self._bb, self._bb.image_size
        map_x, map_y = triangle_maps(self._mean_frame, full_points(pts, s), bb._triangles, (s, s))
        oval = bb._oval(pts)
        return _Shape(map_x, map_y, oval, bb._skin(pts, oval), (1.0 - oval) * self._backdrop)

    def _appearance(self, coeffs: Mapping[str, np.ndarray]) -> _Appearance:
        texture = self._bb._require_app().decode(coeffs)
        core = self._bb._core()
        if core is not None:  # MorphableBackbone._fade, with the mean texture decoded once
            texture = self._mean_texture + core * (texture - self._mean_texture)
        texture = self._bb._close_lips(texture)  # the rest of MorphableBackbone._fade
        return _Appearance(texture, float(texture.min()), float(texture.max()))

    def __len__(self) -> int:
        return len(self._items)

    def image(self, i: int) -> np.ndarray:
        import cv2

        from ..backbones.morphable.blend import to_uint8

        shape, app = self._items[i]
        face = cv2.remap(app.texture, shape.map_x, shape.map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        face = np.clip(face, app.lo, app.hi)  # warp_image's cubic-overshoot clip
        return to_uint8(self._bb._restore(shape.oval * face + shape.backdrop, shape.oval, shape.skin))


def shares_render_stages(backbone: Backbone) -> bool:
    """Whether ``NeutralFrameImages`` reproduces this backbone's render (morphable, neutral frame)."""
    from ..backbones.morphable import MorphableBackbone

    return type(backbone) is MorphableBackbone and backbone.config.frame == "neutral"


def coalition_images(backbone: Backbone, factors: Sequence[Factors], executor: Executor | None = None,
                     batch_size: int = 16) -> CoalitionImages:
    """Every coalition's image: staged and shared where the backbone allows it, else synthesized."""
    if shares_render_stages(backbone):
        return NeutralFrameImages(backbone, factors, executor)
    return SynthesizedImages(backbone, factors, batch_size)

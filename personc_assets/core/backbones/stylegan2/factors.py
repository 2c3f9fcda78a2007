"""Identity factors of a W+ latent: layer groups (as data) and mirror-pair symmetry.

A face is held as the pair (``w_plus`` of the face, ``w_plus_mirror`` of its
left-right mirror image), each ``[num_ws, w_dim]``. The pair splits into a
symmetric half ``(w + w_m) / 2`` and an antisymmetric half ``(w - w_m) / 2``:

* ``geometry``       — symmetric half on the coarse layers (4–8 px: pose, head and face shape)
* ``local_features`` — symmetric half on the middle layers (16–32 px: eyes, nose, mouth)
* ``texture``        — symmetric half on the fine layers (≥ 64 px: skin, colour, micro-texture)
* ``symmetry``       — the antisymmetric half on every layer (how the face differs from its mirror)

Each factor is a flat ``float32`` vector, so factors mix linearly, and
``compose(decompose(pair)) == pair`` up to float rounding.

Which w index belongs to which band follows the block that first consumes
it: in StyleGAN2 a ``torgb`` shares its w with the next block's first
convolution, so for a 1024 px model (18 ws) the groups are ws 0–3, 4–7 and
8–17, StyleGAN's classic coarse/middle/fine split. Models too small for the
bands (below 64 px) split their resolutions into three contiguous thirds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..base import FactorRoles
from .network import GeneratorConfig

#: (factor, lowest resolution, highest resolution or None) — the symmetric-half groups
GROUP_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("geometry", 4, 8),
    ("local_features", 16, 32),
    ("texture", 64, None),
)
SYMMETRY = "symmetry"
#: every factor this backbone produces, in report order
STYLEGAN2_FACTOR_NAMES: tuple[str, ...] = tuple(name for name, _, _ in GROUP_BANDS) + (SYMMETRY,)
#: pose and head shape, and the mirror asymmetry, are shape; skin and colour are where mismatches show
STYLEGAN2_FACTOR_ROLES = FactorRoles(shape=("geometry", SYMMETRY), sensitive=("texture",), appearance=("texture",))

W_PLUS = "w_plus"
W_PLUS_MIRROR = "w_plus_mirror"


def ws_resolutions(cfg: GeneratorConfig) -> tuple[int, ...]:
    """Resolution of the block that first consumes each w index ``[num_ws]``."""
    out: list[int | None] = [None] * cfg.num_ws
    w_idx = 0
    last = cfg.img_resolution
    for res in cfg.block_resolutions:
        num_conv = 1 if res == 4 else 2
        num_torgb = 1 if (cfg.synthesis.architecture == "skip" or res == last) else 0
        for i in range(w_idx, w_idx + num_conv + num_torgb):
            if out[i] is None:
                out[i] = res
        w_idx += num_conv
    assert all(r is not None for r in out)
    return tuple(int(r) for r in out)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LayerGroups:
    """Which w indices each symmetric factor takes, for one generator shape."""

    img_resolution: int
    num_ws: int
    w_dim: int
    ws_resolution: tuple[int, ...]                 # [num_ws]
    groups: Mapping[str, tuple[int, ...]]          # factor → w indices (disjoint, covering all)
    rule: str                                      # "bands" or "thirds"

    def factor_sizes(self) -> dict[str, int]:
        sizes = {name: len(idx) * self.w_dim for name, idx in self.groups.items()}
        sizes[SYMMETRY] = self.num_ws * self.w_dim
        return sizes

    def as_dict(self) -> dict[str, Any]:
        """JSON-able description (for run metadata and the Dagster UI)."""
        return {"img_resolution": self.img_resolution, "num_ws": self.num_ws, "w_dim": self.w_dim,
                "rule": self.rule, "groups": {k: list(v) for k, v in self.groups.items()},
                "group_resolutions": {k: sorted({self.ws_resolution[i] for i in v})
                                      for k, v in self.groups.items()},
                "symmetry": "antisymmetric half of (face, mirror) on all ws"}


def layer_groups(cfg: GeneratorConfig) -> LayerGroups:
    """Resolution-aware layer groups for ``cfg`` (``GROUP_BANDS``, else thirds)."""
    res_of = ws_resolutions(cfg)
    levels = list(cfg.block_resolutions)
    by_band = {name: [r for r in levels if r >= lo and (hi is None or r <= hi)] for name, lo, hi in GROUP_BANDS}
    rule = "bands"
    if any(not v for v in by_band.values()):
        if len(levels) < len(GROUP_BANDS):
            raise ValueError(f"a {cfg.img_resolution} px generator has only {len(levels)} resolutions; "
                             f"at least {len(GROUP_BANDS)} are needed for the factor groups")
        rule = "thirds"
        by_band = {name: [int(r) for r in part]
                   for (name, _, _), part in zip(GROUP_BANDS, np.array_split(levels, len(GROUP_BANDS)))}
    groups = {name: tuple(i for i, r in enumerate(res_of) if r in set(band)) for name, band in by_band.items()}
    return LayerGroups(cfg.img_resolution, cfg.num_ws, cfg.w_dim, res_of, groups, rule)


def _check_pair(latent: Mapping[str, np.ndarray], lg: LayerGroups) -> tuple[np.ndarray, np.ndarray]:
    shape = (lg.num_ws, lg.w_dim)
    out = []
    for key in (W_PLUS, W_PLUS_MIRROR):
        if key not in latent:
            raise KeyError(f"a StyleGAN2 latent needs {W_PLUS!r} and {W_PLUS_MIRROR!r}; got {sorted(latent)}")
        arr = np.asarray(latent[key], dtype=np.float32)
        if arr.shape != shape or not np.all(np.isfinite(arr)):
            raise ValueError(f"latent[{key!r}] must be finite {list(shape)}, got {arr.shape}")
        out.append(arr)
    return out[0], out[1]


def decompose_w_plus(latent: Mapping[str, np.ndarray], lg: LayerGroups) -> dict[str, np.ndarray]:
    """``{"w_plus", "w_plus_mirror"}`` (each ``[num_ws, w_dim]``) → flat float32 factors."""
    w, wm = _check_pair(latent, lg)
    sym = (w + wm) * 0.5
    anti = (w - wm) * 0.5
    factors = {name: np.ascontiguousarray(sym[list(idx)].reshape(-1), dtype=np.float32)
               for name, idx in lg.groups.items()}
    factors[SYMMETRY] = np.ascontiguousarray(anti.reshape(-1), dtype=np.float32)
    return factors


def compose_w_plus(factors: Mapping[str, np.ndarray], lg: LayerGroups) -> dict[str, np.ndarray]:
    """Flat factors → ``{"w_plus", "w_plus_mirror"}``; ``_``-prefixed entries are ignored."""
    names = [k for k in factors if not k.startswith("_")]
    expected = set(lg.groups) | {SYMMETRY}
    if set(names) != expected:
        raise KeyError(f"StyleGAN2 factors must be exactly {sorted(expected)}; got {sorted(names)}")
    sizes = lg.factor_sizes()
    sym = np.zeros((lg.num_ws, lg.w_dim), np.float32)
    for name, idx in lg.groups.items():
        vec = np.asarray(factors[name], dtype=np.float32)
        if vec.shape != (sizes[name],):
            raise ValueError(f"factor {name!r} must have {sizes[name]} values, got {vec.shape}")
        sym[list(idx)] = vec.reshape(len(idx), lg.w_dim)
    anti = np.asarray(factors[SYMMETRY], dtype=np.float32)
    if anti.shape != (sizes[SYMMETRY],):
        raise ValueError(f"factor {SYMMETRY!r} must have {sizes[SYMMETRY]} values, got {anti.shape}")
    anti = anti.reshape(lg.num_ws, lg.w_dim)
    return {W_PLUS: sym + anti, W_PLUS_MIRROR: sym - anti}


def mix_groups(latents: list[Mapping[str, np.ndarray]], donor_of: Mapping[str, int],
               lg: LayerGroups) -> dict[str, np.ndarray]:
    """Per-group style mixing: each factor taken whole from ``latents[donor_of[factor]]``."""
    decomposed = [decompose_w_plus(lat, lg) for lat in latents]
    return compose_w_plus({name: decomposed[donor_of[name]][name] for name in STYLEGAN2_FACTOR_NAMES}, lg)


"""The StyleGAN2-ADA backbone: the ``Backbone`` protocol over a pretrained generator.

* ``project``: FFHQ-align each source (from PersonC's aligned crop and its
  landmarks), then optimise W+ for the face and for its mirror image.
* ``decompose``/``compose``: the layer-group factors of ``factors.py``.
* ``synthesize``: W+ → uint8 images in the FFHQ frame.
* ``sample_prior``: synthetic sources from the prior (z → w with truncation),
  so a run needs no photos.

Registered as ``BACKBONES.create("stylegan2", weights=..., device=...)``.
Generation and projection are GPU work: the Dagster layer runs the steps that
call them in its GPU pool (``defs/gpu.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from ...encoders.base import Encoder, MissingWeightsError
from ...types import Factors, FaceObservation, Latent, SourceFace
from ..base import BACKBONES, BackboneError, FactorRoles, Projection
from .factors import (STYLEGAN2_FACTOR_NAMES, STYLEGAN2_FACTOR_ROLES, W_PLUS, W_PLUS_MIRROR, LayerGroups,
                      compose_w_plus, decompose_w_plus, layer_groups)
from .loading import Snapshot, read_snapshot, resolve_device
from .network import Generator
from .ops import MODCONV_IMPLS, ModconvImpl
from .projection import (IDENTITY_LOSSES, IdentityFn, ProjectionSettings, ffhq_align, project_w_plus,
                         tensor_to_images)

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda"]
#: "fp32" everywhere, or "snapshot": the blocks the snapshot marks as fp16 run in fp16 (CUDA only)
Precision = Literal["fp32", "snapshot"]

#: file names looked for in the weights folder when no file is given, first match wins
DEFAULT_WEIGHT_NAMES: tuple[str, ...] = ("stylegan2-ffhq.safetensors", "ffhq.safetensors", "ffhq.pkl",
                                         "stylegan2-ffhq-config-f.pt")
OFFICIAL_FFHQ_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/ffhq.pkl"


@lru_cache(maxsize=2)
def _cached_snapshot(path: str, mtime_ns: int, size: int) -> tuple[Snapshot, str]:
    snap = read_snapshot(Path(path))
    return snap, snap.weights_hash()


def load_snapshot(path: Path) -> tuple[Snapshot, str]:
    """``read_snapshot`` and the weights hash, cached by path, mtime and size."""
    st = Path(path).stat()
    return _cached_snapshot(str(Path(path).resolve()), st.st_mtime_ns, st.st_size)


def find_weights(weights_dir: Path) -> Path:
    """The first of ``DEFAULT_WEIGHT_NAMES`` present in ``weights_dir``."""
    for name in DEFAULT_WEIGHT_NAMES:
        if (Path(weights_dir) / name).is_file():
            return Path(weights_dir) / name
    raise MissingWeightsError(
        "StyleGAN2-ADA FFHQ generator", Path(weights_dir) / "ffhq.pkl",
        f"download the official snapshot from {OFFICIAL_FFHQ_URL} (NVIDIA Source Code License-NC: "
        "research or evaluation use only) into that folder, or pass weights=<file>; "
        "`personc convert weights/ffhq.pkl weights/ffhq.safetensors` makes later loads faster "
        "(see docs/stylegan2.md)")


class StyleGAN2Backbone:
    """A pretrained StyleGAN2 generator behind the ``Backbone`` protocol.

    Latents are ``{"w_plus": [num_ws, w_dim], "w_plus_mirror": [num_ws, w_dim]}``
    float32: the W+ of the face and of its left-right mirror image.
    """

    #: the layers that are no identity factor (hair, pose, light, background) come from the context
    shows_context = True

    name = "stylegan2"
    factor_names: tuple[str, ...] = STYLEGAN2_FACTOR_NAMES
    factor_roles: FactorRoles = STYLEGAN2_FACTOR_ROLES

    def __init__(self, generator: Generator, *, weights_hash: str, device: torch.device | str = "cpu",
                 projection: ProjectionSettings = ProjectionSettings(), truncation_psi: float = 0.7,
                 truncation_cutoff: int | None = None, identity_fn: IdentityFn | None = None,
                 identity_encoder: Encoder | None = None, impl: ModconvImpl = "fast",
                 precision: Precision = "fp32", output_size: int | None = None,
                 batch_size: int = 8, source: str = "") -> None:
        if impl not in MODCONV_IMPLS:
            raise ValueError(f"unknown impl {impl!r}; known: {', '.join(MODCONV_IMPLS)}")
        if precision not in ("fp32", "snapshot"):
            raise ValueError(f"unknown precision {precision!r}; known: fp32, snapshot")
        self.device = torch.device(device)
        self.g = generator.to(self.device).eval().requires_grad_(False)
        if self.g.c_dim:
            raise BackboneError("conditional generators need labels, which the pipeline has none of; "
                                "use an unconditional snapshot (e.g. FFHQ)")
        if not self.g.mapping.has_w_avg:
            raise BackboneError("the generator has no w_avg (needed for the population mean and projection)")
        self._weights_hash = weights_hash
        self.projection = projection
        self.truncation_psi, self.truncation_cutoff = truncation_psi, truncation_cutoff
        self.identity_fn, self.identity_encoder = identity_fn, identity_encoder
        self.impl, self.batch_size, self.source = impl, batch_size, source
        self.force_fp32 = precision == "fp32" or self.device.type != "cuda"
        if precision == "snapshot" and self.device.type != "cuda":
            log.info("fp16 blocks run in fp32 on the CPU")
        self.resolution = self.g.img_resolution
        self.image_size = int(output_size or self.resolution)
        self.layer_groups: LayerGroups = layer_groups(self.g.cfg)
        self._lock = threading.Lock()

    @classmethod
    def from_weights(cls, path: Path | str, device: Device = "auto", **kwargs: Any) -> "StyleGAN2Backbone":
        snap, digest = load_snapshot(Path(path))
        dev = resolve_device(device)
        log.info("StyleGAN2 %d px from %s (%s) on %s", snap.config.img_resolution, path, snap.source_format, dev)
        return cls(snap.build(dev), weights_hash=digest, device=dev,
                   source=f"{Path(path).name} ({snap.source_format})", **kwargs)

    # -- lifecycle ---------------------------------------------------------

    def fit(self, faces: Sequence[SourceFace]) -> None:
        """Nothing to fit: the generator is pretrained."""
        log.debug("stylegan2: fit() ignores %d faces (pretrained model)", len(faces))

    def state_hash(self) -> str:
        """sha256 of the generator config and weights (the same for every file format)."""
        return self._weights_hash

    def save_state(self, path: Path) -> None:
        """Records which weights this state belongs to (a pretrained model fits nothing)."""
        from ...atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps({"backbone": self.name, "weights_hash": self._weights_hash,
                                                  "source": self.source}, indent=2) + "\n")

    def load_state(self, path: Path) -> None:
        """Checks that the saved state was made with these same weights."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise BackboneError(f"cannot read StyleGAN2 backbone state {path}: {exc}") from None
        if data.get("backbone") != self.name or data.get("weights_hash") != self._weights_hash:
            raise BackboneError(f"{path} was saved by backbone {data.get('backbone')!r} with weights "
                                f"{str(data.get('weights_hash'))[:12]}…, but these weights are "
                                f"{self._weights_hash[:12]}…; rerun the step with the same weights file")

    # -- latents -----------------------------------------------------------

    def project(self, faces: Sequence[SourceFace]) -> list[Projection]:
        """Project each face and its mirror into W+ (see ``projection.project_w_plus``)."""
        if not faces:
            return []
        r = self.resolution
        aligned = [ffhq_align(f.aligned, f.landmarks, size=r) for f in faces]
        targets = np.stack([a.image for a in aligned] + [np.ascontiguousarray(a.image[:, ::-1]) for a in aligned])
        with self._lock:
            res = project_w_plus(self.g, targets, self.projection, identity_fn=self.identity_fn, impl=self.impl)
        n = len(faces)
        enc_sims = self._encoder_similarity(faces, aligned, res.images[:n])
        out = []
        for i in range(n):
            extras = {"reconstruction_error_mirror": float(res.reconstruction_error[n + i]),
                      "projection_steps": float(self.projection.steps),
                      "projection_seconds": res.seconds / n}
            if np.isfinite(res.identity_similarity[i]):
                extras["identity_similarity"] = float(res.identity_similarity[i])
            if enc_sims is not None:
                extras[f"identity_similarity_{self.identity_encoder.name}"] = float(enc_sims[i])
            out.append(Projection(latent={W_PLUS: res.w_plus[i], W_PLUS_MIRROR: res.w_plus[n + i]},
                                  reconstruction_error=float(res.reconstruction_error[i]), extras=extras))
        return out

    def _encoder_similarity(self, faces, aligned, recon) -> np.ndarray | None:
        """Cosine of the reporting encoder between each source and its reconstruction.

        The reconstruction's landmarks are taken to be the source's landmarks
        mapped into the FFHQ frame (approximate: no re-detection).
        """
        if self.identity_encoder is None:
            return None

        def obs(image: np.ndarray, lm: np.ndarray) -> FaceObservation:
            x0, y0 = np.floor(lm.min(axis=0)).astype(int)
            x1, y1 = np.ceil(lm.max(axis=0)).astype(int)
            return FaceObservation(image=image, landmarks=lm, box=(int(x0), int(y0), int(x1), int(y1)))

        src = self.identity_encoder.embed([obs(f.aligned, f.landmarks) for f in faces])
        rec = self.identity_encoder.embed([obs(np.ascontiguousarray(img), a.landmarks)
                                           for img, a in zip(recon, aligned)])
        return np.sum(src * rec, axis=1)

    def decompose(self, latent: Latent) -> dict[str, np.ndarray]:
        return decompose_w_plus(latent, self.layer_groups)

    def compose(self, factors: Factors) -> dict[str, np.ndarray]:
        return compose_w_plus(factors, self.layer_groups)

    def population_mean(self) -> dict[str, np.ndarray]:
        """Factors of ``w_avg`` on every layer (a symmetric face: its symmetry factor is 0)."""
        w = np.tile(self.g.mapping.w_avg.detach().cpu().numpy().astype(np.float32), (self.g.num_ws, 1))
        return self.decompose({W_PLUS: w, W_PLUS_MIRROR: w.copy()})

    # -- images ------------------------------------------------------------

    def synthesize_w(self, w_plus: np.ndarray) -> np.ndarray:
        """``w_plus [N, num_ws, w_dim]`` → uint8 ``[N, S, S, 3]`` (S = ``image_size``)."""
        w_plus = np.asarray(w_plus, dtype=np.float32)
        shape = (self.g.num_ws, self.g.w_dim)
        if w_plus.ndim != 3 or w_plus.shape[1:] != shape or not np.all(np.isfinite(w_plus)):
            raise ValueError(f"w_plus must be finite [N, {shape[0]}, {shape[1]}], got {w_plus.shape}")
        out = []
        with self._lock, torch.no_grad():
            for i in range(0, len(w_plus), self.batch_size):
                ws = torch.from_numpy(w_plus[i:i + self.batch_size]).to(self.device)
                img = self.g.synthesis(ws, noise_mode="const", impl=self.impl, force_fp32=self.force_fp32)
                if self.image_size != self.resolution:
                    img = torch.nn.functional.interpolate(img, size=self.image_size, mode="area"
                                                          if self.image_size < self.resolution else "bicubic")
                out.append(tensor_to_images(img))
        return np.concatenate(out) if out else np.zeros((0, self.image_size, self.image_size, 3), np.uint8)

    def synthesize(self, latents: Sequence[Latent]) -> list[np.ndarray]:
        """Images of ``latent["w_plus"]`` (the face, not its mirror), FFHQ-aligned."""
        if not latents:
            return []
        for lat in latents:
            if W_PLUS not in lat:
                raise KeyError(f"a StyleGAN2 latent needs {W_PLUS!r}; got {sorted(lat)}")
        return list(self.synthesize_w(np.stack([np.asarray(lat[W_PLUS], np.float32) for lat in latents])))

    def sample_w(self, n: int, seed: int = 0, psi: float | None = None) -> np.ndarray:
        """``n`` prior samples z ~ N(0, I) → W+ ``[n, num_ws, w_dim]`` with truncation ``psi``."""
        gen = torch.Generator().manual_seed(int(seed))
        z = torch.randn([n, self.g.z_dim], generator=gen).to(self.device)
        psi = self.truncation_psi if psi is None else psi
        with torch.no_grad():
            ws = self.g.mapping(z, None, truncation_psi=psi, truncation_cutoff=self.truncation_cutoff)
        return ws.cpu().numpy().astype(np.float32)

    def sample_prior(self, n: int, seed: int = 0, psi: float | None = None,
                     mirror_steps: int = 0) -> list[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Synthetic sources: ``n`` (latent, uint8 image) pairs drawn from the prior.

        With ``mirror_steps > 0`` the mirror latent is found by projecting the
        flipped image for that many steps (starting from the sample);
        otherwise it equals the sample, so the sample's ``symmetry`` factor is 0.
        """
        if n < 1:
            return []
        w = self.sample_w(n, seed, psi)
        images = self.synthesize_w(w)
        w_mirror = w.copy()
        if mirror_steps > 0:
            native = images if self.image_size == self.resolution else self._native(w)
            flipped = np.ascontiguousarray(native[:, :, ::-1])
            settings = dataclasses.replace(self.projection, steps=int(mirror_steps))
            with self._lock:
                w_mirror = project_w_plus(self.g, flipped, settings, identity_fn=self.identity_fn,
                                          impl=self.impl, w_init=w).w_plus
        return [({W_PLUS: w[i], W_PLUS_MIRROR: w_mirror[i]}, images[i]) for i in range(n)]

    def _native(self, w: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return tensor_to_images(self.g.synthesis(torch.from_numpy(w).to(self.device), impl=self.impl))

    def describe(self) -> dict[str, Any]:
        """JSON-able facts for run metadata: weights, size, groups, device."""
        return {"backbone": self.name, "source": self.source, "weights_hash": self._weights_hash,
                "resolution": self.resolution, "image_size": self.image_size, "num_ws": self.g.num_ws,
                "w_dim": self.g.w_dim, "device": str(self.device), "impl": self.impl,
                "fp32": self.force_fp32, "projection_steps": self.projection.steps,
                "truncation_psi": self.truncation_psi, "layer_groups": self.layer_groups.as_dict()}


@BACKBONES.register("stylegan2")
def create_stylegan2(weights: Path | str | None = None, device: Device = "auto",
                     projection_steps: int = 300, truncation_psi: float = 0.7,
                     weights_dir: Path | str = "weights", impl: ModconvImpl = "fast",
                     precision: Precision = "fp32", output_size: int | None = None,
                     projection_batch: int = 8, loss_resolution: int = 256, projection_lr: float = 0.05,
                     identity_weight: float = 0.5, identity_loss: str | None = None,
                     identity_encoder: Encoder | str | None = None,
                     **unknown: Any) -> StyleGAN2Backbone:
    """Factory of the ``stylegan2`` backbone.

    ``weights``: a ``.pkl``/``.pt``/``.safetensors`` file; ``None`` looks for
    ``DEFAULT_WEIGHT_NAMES`` in ``weights_dir`` (or ``$PERSONC_WEIGHTS_DIR``).
    ``device``: ``auto`` picks CUDA when available; the CPU always runs fp32.
    ``identity_loss``: the name of a differentiable identity embedding in
    ``IDENTITY_LOSSES``; projection then also minimises ``1 - cos`` between the
    reconstruction's and the target's embeddings (weighted by ``identity_weight``).
    ``identity_encoder``: an ``Encoder`` or a registered encoder name (JSON-friendly
    for run configs), used to report each reconstruction's identity similarity.
    """
    if unknown:
        raise TypeError(f"unknown stylegan2 backbone options {sorted(unknown)}; known: weights, device, "
                        "projection_steps, truncation_psi, weights_dir, impl, precision, output_size, "
                        "projection_batch, loss_resolution, projection_lr, identity_weight, identity_loss, "
                        "identity_encoder")
    folder = Path(os.environ.get("PERSONC_WEIGHTS_DIR", weights_dir))
    if weights is None:
        weights = find_weights(folder)
    elif not Path(weights).is_file():
        raise MissingWeightsError("StyleGAN2 generator", Path(weights),
                                  f"download {OFFICIAL_FFHQ_URL} or give the path of a converted file")
    if isinstance(identity_encoder, str):
        from ...encoders import ENCODERS

        identity_encoder = ENCODERS.create(identity_encoder)
    identity_fn = None
    if identity_loss is not None:
        identity_fn = IDENTITY_LOSSES.create(identity_loss, weights_dir=folder, device=resolve_device(device))
    settings = ProjectionSettings(steps=int(projection_steps), lr=projection_lr, identity_weight=identity_weight,
                                  loss_resolution=loss_resolution, batch_size=projection_batch)
    return StyleGAN2Backbone.from_weights(
        weights, device=device, projection=settings, truncation_psi=truncation_psi, impl=impl,
        precision=precision, output_size=output_size, identity_fn=identity_fn,
        identity_encoder=identity_encoder, batch_size=projection_batch)

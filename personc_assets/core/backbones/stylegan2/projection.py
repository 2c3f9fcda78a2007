"""FFHQ alignment and projection of aligned faces into W+.

``ffhq_align`` follows the recipe of NVlabs/ffhq-dataset's
``recreate_aligned_images`` (oriented crop from the eye and mouth landmarks,
shrink, crop, reflect-pad with blur, quad transform at a supersampled size,
Lanczos reduction) with Pillow's current resampling names.

``project_w_plus`` optimises one W+ latent per target image with Adam:
pixel loss (MSE in [-1, 1], at ``loss_resolution``), plus an identity loss
``1 - cos(id(synth), id(target))`` when a differentiable identity callable is
given (run configs name one registered in ``IDENTITY_LOSSES``), plus a small pull of the layers toward their common mean. Noise inputs
stay at their constant values (they are not part of the latent). No
perceptual (LPIPS/VGG) loss: no installable package ships its weights
without a download at run time.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ...registry import Registry
from ...types import check_image, check_landmarks
from .network import Generator
from .ops import ModconvImpl

log = logging.getLogger(__name__)

#: images ``[N, 3, H, W]`` in [-1, 1] → embeddings ``[N, D]``, differentiable
IdentityFn = Callable[[torch.Tensor], torch.Tensor]

#: Differentiable identity embeddings for projection's identity loss, by name (the backbone
#: option ``identity_loss``): ``factory(weights_dir=Path, device=torch.device) -> IdentityFn``.
IDENTITY_LOSSES: Registry[IdentityFn] = Registry("identity loss model")


# ---------------------------------------------------------------------------
# FFHQ alignment


@dataclass(frozen=True)
class FFHQAlignment:
    """An FFHQ-aligned face: ``image [size, size, 3]``, the source ``quad [4, 2]``
    (corners in the source image: top-left, bottom-left, bottom-right, top-right)
    and the landmarks mapped into the aligned image ``[68, 2]``."""

    image: np.ndarray
    quad: np.ndarray
    landmarks: np.ndarray


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The oriented FFHQ crop square ``[4, 2]`` for dlib-68 ``landmarks``."""
    lm = check_landmarks(landmarks).astype(np.float64)
    eye_left = lm[36:42].mean(axis=0)
    eye_right = lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def ffhq_align(image: np.ndarray, landmarks68: np.ndarray, size: int = 1024,
               transform_size: int | None = None, enable_padding: bool = True) -> FFHQAlignment:
    """Align ``image [H, W, 3]`` (uint8 RGB) the way FFHQ was aligned.

    ``transform_size`` is the supersampled size of the quad transform (the
    recipe uses 4096 for 1024 px). Default: ``4 * size`` when the face is
    larger than ``size`` in the source (the supersampling anti-aliases the
    reduction), else ``size`` (enlarging gains nothing from it).
    """
    import scipy.ndimage
    from PIL import Image

    check_image(image)
    lm = check_landmarks(landmarks68)
    quad0 = ffhq_quad(lm)
    quad = quad0.copy()
    qsize = np.hypot(*(quad0[3] - quad0[0]))  # = 2 |x|
    transform_size = transform_size or (4 * size if qsize > size else size)
    img = Image.fromarray(image)

    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(float(img.size[0]) / shrink)), int(np.rint(float(img.size[1]) / shrink)))
        img = img.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink

    border = max(int(np.rint(qsize * 0.1)), 3)
    crop = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
            int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, img.size[0]), min(crop[3] + border, img.size[1]))
    if crop[2] - crop[0] < img.size[0] or crop[3] - crop[1] < img.size[1]:
        img = img.crop(crop)
        quad -= crop[0:2]

    pad = (int(np.floor(min(quad[:, 0]))), int(np.floor(min(quad[:, 1]))),
           int(np.ceil(max(quad[:, 0]))), int(np.ceil(max(quad[:, 1]))))
    pad = (max(-pad[0] + border, 0), max(-pad[1] + border, 0),
           max(pad[2] - img.size[0] + border, 0), max(pad[3] - img.size[1] + border, 0))
    if enable_padding and max(pad) > border - 4:
        pad = np.maximum(pad, int(np.rint(qsize * 0.3)))
        arr = np.pad(np.float32(img), ((pad[1], pad[3]), (pad[0], pad[2]), (0, 0)), "reflect")
        h, w, _ = arr.shape
        yy, xx, _ = np.ogrid[:h, :w, :1]
        mask = np.maximum(1.0 - np.minimum(np.float32(xx) / pad[0], np.float32(w - 1 - xx) / pad[2]),
                          1.0 - np.minimum(np.float32(yy) / pad[1], np.float32(h - 1 - yy) / pad[3]))
        blur = qsize * 0.02
        arr += (scipy.ndimage.gaussian_filter(arr, [blur, blur, 0]) - arr) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
        arr += (np.median(arr, axis=(0, 1)) - arr) * np.clip(mask, 0.0, 1.0)
        img = Image.fromarray(np.uint8(np.clip(np.rint(arr), 0, 255)), "RGB")
        quad += pad[:2]

    img = img.transform((transform_size, transform_size), Image.Transform.QUAD, (quad + 0.5).flatten(),
                        Image.Resampling.BILINEAR)
    if size < transform_size:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return FFHQAlignment(np.asarray(img, dtype=np.uint8), quad0.astype(np.float32),
                         landmarks_to_ffhq(lm, quad0, size))


def landmarks_to_ffhq(landmarks: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """Map points ``[K, 2]`` of the source image into the aligned ``size`` px image."""
    pts = np.asarray(landmarks, np.float64) + 0.5          # pixel centres → continuous coordinates
    q = np.asarray(quad, np.float64) + 0.5
    ex, ey = q[3] - q[0], q[1] - q[0]                      # the quad's x and y edges
    rel = pts - q[0]
    u = rel @ ex / (ex @ ex)
    v = rel @ ey / (ey @ ey)
    return (np.stack([u, v], axis=1) * size - 0.5).astype(np.float32)


# ---------------------------------------------------------------------------
# Projection


@dataclass(frozen=True)
class ProjectionSettings:
    steps: int = 300                 # Adam steps per batch
    lr: float = 0.05                 # peak learning rate
    lr_rampup: float = 0.05          # fraction of steps to ramp the rate up
    lr_rampdown: float = 0.25        # fraction of steps to cosine-ramp it down
    pixel_weight: float = 1.0
    identity_weight: float = 0.5     # used only with an identity callable
    layer_reg: float = 0.01          # pull of each w toward the mean of its W+ (mean square; keeps it near W)
    loss_resolution: int = 256       # images are compared at most at this size
    batch_size: int = 8              # images optimised together

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.batch_size < 1 or self.loss_resolution < 8:
            raise ValueError(f"invalid projection settings: {self}")


@dataclass(frozen=True)
class ProjectionResult:
    """``w_plus [N, num_ws, w_dim]``, reconstructions ``images [N, R, R, 3]`` uint8,
    ``reconstruction_error [N]`` (mean |synth - target| in [0, 1]),
    ``identity_similarity [N]`` (NaN without an identity callable), ``loss_history [steps]``."""

    w_plus: np.ndarray
    images: np.ndarray
    reconstruction_error: np.ndarray
    identity_similarity: np.ndarray
    loss_history: np.ndarray
    seconds: float


def images_to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` → float ``[N, 3, H, W]`` in [-1, 1]."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[3] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {arr.dtype} {arr.shape}")
    return torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).to(torch.float32) / 127.5 - 1


def tensor_to_images(x: torch.Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` in about [-1, 1] → uint8 ``[N, H, W, 3]`` (the official conversion)."""
    x = (x.detach() * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, size) if x.shape[-1] > size else x


def _learning_rate(settings: ProjectionSettings, step: int) -> float:
    t = step / max(settings.steps, 1)
    ramp = min(1.0, (1.0 - t) / settings.lr_rampdown) if settings.lr_rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(max(ramp, 0.0) * math.pi)
    if settings.lr_rampup > 0:
        ramp *= min(1.0, t / settings.lr_rampup)
    return settings.lr * max(ramp, 0.01)


def project_w_plus(g: Generator, targets: np.ndarray, settings: ProjectionSettings = ProjectionSettings(),
                   identity_fn: IdentityFn | None = None, impl: ModconvImpl = "fast",
                   w_init: np.ndarray | None = None) -> ProjectionResult:
    """Project aligned ``targets`` (uint8 ``[N, R, R, 3]``, R = the generator's size) into W+.

    ``w_init [N, num_ws, w_dim]`` starts the search (default: ``w_avg`` on every layer).
    """
    device = next(g.parameters()).device
    n, r = len(targets), g.img_resolution
    target = images_to_tensor(targets, device)
    if target.shape[2:] != (r, r):
        raise ValueError(f"targets must be {r}x{r} (the generator's resolution), got {tuple(target.shape[2:])}")
    if not g.mapping.has_w_avg and w_init is None:
        raise ValueError("this generator has no w_avg; pass w_init")
    loss_size = min(settings.loss_resolution, r)
    t0 = time.perf_counter()
    out_w, out_img, out_id, history = [], [], [], np.zeros(settings.steps, np.float64)
    for start in range(0, n, settings.batch_size):
        tgt = target[start:start + settings.batch_size]
        b = tgt.shape[0]
        if w_init is not None:
            w0 = torch.as_tensor(np.asarray(w_init[start:start + b]), dtype=torch.float32, device=device)
        else:
            w0 = g.mapping.w_avg.detach().reshape(1, 1, -1).repeat(b, g.num_ws, 1)
        w = w0.clone().requires_grad_(True)
        opt = torch.optim.Adam([w], lr=settings.lr, betas=(0.9, 0.999))
        tgt_small = _downsample(tgt, loss_size)
        tgt_id = F.normalize(identity_fn(tgt).detach(), dim=1) if identity_fn is not None else None
        for step in range(settings.steps):
            for group in opt.param_groups:
                group["lr"] = _learning_rate(settings, step)
            synth = g.synthesis(w, noise_mode="const", impl=impl)
            loss = settings.pixel_weight * (_downsample(synth, loss_size) - tgt_small).square().mean(dim=[1, 2, 3])
            if tgt_id is not None and settings.identity_weight > 0:
                emb = F.normalize(identity_fn(synth), dim=1)
                loss = loss + settings.identity_weight * (1 - (emb * tgt_id).sum(dim=1))
            if settings.layer_reg > 0:
                loss = loss + settings.layer_reg * (w - w.mean(dim=1, keepdim=True)).square().mean(dim=[1, 2])
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            history[step] += float(loss.detach().sum()) / n
        with torch.no_grad():
            synth = g.synthesis(w, noise_mode="const", impl=impl)
            out_img.append(tensor_to_images(synth))
            if tgt_id is not None:
                out_id.append((F.normalize(identity_fn(synth), dim=1) * tgt_id).sum(dim=1).cpu().numpy())
            else:
                out_id.append(np.full(b, np.nan, np.float32))
        out_w.append(w.detach().cpu().numpy())
    images = np.concatenate(out_img) if out_img else np.zeros((0, r, r, 3), np.uint8)
    error = np.abs(images.astype(np.float32) - np.asarray(targets, np.float32)).mean(axis=(1, 2, 3)) / 255
    seconds = time.perf_counter() - t0
    log.info("projected %d image(s) at %d px in %.1f s (%d steps)", n, r, seconds, settings.steps)
    return ProjectionResult(
        w_plus=np.concatenate(out_w).astype(np.float32) if out_w else np.zeros((0, g.num_ws, g.w_dim), np.float32),
        images=images, reconstruction_error=error.astype(np.float32),
        identity_similarity=np.concatenate(out_id).astype(np.float32) if out_id else np.zeros(0, np.float32),
        loss_history=history, seconds=seconds)

"""The novelty step: the smallest move in a face model's appearance space that
takes a mixed face below the guard's threshold, with a margin.

A recipe mixes factors of real people; a coherent mix lies near the sources'
centre, where a face-recognition model finds it "the same person" as several
of them (``docs/novelty.md``). Breaking the face would also lower the score,
so instead the step moves the face inside the backbone's low-dimensional
appearance model (texture and eye, nose and mouth region modes, in units of
each mode's standard deviation over the sources), where every point is a
plausible face of that model, toward identities that no source has:

    minimise   softmax_i,v cos(E(v(chip(base + J dz))), s_i)  +  prior * |dz|^2
               + detail * relu(1 - D(dz) / D(0))^2  +  marks * mean relu(|L(dz) - L(0)| / l - 1)^2
               + floors * sum_g relu(1 - G_g(dz) / ((1 + floor_margin) * f_g))^2

over ``dz`` with Adam, where ``E`` is dlib's ResNet (the guard's default
encoder, rebuilt in PyTorch from dlib's own weights), ``s_i`` are the source
embeddings (and the faces this run already released), ``v`` is the chip itself and its
mirror image, optionally also the chip of the image softened by a mild blur and its mirror
(``blur``; the other benign changes are left to the guard, and ``margin`` leaves room for
them), the prior keeps the face near the recipe's mix, and
``D`` — the fine detail of the face — may not fall: a likeness lowered by
blurring is a broken face, not a new one; and no pixel's grey level ``L`` in the face may move
more than ``l`` from the mix's: a few strong local marks (white lids, a dark streak) lowered the
likeness cheaply, and a face with painted marks is not another face. ``G_g`` are the realism
gate's own detail scores of the render (the face's sharpness, each feature's and the mouth's detail
relative to it) and ``f_g`` the gate's lower limits for those the config names (``DetailFloors``,
when given; by default the sharpness alone): a soft mix is lifted to the detail the gate accepts
instead of being rejected after the step. It stops as soon as every similarity is ``margin`` below tau and every
detail score is above its floor. The guard then judges the real render as
usual: the step is a proposal, never a verdict.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NoveltyConfig:
    """Knobs of the novelty step (defaults measured in ``docs/novelty.md``)."""

    #: stop when the soft maximum similarity is this far below tau
    margin: float = 0.03
    #: most Adam steps per candidate
    steps: int = 80
    #: Adam step size, in standard deviations of a mode
    learning_rate: float = 0.15
    #: weight of |dz|^2: stay near the recipe's mix (its factors stay recognisable, and
    #: the mix is a likely face of the model); a pull toward the mean face instead would
    #: smooth every face toward the same soft average
    prior: float = 0.0015
    #: weight of the detail term: the face's fine detail (band-pass energy of the chip)
    #: may not fall below the mix's — lowering the likeness by blurring is breaking the face
    detail: float = 1.0
    #: weight of the marks term: no pixel of the face may grow lighter or darker than the mix by
    #: more than ``mark_limit`` grey levels (chip, 0-255) — a white lid, a dark streak under the
    #: nose or a bright spot between the brows is a mark painted on the face, not another face
    #: (docs/novelty.md, "Marks")
    marks: float = 1.0
    mark_limit: float = 24.0
    #: check the mirror image too (the guard judges it; most misses were mirrors without it)
    mirror: bool = True
    #: also check the face softened by a Gaussian blur of this sigma in image pixels (0: not). The
    #: guard judges blurred views, but on the CPU the two extra chips cost more than they bought
    #: (docs/novelty.md, "Blur in the guard and in the step"), so it is off by default
    blur: float = 0.0
    #: temperature of the soft maximum over sources and variants
    sharpness: float = 60.0
    #: weight of the floors term: the realism gate's detail scores of the render stay
    #: ``floor_margin`` (a fraction) above the gate's lower limits (needs ``DetailFloors``); the
    #: step's bilinear render is already about 7% less sharp than the drawn one (docs/novelty.md)
    floors: float = 10.0
    floor_margin: float = 0.0
    #: which of the gate's detail scores the floors term keeps up (``DetailFloors.SCORES``)
    floor_scores: tuple[str, ...] = ("sharpness",)

    def __post_init__(self) -> None:
        if not 0.0 <= self.margin < 0.5:
            raise ValueError(f"margin must be in [0, 0.5), got {self.margin}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.marks < 0 or self.mark_limit <= 0:
            raise ValueError(f"marks must be >= 0 and mark_limit > 0 grey levels, got {self.marks}, {self.mark_limit}")
        if not 0.0 <= self.blur <= 5.0:
            raise ValueError(f"blur must be in [0, 5] pixels, got {self.blur}")
        object.__setattr__(self, "floor_scores", tuple(self.floor_scores))
        unknown = set(self.floor_scores) - set(DetailFloors.SCORES)
        if unknown:
            raise ValueError(f"floor_scores must be among {DetailFloors.SCORES}, got {sorted(unknown)}")
        if self.floors < 0 or not 0.0 <= self.floor_margin < 1.0:
            raise ValueError(f"floors must be >= 0 and floor_margin in [0, 1), got {self.floors}, {self.floor_margin}")
        if self.learning_rate <= 0 or self.prior < 0 or self.sharpness <= 0 or self.detail < 0:
            raise ValueError("learning_rate and sharpness must be > 0 and prior >= 0, got "
                             f"{self.learning_rate}, {self.sharpness}, {self.prior}")


@dataclass(frozen=True)
class DetailFloors:
    """The realism gate's lower limits on a face's detail (``RealismThresholds.min_sharpness``,
    ``min_detail_ratio`` and ``min_mouth_detail``) that the step keeps the render above; None: not
    kept (the gate still judges it)."""

    SCORES = ("sharpness", "detail_ratio", "mouth_detail")

    sharpness: float | None
    detail_ratio: float | None
    mouth_detail: float | None

    @classmethod
    def of(cls, thresholds, scores: Sequence[str] = SCORES) -> "DetailFloors":
        """The floors of ``RealismThresholds`` for the named ``scores`` (others None)."""
        return cls(*(getattr(thresholds, "min_" + name) if name in scores else None for name in cls.SCORES))


@runtime_checkable
class LinearisedBackbone(Protocol):
    """A backbone whose render is affine in its appearance coefficients (see
    ``MorphableBackbone.linear_render``)."""

    image_size: int

    def compose(self, factors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def linear_render(self, latent: Mapping[str, np.ndarray]): ...

    def offset_appearance(self, factors: Mapping[str, np.ndarray], dz: np.ndarray) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class NoveltyResult:
    """The moved factors and how far the step went."""

    factors: dict[str, np.ndarray]
    start_similarity: float  # max cosine to the avoided faces before the move (linearised render)
    end_similarity: float    # ... after it
    steps: int
    shift: float             # |dz| in standard deviations
    reached: bool            # end_similarity <= tau - margin, and the detail floors (when given) are met


def chip_affine(landmarks: np.ndarray, size: int, padding: float) -> np.ndarray:
    """``[2, 3]`` matrix mapping chip pixels ``(x, y, 1)`` to image pixels: the
    geometry of ``dlib.get_face_chip`` for dlib-68 ``landmarks [68, 2]``."""
    import dlib

    lm = np.asarray(landmarks, np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must be [68, 2], got {lm.shape}")
    left, top = np.floor(lm.min(axis=0)).astype(int)
    right, bottom = np.ceil(lm.max(axis=0)).astype(int)
    shape = dlib.full_object_detection(dlib.rectangle(int(left), int(top), int(right), int(bottom)),
                                       [dlib.point(int(round(x)), int(round(y))) for x, y in lm])
    d = dlib.get_face_chip_details(shape, size=size, padding=padding)
    r = d.rect
    cx, cy = (r.left() + r.right()) / 2.0, (r.top() + r.bottom()) / 2.0
    rot = np.array([[np.cos(d.angle), -np.sin(d.angle)], [np.sin(d.angle), np.cos(d.angle)]])
    corners = np.array([[r.left(), r.top()], [r.right(), r.top()], [r.right(), r.bottom()]])
    image_pts = (corners - [cx, cy]) @ rot.T + [cx, cy]
    chip_pts = np.array([[0.0, 0.0], [d.cols - 1, 0.0], [d.cols - 1, d.rows - 1]])
    return np.linalg.solve(np.hstack([chip_pts, np.ones((3, 1))]), image_pts).T


def _linear_chips(lin, grid, blur: float):
    """The chip of a linearised render as ``offset [3 * C * C]`` and ``jacobian [3 * C * C, K]``
    (0-255 units), and the same for the render blurred by ``blur`` image pixels (``None`` when 0).
    Resampling and blur are linear, so both chips are affine in the appearance coefficients."""
    import torch
    from torch.nn import functional as F

    s, k = lin.base.shape[0], lin.jacobian.shape[1]
    with torch.no_grad():
        base = torch.from_numpy(lin.base).to(grid.device).permute(2, 0, 1)[None] * 255.0
        cols = torch.from_numpy(lin.jacobian).to(grid.device).T.reshape(k, s, s, 3).permute(0, 3, 1, 2) * 255.0

        def to_chip(b, c):
            offset = F.grid_sample(b, grid, mode="bilinear", align_corners=True).reshape(-1)
            jac = F.grid_sample(c, grid.expand(k, -1, -1, -1), mode="bilinear", align_corners=True)
            return offset, jac.reshape(k, -1).T.contiguous()

        chip0, jac = to_chip(base, cols)
        if blur <= 0:
            return chip0, jac, None, None
        return (chip0, jac) + to_chip(_gaussian(base, blur), _gaussian(cols, blur))


def _gaussian(images, sigma: float, radius: int | None = None):
    """``images [N, C, H, W]`` blurred as ``cv2.GaussianBlur(image, (0, 0), sigma)`` blurs a uint8
    image (kernel radius 3 sigma unless ``radius`` is given, mirrored borders), channel by channel."""
    import torch
    from torch.nn import functional as F

    r = max(1, int(round(3.0 * sigma))) if radius is None else radius
    c = images.shape[1]
    x = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = (g / g.sum()).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    out = F.conv2d(F.pad(images, (r, r, 0, 0), mode="reflect"), g, groups=c)
    return F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), g.transpose(-1, -2), groups=c)


def _float_radius(sigma: float) -> int:
    """The kernel radius ``cv2.GaussianBlur(image, (0, 0), sigma)`` uses on a float image (4 sigma)."""
    return (int(round(8.0 * sigma + 1.0)) | 1) // 2


def _face_ellipse(size: int, dtype, device):
    """``[C, C]`` 1 inside the central face ellipse of a chip, 0 outside."""
    import torch

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size, device=device),
                            torch.linspace(-1, 1, size, device=device), indexing="ij")
    return ((xx / 0.6) ** 2 + (yy / 0.75) ** 2 <= 1.0).to(dtype)


def _detail_energy(chip):
    """Mean squared band-pass (image minus a 1.5 px Gaussian blur) of a chip ``[1, 3, C, C]``'s
    grey levels inside the central face ellipse: what blurring takes away."""
    import torch
    from torch.nn import functional as F

    grey = chip.mean(dim=1, keepdim=True)
    x = torch.arange(-4, 5, dtype=chip.dtype, device=chip.device)
    g = torch.exp(-x ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    blur = F.conv2d(F.conv2d(F.pad(grey, (4, 4, 4, 4), mode="reflect"), g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    face = _face_ellipse(chip.shape[-1], chip.dtype, chip.device)
    return (((grey - blur) ** 2)[0, 0] * face).sum() / face.sum()


class _GateDetail:
    """The realism gate's detail scores (``realism.sharpness_scores``) of a linearised render,
    differentiable in ``dz``: band-pass (DoG 0.8 - 2.5 px) RMS of L* over the inner face, and
    each feature's RMS relative to it, on the face's bounding box of ``base + jacobian @ dz``."""

    SIGMAS = (0.8, 2.5)

    def __init__(self, lin, floors: DetailFloors, margin: float, device: str) -> None:
        import torch

        from . import realism

        s = lin.base.shape[0]
        frame = realism.face_frame(lin.landmarks, (0, 0, s, s))
        masks = {"inner": realism.face_regions(frame, (s, s)).inner, **realism.feature_masks(frame, (s, s))}
        ys, xs = np.nonzero(np.logical_or.reduce(list(masks.values())))
        pad = _float_radius(max(self.SIGMAS)) + 1  # the wider blur's reach
        y0, y1, x0, x1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, s), max(xs.min() - pad, 0), min(xs.max() + pad + 1, s)
        rows = (np.arange(s)[y0:y1, None] * s + np.arange(s)[None, x0:x1]).reshape(-1)
        pix = (rows[:, None] * 3 + np.arange(3)[None, :]).reshape(-1)
        self.shape = (y1 - y0, x1 - x0)
        self.base = torch.from_numpy(lin.base[y0:y1, x0:x1].reshape(-1).copy()).to(device)
        self.jac = torch.from_numpy(lin.jacobian[pix]).to(device)
        self.masks = {k: torch.from_numpy(m[y0:y1, x0:x1].astype(np.float32)).to(device) for k, m in masks.items()}
        kept = {"sharpness": floors.sharpness}
        kept.update({k: floors.detail_ratio for k in masks if k != "inner"})
        kept["mouth"] = max((f for f in (floors.detail_ratio, floors.mouth_detail) if f is not None), default=None)
        self.targets = {k: (1.0 + margin) * v for k, v in kept.items() if v is not None}

    def scores(self, dz):
        """Sharpness and each feature's detail ratio of the render at ``dz``."""
        import torch

        rgb = (self.base + self.jac @ dz).clamp(0.0, 1.0).view(*self.shape, 3)
        lin = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        y = lin @ torch.tensor([0.212671, 0.715160, 0.072169], dtype=rgb.dtype, device=rgb.device)
        light = torch.where(y > 0.008856, 116.0 * y.clamp_min(1e-6) ** (1.0 / 3.0) - 16.0, 903.3 * y)
        grey = light[None, None]
        band = (_gaussian(grey, self.SIGMAS[0], _float_radius(self.SIGMAS[0]))
                - _gaussian(grey, self.SIGMAS[1], _float_radius(self.SIGMAS[1])))[0, 0]

        def rms(mask):
            return torch.sqrt(((band ** 2) * mask).sum() / mask.sum().clamp_min(1.0) + 1e-12)

        face = rms(self.masks["inner"])
        out = {"sharpness": face}
        out.update({k: rms(m) / face for k, m in self.masks.items() if k != "inner"})
        return out

    def met(self, scores) -> bool:
        return all(float(scores[k].detach()) >= self.targets[k] for k in self.targets)

    def shortfall(self, scores):
        """Sum of squared relative shortfalls below the targets (0 when every score is above)."""
        import torch

        return sum(torch.relu(1.0 - scores[k] / t) ** 2 for k, t in self.targets.items())


@lru_cache(maxsize=2)
def _network(device: str):
    from .encoders.dlib.network import load_dlib_resnet

    net = load_dlib_resnet(fold=True).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class NoveltySearch:
    """Moves mixed faces away from ``avoid`` embeddings ``[N, 128]`` (unit dlib descriptors)."""

    def __init__(self, tau: float, config: NoveltyConfig | None = None, device: str = "auto",
                 floors: DetailFloors | None = None) -> None:
        import torch

        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {tau}")
        self.tau = float(tau)
        self.config = config or NoveltyConfig()
        self.floors = floors
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device

    def refine_many(self, backbone: LinearisedBackbone, mixes: Sequence[Mapping[str, np.ndarray]],
                    avoid: np.ndarray, workers: int | None = None) -> list[NoveltyResult]:
        """``refine`` of each mix, in order; on the CPU the mixes are spread over ``workers``
        threads (default: the CPUs this process may use), each running torch on its share of
        the cores, so that several small networks run side by side instead of one at a time
        on threads that wait for each other. Each result is the one ``refine`` gives alone."""
        import torch

        from .parallel import usable_cpus

        cpus = usable_cpus()
        workers = min(len(mixes), cpus if workers is None else max(1, int(workers)))
        if self.device != "cpu" or workers <= 1:
            return [self.refine(backbone, m, avoid) for m in mixes]
        # torch's CPU thread count is per thread (OpenMP): set it in each worker
        with ThreadPoolExecutor(workers, thread_name_prefix="novelty", initializer=torch.set_num_threads,
                                initargs=(max(1, cpus // workers),)) as pool:
            return list(pool.map(lambda m: self.refine(backbone, m, avoid), mixes))

    def refine(self, backbone: LinearisedBackbone, factors: Mapping[str, np.ndarray],
               avoid: np.ndarray) -> NoveltyResult:
        """Move ``factors``' appearance until the face is ``margin`` below tau against ``avoid``."""
        import torch
        from torch.nn import functional as F

        from .encoders.common import CHIP_PADDING, CHIP_SIZE

        if not isinstance(backbone, LinearisedBackbone):
            raise TypeError(f"the novelty step needs a backbone with linear_render/offset_appearance, "
                            f"got {type(backbone).__name__}")
        avoid = np.asarray(avoid, np.float32)
        if avoid.ndim != 2 or avoid.shape[1] != 128 or len(avoid) == 0:
            raise ValueError(f"avoid must be unit dlib descriptors shaped [N, 128] with N >= 1, got {avoid.shape}")
        cfg, dev = self.config, self.device
        lin = backbone.linear_render(backbone.compose(factors))
        s = backbone.image_size
        k = lin.jacobian.shape[1]
        grid = self._grid(chip_affine(lin.landmarks, CHIP_SIZE, CHIP_PADDING), s, CHIP_SIZE).to(dev)
        chip0, jac, blur0, blur_jac = _linear_chips(lin, grid, cfg.blur)
        targets = torch.from_numpy(avoid).to(dev)
        net = _network(dev)
        dz = torch.zeros(k, device=dev, requires_grad=True)
        opt = torch.optim.Adam([dz], lr=cfg.learning_rate)
        gate = (_GateDetail(lin, self.floors, cfg.floor_margin, dev)
                if self.floors is not None and cfg.floors > 0 else None)
        goal = self.tau - cfg.margin
        start = float("nan")
        best = ((True, float("inf")), torch.zeros_like(dz))  # (floors missed, similarity), dz
        step = 0
        for step in range(cfg.steps + 1):
            chip = (chip0 + jac @ dz).clamp(0.0, 255.0).view(1, 3, CHIP_SIZE, CHIP_SIZE)
            variants = chip
            if cfg.blur > 0:
                blurred = (blur0 + blur_jac @ dz).clamp(0.0, 255.0).view(1, 3, CHIP_SIZE, CHIP_SIZE)
                variants = torch.cat([chip, blurred])
            if cfg.mirror:
                variants = torch.cat([variants, variants.flip(-1)])
            emb = F.normalize(net(net.normalise(variants.permute(0, 2, 3, 1))), dim=1)
            energy = _detail_energy(chip)
            if step == 0:
                energy0 = energy.detach()
                grey0 = chip.detach().mean(dim=1)
                face = _face_ellipse(CHIP_SIZE, chip.dtype, chip.device)
            sims = emb @ targets.T
            worst = float(sims.detach().max())
            detail = gate.scores(dz) if gate is not None else None
            key = (detail is not None and not gate.met(detail), worst)
            if step == 0:
                start = worst
            if key < best[0]:
                best = (key, dz.detach().clone())
            if (worst <= goal and not key[0]) or step == cfg.steps:
                break
            soft = torch.logsumexp(cfg.sharpness * sims.reshape(-1), 0) / cfg.sharpness
            loss = (soft + cfg.prior * (dz ** 2).sum()
                    + cfg.detail * torch.relu(1.0 - energy / energy0) ** 2)
            if detail is not None:
                loss = loss + cfg.floors * gate.shortfall(detail)
            if cfg.marks > 0:
                over = torch.relu((chip.mean(dim=1) - grey0).abs() - cfg.mark_limit) / cfg.mark_limit
                loss = loss + cfg.marks * ((over ** 2)[0] * face).sum() / face.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        (missed, end), move = best
        moved = backbone.offset_appearance(factors, move.cpu().numpy())
        log.debug("novelty: %.3f -> %.3f in %d steps, |dz| %.2f%s", start, end, step, float(move.norm()),
                  ", detail floors missed" if missed else "")
        return NoveltyResult(moved, start, end, step, float(move.norm()), end <= goal and not missed)

    @staticmethod
    def _grid(affine: np.ndarray, image_size: int, chip_size: int):
        """``grid_sample`` grid ``[1, chip, chip, 2]`` for a chip-to-image ``affine [2, 3]``."""
        import torch

        ys, xs = np.mgrid[0:chip_size, 0:chip_size].astype(np.float64)
        pts = np.stack([xs, ys, np.ones_like(xs)], -1) @ affine.T
        grid = 2.0 * pts / (image_size - 1) - 1.0
        return torch.from_numpy(grid[None].astype(np.float32))

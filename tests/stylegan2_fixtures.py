"""Builders of tiny StyleGAN2 snapshot files for the stylegan2 tests.

* ``write_official_pickle``: a pickle with the official snapshot structure —
  a dict ``G``/``D``/``G_ema``/``training_set_kwargs``/``augment_pipe`` whose
  networks are stored as calls to
  ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta``
  carrying source code, class name and the module ``__dict__`` state — made
  from stand-in classes registered under the official module names only while
  pickling.
* ``write_rosinality``: a rosinality ``.pt`` checkpoint (``g_ema``,
  ``latent_avg``, ``args``).
* ``write_malicious_pickle``: official structure with a payload that would
  write a file if anything from the pickle ran.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from personc_assets.core.backbones.stylegan2.loading import official_to_rosinality
from personc_assets.core.backbones.stylegan2.network import Generator, GeneratorConfig, build_generator

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "golden"
GOLDEN_FILES = ("stylegan2_a_skip32", "stylegan2_b_resnet16_cond")

#: text standing in for the network source code an official pickle embeds
FAKE_MODULE_SRC = "# network source code would be here; a safe loader never runs it\n"


def golden(name: str) -> dict[str, Any]:
    """The golden arrays of ``name`` (``np.load`` without pickles)."""
    with np.load(GOLDEN_DIR / f"{name}.npz", allow_pickle=False) as d:
        return {k: d[k] for k in d.files}


def golden_generator(name: str) -> tuple[GeneratorConfig, dict[str, torch.Tensor], Generator]:
    d = golden(name)
    cfg = GeneratorConfig.from_init_kwargs(json.loads(str(d["init_kwargs"])))
    sd = {k[3:]: torch.from_numpy(np.array(v)) for k, v in d.items() if k.startswith("sd/")}
    return cfg, sd, build_generator(cfg, sd)


# ---------------------------------------------------------------------------
# Stand-ins registered under the official module names while pickling


@contextlib.contextmanager
def official_module_names() -> Iterator[tuple[Any, type]]:
    """Temporarily provide ``torch_utils.persistence._reconstruct_persistent_obj`` and
    ``dnnlib.util.EasyDict`` so that pickle writes those globals; removed afterwards."""
    def _reconstruct_persistent_obj(meta):  # pragma: no cover - never called by the safe loader
        raise AssertionError("the stand-in reconstructor must never run")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    easy = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    modules = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": types.ModuleType("torch_utils.persistence"),
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": types.ModuleType("dnnlib.util"),
    }
    modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    modules["dnnlib.util"].EasyDict = easy
    saved = {k: sys.modules.get(k) for k in modules}
    sys.modules.update(modules)
    try:
        yield _reconstruct_persistent_obj, easy
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class PersistentStandIn:
    """Pickles exactly as an official persistent network does."""

    def __init__(self, reconstruct, class_name: str, state: dict[str, Any]) -> None:
        self._reconstruct, self.class_name, self.state = reconstruct, class_name, state

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=FAKE_MODULE_SRC, class_name=self.class_name,
                    state=self.state)
        return (self._reconstruct, (meta,))


_PLAIN = (bool, int, float, str, type(None))


def _stand_in(module: torch.nn.Module, reconstruct, extra: dict[str, Any] | None = None) -> PersistentStandIn:
    """A stand-in with ``module``'s ``__dict__`` (children as stand-ins, plain attributes kept)."""
    state: dict[str, Any] = {}
    for k, v in module.__dict__.items():
        if k == "_modules":
            state[k] = collections.OrderedDict(
                (n, _stand_in(c, reconstruct) if c is not None else None) for n, c in v.items())
        elif k in ("_parameters", "_buffers"):
            state[k] = collections.OrderedDict(
                (n, t if k == "_buffers" or t is None else torch.nn.Parameter(t.detach().clone(),
                                                                            requires_grad=False))
                for n, t in v.items())
        elif k == "_non_persistent_buffers_set":
            state[k] = set(v)
        elif k.endswith("_hooks") and isinstance(v, dict):
            state[k] = collections.OrderedDict()
        elif k.endswith("gain") and isinstance(v, float):
            state[k] = np.float64(v)  # the official code keeps numpy scalars here
        elif isinstance(v, _PLAIN) or (isinstance(v, tuple) and all(isinstance(x, _PLAIN) for x in v)):
            state[k] = v
    state.update(extra or {})
    return PersistentStandIn(reconstruct, type(module).__name__, state)


def write_official_pickle(path: Path, cfg: GeneratorConfig, g: Generator, protocol: int = 3,
                          extra_state: dict[str, Any] | None = None,
                          module_src: str | None = None) -> Path:
    """Write ``g`` as an official-structure snapshot; returns ``path``."""
    with official_module_names() as (reconstruct, easy):
        kw = cfg.to_init_kwargs()
        init_kwargs = easy(kw)
        init_kwargs["mapping_kwargs"] = easy(kw["mapping_kwargs"])
        init_kwargs["synthesis_kwargs"] = easy(kw["synthesis_kwargs"])
        g_ema = _stand_in(g, reconstruct, {"_init_args": (), "_init_kwargs": init_kwargs,
                                           **(extra_state or {})})
        if module_src is not None:
            original = PersistentStandIn.__reduce__

            def reduce_with_src(self):
                fn, (meta,) = original(self)
                return fn, ({**meta, "module_src": module_src},)

            g_ema.__class__ = type("SrcStandIn", (PersistentStandIn,), {"__reduce__": reduce_with_src})
        d_net = torch.nn.Linear(2, 1)
        data = {"G": _stand_in(g, reconstruct, {"_init_args": (), "_init_kwargs": init_kwargs}),
                "D": _stand_in(d_net, reconstruct, {"_init_args": (), "_init_kwargs": easy(c_dim=0)}),
                "G_ema": g_ema,
                "training_set_kwargs": easy(path="ffhq.zip", resolution=cfg.img_resolution, xflip=True),
                "augment_pipe": None}
        data["D"].class_name = "Discriminator"
        data["G"].class_name = data["G_ema"].class_name = "Generator"
        with open(path, "wb") as fh:
            pickle.dump(data, fh, protocol=protocol)
    return path


def write_rosinality(path: Path, cfg: GeneratorConfig, sd: dict[str, torch.Tensor],
                     with_latent_avg: bool = True) -> Path:
    ckpt: dict[str, Any] = {"g_ema": official_to_rosinality(cfg, sd),
                            "args": argparse.Namespace(size=cfg.img_resolution, n_mlp=cfg.mapping.num_layers,
                                                       lr_mlp=cfg.mapping.lr_multiplier)}
    if with_latent_avg:
        ckpt["latent_avg"] = sd["mapping.w_avg"].clone()
    torch.save(ckpt, path)
    return path


# ---------------------------------------------------------------------------
# Malicious pickles


class _WritesFile:
    """``__reduce__`` asks the unpickler to run ``exec`` on code that writes ``target``."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({str(self.target)!r}, 'w').write('pwned')",))


class _RunsCommand:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.target}",))


def write_malicious_pickle(path: Path, cfg: GeneratorConfig, g: Generator, target: Path,
                           kind: str = "exec") -> Path:
    """An official-structure snapshot whose G_ema state hides a payload that writes ``target``."""
    payload = _WritesFile(target) if kind == "exec" else _RunsCommand(target)
    return write_official_pickle(path, cfg, g, extra_state={"evil": payload})


def malicious_storage_bytes(target: Path) -> bytes:
    """A torch legacy file whose pickle runs ``exec`` (what ``_load_from_bytes`` would meet)."""
    return pickle.dumps(_WritesFile(target), protocol=2)


class _EvilStorage:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        from torch.storage import _load_from_bytes

        return (_load_from_bytes, (malicious_storage_bytes(self.target),))


def write_malicious_storage_pickle(path: Path, target: Path) -> Path:
    """A pickle whose only global is the allowed ``torch.storage._load_from_bytes``, fed a payload."""
    with open(path, "wb") as fh:
        pickle.dump({"G_ema": _EvilStorage(target)}, fh, protocol=3)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny networks run fastest on one thread, and a shared CPU makes OpenMP spin; restore after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

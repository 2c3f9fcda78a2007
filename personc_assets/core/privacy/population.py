"""What every privacy mode shares: the fitted backbone with the source factors,
their person-weighted scale, and an identity probe that embeds rendered faces.

``Population`` bundles the fitted backbone, the source faces, their factors
(by content hash) and who is who (``persons``: content hash -> person key).
``FactorScale`` is the person-weighted mean ``mu[f]`` and per-dimension
spread ``sd[f]`` of every identity factor over the sources; it defines the
"unit of change" of the disentanglement ranking, the whitened coordinates of
the attribute directions and the scale of cancelable codes.

``context_frame`` asks a backbone for the render that keeps the photo's own
surroundings: the privacy modes edit the user's own photo on purpose.

``IdentityProbe`` turns images into L2-normalised embeddings with every
encoder of a run: one dlib HOG detection per image (best face), one embedding
per encoder, memoised by pixel hash (renders are often embedded twice, and a
dlib descriptor costs 80-170 ms on a CPU).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from ..backbones.base import Backbone
from ..backbones.morphable import person_weights
from ..encoders.base import Encoder
from ..faces.loading import pixel_hash
from ..types import FaceObservation, Factors, SourceFace, check_image

log = logging.getLogger(__name__)

FaceLocator = Callable[[np.ndarray], list[FaceObservation]]


def _default_locator(image: np.ndarray) -> list[FaceObservation]:
    from ..faces.detect import detect_faces

    return detect_faces(image)


CONTEXT_FRAME = "context"


def context_frame(backbone: Backbone) -> Backbone:
    """``backbone`` rendering in the ``"context"`` frame: the face pasted into its own photo.

    The privacy modes keep the user's hair, clothes and background by design
    (anonymize, cancelable with ``context="own"``, DP releases), while the
    main pipeline renders faces alone on a plain backdrop. A backbone without
    frames (StyleGAN2) is returned as is; one with a ``with_frame`` method is
    asked through it; otherwise a shallow copy shares the fitted model and
    carries a config whose ``frame`` is ``"context"``. The fitted state is
    the same either way (the frame only changes how ``synthesize`` draws).
    """
    with_frame = getattr(backbone, "with_frame", None)
    if callable(with_frame):
        return with_frame(CONTEXT_FRAME)
    config = getattr(backbone, "config", None)
    if not dataclasses.is_dataclass(config) or "frame" not in {f.name for f in dataclasses.fields(config)}:
        return backbone
    if getattr(config, "frame") == CONTEXT_FRAME:
        return backbone
    framed = copy.copy(backbone)
    framed.config = dataclasses.replace(config, frame=CONTEXT_FRAME)  # type: ignore[attr-defined]
    return framed


@dataclass(frozen=True)
class Population:
    """The fitted backbone and the source faces it was fitted on.

    ``factors[content_hash]`` are ``Backbone.decompose`` outputs;
    ``persons[content_hash]`` groups photos of one person (labels, or
    embedding clusters when sources are unlabelled).
    """

    backbone: Backbone
    backbone_state: str
    faces: tuple[SourceFace, ...]
    factors: Mapping[str, Factors] = field(repr=False)
    persons: Mapping[str, str] = field(repr=False)

    def __post_init__(self) -> None:
        missing = [f.content_hash[:10] for f in self.faces if f.content_hash not in self.factors]
        if missing:
            raise ValueError(f"no factors for sources {missing}; decompose every source first")
        unknown = [f.content_hash[:10] for f in self.faces if f.content_hash not in self.persons]
        if unknown:
            raise ValueError(f"no person key for sources {unknown}; pass persons for every source")
        if len(set(self.persons[f.content_hash] for f in self.faces)) < 2:
            raise ValueError("the privacy modes need sources of at least two different people")

    @property
    def factor_names(self) -> tuple[str, ...]:
        return tuple(self.backbone.factor_names)

    @property
    def hashes(self) -> tuple[str, ...]:
        return tuple(f.content_hash for f in self.faces)

    def person_keys(self) -> tuple[str, ...]:
        """Distinct persons, sorted."""
        return tuple(sorted(set(self.persons[h] for h in self.hashes)))

    def photos_of(self, person: str) -> tuple[str, ...]:
        return tuple(h for h in self.hashes if self.persons[h] == person)

    def person_mean(self, person: str) -> dict[str, np.ndarray]:
        """Mean identity factors of one person's photos (float64)."""
        hs = self.photos_of(person)
        if not hs:
            raise KeyError(f"unknown person {person!r}; persons: {', '.join(self.person_keys())}")
        return {f: np.mean([np.asarray(self.factors[h][f], np.float64) for h in hs], axis=0)
                for f in self.factor_names}

    def scale(self, hashes: Sequence[str] | None = None) -> "FactorScale":
        """Person-weighted scale of all sources, or of ``hashes`` only (e.g. everyone but one person)."""
        return FactorScale.from_population(self, hashes=hashes)


@dataclass(frozen=True)
class FactorScale:
    """Person-weighted mean ``mu[f] [D_f]`` and spread ``sd[f] [D_f]`` per identity factor.

    ``rms[f]`` is the person-weighted root-mean-square distance of a source
    from the mean, in raw factor units: one *population unit* of factor ``f``.
    """

    mu: Mapping[str, np.ndarray]
    sd: Mapping[str, np.ndarray]
    rms: Mapping[str, float]

    @classmethod
    def from_population(cls, pop: Population, floor: float = 1e-6,
                        hashes: Sequence[str] | None = None) -> "FactorScale":
        """Scale over ``hashes`` (default: every source; at least two photos)."""
        hashes = tuple(pop.hashes if hashes is None else hashes)
        unknown = [h[:10] for h in hashes if h not in pop.factors]
        if unknown or len(hashes) < 2:
            raise ValueError(f"a factor scale needs at least two known sources, got {len(hashes)} "
                             f"(unknown: {unknown}); pass content hashes of decomposed sources")
        w = person_weights([pop.persons[h] for h in hashes])
        mu, sd, rms = {}, {}, {}
        for f in pop.factor_names:
            x = np.stack([np.asarray(pop.factors[h][f], np.float64).ravel() for h in hashes])
            m = np.average(x, axis=0, weights=w)
            var = np.average((x - m) ** 2, axis=0, weights=w)
            mu[f] = m
            sd[f] = np.sqrt(np.maximum(var, 0.0)) + floor * max(float(np.sqrt(var.max())), 1.0)
            rms[f] = float(np.sqrt(var.sum()))
            if rms[f] <= 0:
                raise ValueError(f"factor {f!r} does not vary across the sources; cannot scale it")
        return cls(mu, sd, rms)

    def whiten(self, factors: Factors, names: Sequence[str]) -> np.ndarray:
        """Concatenated whitened coordinates ``[sum D_f]`` of ``names``."""
        return np.concatenate([(np.asarray(factors[f], np.float64).ravel() - self.mu[f]) / self.sd[f]
                               for f in names])

    def unwhiten(self, z: np.ndarray, names: Sequence[str], like: Factors) -> dict[str, np.ndarray]:
        """Inverse of ``whiten``: factor arrays (dtype and shape of ``like``)."""
        out, start = {}, 0
        z = np.asarray(z, np.float64)
        expected = sum(self.mu[f].size for f in names)
        if z.shape != (expected,):
            raise ValueError(f"whitened vector must be [{expected}], got {z.shape}")
        for f in names:
            n = self.mu[f].size
            ref = np.asarray(like[f])
            out[f] = (self.mu[f] + self.sd[f] * z[start:start + n]).reshape(ref.shape).astype(ref.dtype)
            start += n
        return out


@dataclass(frozen=True)
class ProbeResult:
    """Embeddings of ``N`` images: ``vectors[encoder]`` is ``float32 [N, dim]`` (NaN rows: no face)."""

    vectors: Mapping[str, np.ndarray]
    found: np.ndarray  # bool [N]
    faces: tuple[FaceObservation | None, ...] = field(repr=False, default=())


class IdentityProbe:
    """Embeds images with every encoder (best detected face), memoised by pixel hash."""

    def __init__(self, encoders: Sequence[Encoder], locate: FaceLocator = _default_locator) -> None:
        if not encoders:
            raise ValueError("IdentityProbe needs at least one encoder")
        self.encoders = tuple(encoders)
        self._locate = locate
        self._memo: dict[str, tuple[FaceObservation | None, dict[str, np.ndarray]]] = {}

    @property
    def encoder_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.encoders)

    def __call__(self, images: Sequence[np.ndarray]) -> ProbeResult:
        keys = [pixel_hash(check_image(im, f"image {i}")) for i, im in enumerate(images)]
        todo = [i for i, k in enumerate(keys) if k not in self._memo]
        todo = list({keys[i]: i for i in todo}.values())  # once per distinct image
        located = []
        for i in todo:
            found = self._locate(images[i])
            located.append(max(found, key=lambda f: f.detector_score) if found else None)
        present = [(i, f) for i, f in zip(todo, located) if f is not None]
        per_enc: dict[str, np.ndarray] = {}
        for enc in self.encoders:
            if present:
                v = np.asarray(enc.embed([f for _, f in present]), np.float32)
                if v.shape != (len(present), enc.dim) or not np.all(np.isfinite(v)):
                    raise RuntimeError(f"encoder {enc.name} returned invalid embeddings {v.shape}")
                per_enc[enc.name] = v
        row_of = {i: row for row, (i, _) in enumerate(present)}
        for i, face in zip(todo, located):
            row = row_of.get(i)
            self._memo[keys[i]] = (face, {e: per_enc[e][row] for e in per_enc} if row is not None else {})
        vectors = {}
        for enc in self.encoders:
            out = np.full((len(images), enc.dim), np.nan, np.float32)
            for i, k in enumerate(keys):
                vec = self._memo[k][1].get(enc.name)
                if vec is not None:
                    out[i] = vec
            vectors[enc.name] = out
        found = np.array([self._memo[k][0] is not None for k in keys], dtype=bool)
        return ProbeResult(vectors, found, tuple(self._memo[k][0] for k in keys))

    def embed_sources(self, faces: Sequence[SourceFace]) -> dict[str, np.ndarray]:
        """``{encoder: [N, dim]}`` of aligned source faces (known landmarks, no detection)."""
        from ..faces.detect import face_from_landmarks

        obs = [face_from_landmarks(f.aligned, f.landmarks) for f in faces]
        out = {}
        for enc in self.encoders:
            v = np.asarray(enc.embed(obs), np.float32)
            if v.shape != (len(faces), enc.dim):
                raise RuntimeError(f"encoder {enc.name} returned {v.shape} for {len(faces)} faces")
            out[enc.name] = v
        return out


def render(backbone: Backbone, factors: Sequence[Factors]) -> list[np.ndarray]:
    """Images ``uint8 [S, S, 3]`` of factor sets (compose + synthesize in one batch)."""
    return backbone.synthesize([backbone.compose(f) for f in factors])


def replace_factors(base: Factors, new: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``base`` with the entries of ``new`` swapped in (same dtypes and shapes)."""
    out = dict(base)
    for k, v in new.items():
        ref = np.asarray(base[k])
        arr = np.asarray(v)
        if arr.shape != ref.shape:
            raise ValueError(f"factor {k!r} must be shaped {ref.shape}, got {arr.shape}")
        out[k] = arr.astype(ref.dtype, copy=False)
    return out

"""Identity Contribution Scores: exact Shapley values of factors towards likeness.

For a released face with mixed factors ``x`` and the backbone's population
mean ``m``, a coalition ``S`` of identity factors renders the face whose
factors in ``S`` come from ``x`` and all others from ``m`` (``_``-prefixed
context entries always come from ``x``). Its value for donor ``d`` under
encoder ``e`` is the cosine similarity of that rendering to ``d``::

    v_{e,d}(S) = cos(embed_e(render(S)), embed_e(d))

With ``k`` factors (six for the embedded backbone) all ``2**k`` coalitions
are rendered and embedded exactly once — detection once per image, each
encoder once per image — and every donor and encoder reads the same table.
Renders share the stages that coalitions have in common (``coalitions``),
threads overlap one coalition's rendering with another's face detection,
and all faces of a table are embedded in one batch per encoder
(``build_coalition_table``); ``build_coalition_table_reference`` renders and
scores one batch after another, and the two give the same table.
The Shapley value of factor ``i`` is::

    phi_i = sum_{S not containing i} |S|! (k-|S|-1)! / k! * (v(S + i) - v(S))

and the values add up to ``v(all) - v(empty)`` (efficiency).

Normalised share (what reports print): ``share_i = phi_i / sum_j |phi_j|``.
We deliberately do not divide by ``v(all) - v(empty)``: for donors the face
barely resembles, that gain is close to zero or negative and the ratio
explodes or flips sign ("+240% geometry, -140% texture"). Dividing by the sum
of magnitudes keeps every share in [-1, 1] with ``sum |share| = 1``; when all
``phi`` are positive (the usual case for a donor whose likeness survives) it
equals ``phi / (v(all) - v(empty))``. A negative share means the factor moves
the face *away* from that donor. Raw ``phi``, ``v(all)`` and ``v(empty)``
are kept so any other normalisation can be derived.

Coalition images without a detectable face (rule ``missing_face``):

- ``"baseline"`` (default): the coalition takes the value of the empty
  coalition ``v(empty)`` — a face the recogniser cannot find conveys no
  likeness beyond the population baseline. Every such coalition is recorded
  in ``ICSResult.undetected`` and ``ICSResult.complete`` is False.
- ``"error"``: raise ``ICSUndefinedError``.

If the empty or the full coalition has no face the scores are undefined and
``ICSUndefinedError`` is raised under either rule (there is no baseline, or
the released face itself is not a face). When several faces are found the
detector's best-scoring one is used (and counted in ``face_counts``).

The first-version "drop" score ``drop_i = v(all) - v(all without i)`` (the
similarity lost when factor ``i`` alone is replaced by the mean) is read off
the same table.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..backbones.base import Backbone
from ..encoders.base import Encoder
from ..parallel import map_in, usable_cpus
from ..types import FaceObservation, Factors, check_image
from .coalitions import CoalitionImages, coalition_images

log = logging.getLogger(__name__)

MissingFaceRule = Literal["baseline", "error"]
MISSING_FACE_RULES: tuple[str, ...] = ("baseline", "error")

#: Largest number of factors we enumerate exactly (2**12 renders is already minutes).
MAX_FACTORS = 12

#: Below this sum of |phi| a donor's shares are reported as 0 (nothing to share).
SHARE_EPS = 1e-6


class ICSUndefinedError(RuntimeError):
    """The scores cannot be computed for this face (says which coalition and why)."""


# --------------------------------------------------------------------------- similarity


@dataclass(frozen=True)
class SimilarityBatch:
    """Similarities of ``N`` images to ``n_donors`` donors under each encoder.

    ``values[encoder]`` is ``float32 [N, n_donors]`` with NaN rows where no
    face was found; ``face_counts`` is ``int [N]`` (faces detected per image).
    """

    values: Mapping[str, np.ndarray]
    face_counts: np.ndarray


@runtime_checkable
class CoalitionSimilarity(Protocol):
    """Images in, similarity of each to every donor under each encoder out."""

    encoder_names: tuple[str, ...]
    donor_ids: tuple[str, ...]

    def __call__(self, images: Sequence[np.ndarray]) -> SimilarityBatch: ...


FaceLocator = Callable[[np.ndarray], list[FaceObservation]]


def _default_locator(image: np.ndarray) -> list[FaceObservation]:
    from ..faces.detect import detect_faces

    return detect_faces(image)


#: Coalition faces smaller than this share of the released face's box side need not be found:
#: coalitions are drawn in the released face's frame, and their shape factors move its outline
#: by a few per cent, not by half
COALITION_FACE_SHARE = 0.6


def coalition_locator(released_image: np.ndarray, share: float = COALITION_FACE_SHARE) -> FaceLocator:
    """The face locator for the coalition images of one released face: HOG detection that skips
    the pyramid levels finding only faces under ``share`` of the released face's box side (about
    half the detector's work on a 256 px render). The default locator when no face is found."""
    from ..faces.detect import detect_faces

    found = detect_faces(released_image)
    if not found:
        return _default_locator
    left, top, right, bottom = found[0].box  # best detector score first
    return partial(detect_faces, min_face=share * min(right - left, bottom - top))


class EncoderSimilarity:
    """Cosine similarity to donor embeddings, for one or more encoders.

    Each image is searched for faces once (``locate``, dlib HOG by default);
    the best-scoring face is embedded once per encoder and compared with
    ``donor_embeddings[encoder.name]`` (``[n_donors, dim]``, unit rows, in the
    order of ``donor_ids``).
    """

    def __init__(self, encoders: Sequence[Encoder], donor_embeddings: Mapping[str, np.ndarray],
                 donor_ids: Sequence[str], locate: FaceLocator = _default_locator) -> None:
        if not encoders:
            raise ValueError("EncoderSimilarity needs at least one encoder")
        self.encoders = tuple(encoders)
        self.encoder_names = tuple(e.name for e in self.encoders)
        if len(set(self.encoder_names)) != len(self.encoder_names):
            raise ValueError(f"encoder names must be unique, got {self.encoder_names}")
        self.donor_ids = tuple(donor_ids)
        if not self.donor_ids:
            raise ValueError("EncoderSimilarity needs at least one donor")
        self._targets: dict[str, np.ndarray] = {}
        for enc in self.encoders:
            if enc.name not in donor_embeddings:
                raise KeyError(f"no donor embeddings for encoder {enc.name!r}; "
                               f"given: {sorted(donor_embeddings)}")
            t = np.asarray(donor_embeddings[enc.name], dtype=np.float32)
            if t.shape != (len(self.donor_ids), enc.dim):
                raise ValueError(f"donor embeddings for {enc.name!r} must be [n_donors={len(self.donor_ids)}, "
                                 f"dim={enc.dim}], got {t.shape}")
            norms = np.linalg.norm(t, axis=1)
            if not np.allclose(norms, 1.0, atol=1e-3):
                raise ValueError(f"donor embeddings for {enc.name!r} must be L2-normalised "
                                 f"(row norms {norms.min():.3f}..{norms.max():.3f}); use l2_normalise")
            self._targets[enc.name] = t
        self._locate = locate

    def locate(self, image: np.ndarray, what: str = "coalition image") -> tuple[FaceObservation | None, int]:
        """The best-scoring face in ``image`` ``uint8 [H, W, 3]`` (None: no face) and how many were found."""
        found = self._locate(check_image(image, what))
        return (max(found, key=lambda f: f.detector_score) if found else None), len(found)

    def score(self, faces: Sequence[FaceObservation | None]) -> dict[str, np.ndarray]:
        """``{encoder: float32 [N, n_donors]}`` for located ``faces`` (NaN rows where None);
        every present face is embedded in one call per encoder."""
        present = [i for i, f in enumerate(faces) if f is not None]
        values: dict[str, np.ndarray] = {}
        for enc in self.encoders:
            out = np.full((len(faces), len(self.donor_ids)), np.nan, dtype=np.float32)
            if present:
                emb = np.asarray(enc.embed([faces[i] for i in present]), dtype=np.float32)
                if emb.shape != (len(present), enc.dim) or not np.all(np.isfinite(emb)):
                    raise ICSUndefinedError(f"encoder {enc.name!r} returned an invalid embedding "
                                            f"(shape {emb.shape}, expected {(len(present), enc.dim)})")
                out[present] = emb @ self._targets[enc.name].T
            values[enc.name] = out
        return values

    def __call__(self, images: Sequence[np.ndarray]) -> SimilarityBatch:
        located = [self.locate(image, f"coalition image {i}") for i, image in enumerate(images)]
        counts = np.array([n for _, n in located], dtype=np.int64)
        return SimilarityBatch(self.score([f for f, _ in located]), counts)


class CallableSimilarity:
    """Adapts ``fn(images) -> [N, n_donors]`` (NaN rows = no face) to the protocol."""

    def __init__(self, fn: Callable[[Sequence[np.ndarray]], np.ndarray], donor_ids: Sequence[str],
                 name: str = "similarity") -> None:
        self._fn = fn
        self.donor_ids = tuple(donor_ids)
        self.encoder_names = (name,)

    def __call__(self, images: Sequence[np.ndarray]) -> SimilarityBatch:
        out = np.asarray(self._fn(images), dtype=np.float32)
        if out.shape != (len(images), len(self.donor_ids)):
            raise ValueError(f"similarity function must return [N={len(images)}, "
                             f"n_donors={len(self.donor_ids)}], got {out.shape}")
        found = np.all(np.isfinite(out), axis=1)
        return SimilarityBatch({self.encoder_names[0]: out}, found.astype(np.int64))


# --------------------------------------------------------------------------- coalitions


def coalition_masks(k: int) -> np.ndarray:
    """``bool [2**k, k]``: row ``b`` holds factor ``i`` iff bit ``i`` of ``b`` is set."""
    if not 1 <= k <= MAX_FACTORS:
        raise ValueError(f"exact Shapley needs 1..{MAX_FACTORS} factors, got {k}")
    b = np.arange(2 ** k)[:, None]
    return ((b >> np.arange(k)[None, :]) & 1).astype(bool)


def coalition_factors(released: Factors, mean: Factors, players: Sequence[str],
                      present: Sequence[bool]) -> dict[str, np.ndarray]:
    """Factors of one coalition: players present from ``released``, absent ones from ``mean``.

    Everything else in ``released`` (``_`` context entries and identity
    factors that are not players) is kept as released.
    """
    out = {name: np.asarray(value) for name, value in released.items()}
    for name, on in zip(players, present):
        if not on:
            out[name] = np.asarray(mean[name])
    return out


@dataclass(frozen=True)
class CoalitionTable:
    """Every coalition's similarity to every donor under every encoder.

    ``masks`` is ``bool [2**k, k]`` (see ``coalition_masks``); ``values`` is
    ``float32 [E, 2**k, n_donors]`` in ``encoder_names`` order, NaN where the
    coalition image had no face; ``face_counts`` is ``int [2**k]``.
    """

    factor_names: tuple[str, ...]
    donor_ids: tuple[str, ...]
    encoder_names: tuple[str, ...]
    masks: np.ndarray
    values: np.ndarray
    face_counts: np.ndarray
    render_seconds: float = 0.0
    similarity_seconds: float = 0.0
    #: max |pixel difference| of the full coalition's render against the released image (-1: not checked)
    full_render_max_diff: int = -1
    images: tuple[np.ndarray, ...] = field(default=(), repr=False, compare=False)

    @property
    def undetected(self) -> tuple[tuple[str, ...], ...]:
        """Coalitions (as factor-name tuples) whose image had no face."""
        return tuple(tuple(n for n, on in zip(self.factor_names, self.masks[b]) if on)
                     for b in np.flatnonzero(self.face_counts == 0))


def _check_factors(backbone: Backbone, released: Factors, players: Sequence[str]) -> None:
    known = set(backbone.factor_names)
    unknown = [n for n in released if not n.startswith("_") and n not in known]
    if unknown:
        raise ValueError(f"released factors {unknown} are neither identity factors of backbone "
                         f"{backbone.name!r} ({', '.join(backbone.factor_names)}) nor '_' context entries")
    not_known = [n for n in players if n not in known]
    if not_known:
        raise ValueError(f"factor_names {not_known} are not factors of backbone {backbone.name!r}; "
                         f"known: {', '.join(backbone.factor_names)}")
    missing = [n for n in players if n not in released]
    if missing:
        raise ValueError(f"factors {missing} are scored but absent from the released factors "
                         f"(have {sorted(released)})")


def _players(backbone: Backbone, released_factors: Factors, factor_names: Sequence[str] | None) -> tuple[str, ...]:
    players = tuple(factor_names) if factor_names is not None else tuple(backbone.factor_names)
    if len(set(players)) != len(players):
        raise ValueError(f"factor_names has duplicates: {players}")
    _check_factors(backbone, released_factors, players)
    return players


def _full_render_diff(full: np.ndarray, released_image: np.ndarray) -> int:
    """Max |difference| of the full coalition's render and the released image (warns above 2)."""
    if full.shape != released_image.shape:
        diff = 255
    else:
        diff = int(np.abs(full.astype(np.int16) - released_image.astype(np.int16)).max())
    if diff > 2:
        log.warning("the full coalition's render differs from the released image by up to %d "
                    "grey levels: the backbone does not reproduce the released face exactly", diff)
    return diff


def build_coalition_table(backbone: Backbone, released_factors: Factors,
                          similarity: CoalitionSimilarity, *,
                          factor_names: Sequence[str] | None = None,
                          released_image: np.ndarray | None = None,
                          batch_size: int = 16, keep_images: bool = False,
                          workers: int | None = None) -> CoalitionTable:
    """Render and score all ``2**k`` coalitions once, sharing work between them.

    ``factor_names`` are the players (default: ``backbone.factor_names``).
    ``released_image`` (optional, ``[H, W, 3]``) is compared with the full
    coalition's render: a mismatch means the backbone does not reproduce the
    released face and is logged as a warning.

    Renders share what coalitions have in common (``coalitions.coalition_images``;
    backbones without shared stages synthesize in batches of ``batch_size``).
    With an ``EncoderSimilarity``, ``workers`` threads (default: the CPUs this
    process may use) each render a coalition and locate its face, so that one
    thread's face detection overlaps another's rendering; then every located
    face is embedded in one batch per encoder. Other similarities score all
    images in one call. Same table as ``build_coalition_table_reference``.
    ``render_seconds`` and ``similarity_seconds`` are summed over threads.
    """
    players = _players(backbone, released_factors, factor_names)
    mean = backbone.population_mean()
    masks = coalition_masks(len(players))
    n = masks.shape[0]
    factors = [coalition_factors(released_factors, mean, players, m) for m in masks]
    threads = usable_cpus() if workers is None else max(1, int(workers))
    with ThreadPoolExecutor(threads, thread_name_prefix="ics") if threads > 1 else nullcontext() as pool:
        t0 = time.perf_counter()
        coalitions = coalition_images(backbone, factors, pool, batch_size)
        render_s = time.perf_counter() - t0
        if isinstance(similarity, EncoderSimilarity):
            located = map_in(pool, partial(_render_and_locate, coalitions, similarity), range(n))
            images = [c.image for c in located]
            render_s += sum(c.render_seconds for c in located)
            t1 = time.perf_counter()
            batch = SimilarityBatch(similarity.score([c.face for c in located]),
                                    np.array([c.face_count for c in located], dtype=np.int64))
            sim_s = sum(c.locate_seconds for c in located) + time.perf_counter() - t1
        else:
            t1 = time.perf_counter()
            images = [coalitions.image(i) for i in range(n)]
            t2 = time.perf_counter()
            batch = similarity(images)
            render_s += t2 - t1
            sim_s = time.perf_counter() - t2
    enc_names = tuple(similarity.encoder_names)
    values = np.stack([np.asarray(batch.values[name], dtype=np.float32) for name in enc_names])
    full_diff = _full_render_diff(images[n - 1], released_image) if released_image is not None else -1
    return CoalitionTable(players, tuple(similarity.donor_ids), enc_names, masks, values,
                          np.asarray(batch.face_counts, dtype=np.int64), render_s, sim_s, full_diff,
                          tuple(images) if keep_images else ())


@dataclass(frozen=True)
class _Located:
    """One coalition's image ``uint8 [H, W, 3]``, its best face (None: no face) and the time each took."""

    image: np.ndarray
    face: FaceObservation | None
    face_count: int
    render_seconds: float
    locate_seconds: float


def _render_and_locate(coalitions: CoalitionImages, similarity: EncoderSimilarity, i: int) -> _Located:
    t0 = time.perf_counter()
    image = coalitions.image(i)
    t1 = time.perf_counter()
    face, count = similarity.locate(image, f"coalition image {i}")
    return _Located(image, face, count, t1 - t0, time.perf_counter() - t1)


def build_coalition_table_reference(backbone: Backbone, released_factors: Factors,
                                    similarity: CoalitionSimilarity, *,
                                    factor_names: Sequence[str] | None = None,
                                    released_image: np.ndarray | None = None,
                                    batch_size: int = 16, keep_images: bool = False) -> CoalitionTable:
    """Reference path of ``build_coalition_table``: each coalition composed and synthesized by the
    backbone, and scored, in batches of ``batch_size``, one after the other.

    ``factor_names`` are the players (default: ``backbone.factor_names``).
    ``released_image`` (optional, ``[H, W, 3]``) is compared with the full
    coalition's render: a mismatch means the backbone does not reproduce the
    released face and is logged as a warning. Images are rendered and scored
    in batches of ``batch_size`` to bound memory.
    """
    players = tuple(factor_names) if factor_names is not None else tuple(backbone.factor_names)
    if len(set(players)) != len(players):
        raise ValueError(f"factor_names has duplicates: {players}")
    _check_factors(backbone, released_factors, players)
    mean = backbone.population_mean()
    masks = coalition_masks(len(players))
    n = masks.shape[0]
    enc_names = tuple(similarity.encoder_names)
    values = np.full((len(enc_names), n, len(similarity.donor_ids)), np.nan, dtype=np.float32)
    counts = np.zeros(n, dtype=np.int64)
    kept: list[np.ndarray] = []
    render_s = sim_s = 0.0
    full_diff = -1
    for start in range(0, n, max(1, batch_size)):
        rows = range(start, min(n, start + max(1, batch_size)))
        t0 = time.perf_counter()
        latents = [backbone.compose(coalition_factors(released_factors, mean, players, masks[b])) for b in rows]
        images = backbone.synthesize(latents)
        t1 = time.perf_counter()
        if len(images) != len(latents):
            raise RuntimeError(f"backbone {backbone.name!r} returned {len(images)} images for {len(latents)} latents")
        batch = similarity(images)
        t2 = time.perf_counter()
        render_s += t1 - t0
        sim_s += t2 - t1
        for e, name in enumerate(enc_names):
            values[e, start:start + len(images)] = batch.values[name]
        counts[start:start + len(images)] = batch.face_counts
        if n - 1 in rows and released_image is not None:
            full = images[n - 1 - start]
            if full.shape == released_image.shape:
                full_diff = int(np.abs(full.astype(np.int16) - released_image.astype(np.int16)).max())
            else:
                full_diff = 255
            if full_diff > 2:
                log.warning("the full coalition's render differs from the released image by up to %d "
                            "grey levels: the backbone does not reproduce the released face exactly",
                            full_diff)
        if keep_images:
            kept.extend(images)
    return CoalitionTable(players, tuple(similarity.donor_ids), enc_names, masks, values, counts,
                          render_s, sim_s, full_diff, tuple(kept))


# --------------------------------------------------------------------------- Shapley


def shapley_weights(k: int) -> np.ndarray:
    """``float64 [k, 2**k]`` matrix ``W`` with ``phi = W @ v`` for ``v`` indexed by bitmask."""
    masks = coalition_masks(k)
    size = masks.sum(axis=1)
    w = np.zeros((k, 2 ** k))
    fact = [math.factorial(i) for i in range(k + 1)]
    for i in range(k):
        for b in np.flatnonzero(~masks[:, i]):  # S without i
            c = fact[size[b]] * fact[k - size[b] - 1] / fact[k]
            w[i, b | (1 << i)] += c
            w[i, b] -= c
    return w


def shapley_values(values: np.ndarray) -> np.ndarray:
    """Exact Shapley values ``[k, ...]`` from coalition values ``[2**k, ...]`` (fast path)."""
    v = np.asarray(values, dtype=np.float64)
    k = int(round(math.log2(v.shape[0])))
    if 2 ** k != v.shape[0]:
        raise ValueError(f"coalition values must have 2**k rows, got {v.shape[0]}")
    return np.tensordot(shapley_weights(k), v, axes=(1, 0))


def shapley_values_reference(values: np.ndarray) -> np.ndarray:
    """Shapley values by averaging marginal contributions over all ``k!`` orders (reference)."""
    v = np.asarray(values, dtype=np.float64)
    k = int(round(math.log2(v.shape[0])))
    phi = np.zeros((k,) + v.shape[1:])
    orders = list(itertools.permutations(range(k)))
    for order in orders:
        b = 0
        for i in order:
            phi[i] += v[b | (1 << i)] - v[b]
            b |= 1 << i
    return phi / len(orders)


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class ICSResult:
    """Identity Contribution Scores of one released face.

    Arrays are ``float32 [E, n_donors, k]`` in (``encoder_names``,
    ``donor_ids``, ``factor_names``) order: ``phi`` (Shapley values, cosine
    units), ``share`` (``phi / sum |phi|``), ``drop`` (first-version score
    ``v(all) - v(all without i)``); ``v_full``/``v_empty`` are ``[E, n_donors]``.
    """

    factor_names: tuple[str, ...]
    donor_ids: tuple[str, ...]
    encoder_names: tuple[str, ...]
    phi: np.ndarray
    share: np.ndarray
    drop: np.ndarray
    v_full: np.ndarray
    v_empty: np.ndarray
    missing_face: str
    undetected: tuple[tuple[str, ...], ...] = ()
    render_seconds: float = 0.0
    similarity_seconds: float = 0.0
    #: max |pixel difference| of the full coalition's render against the image the face was
    #: released from (-1: not checked); above 2 the scores explain a different image
    full_render_max_diff: int = -1

    @property
    def complete(self) -> bool:
        """True when every coalition image had a face (no imputation)."""
        return not self.undetected

    def _idx(self, encoder: str, donor: str, factor: str | None = None) -> tuple[int, ...]:
        for what, name, names in (("encoder", encoder, self.encoder_names),
                                  ("donor", donor, self.donor_ids)):
            if name not in names:
                raise KeyError(f"unknown {what} {name!r}; known: {', '.join(names)}")
        idx = (self.encoder_names.index(encoder), self.donor_ids.index(donor))
        if factor is None:
            return idx
        if factor not in self.factor_names:
            raise KeyError(f"unknown factor {factor!r}; known: {', '.join(self.factor_names)}")
        return idx + (self.factor_names.index(factor),)

    def share_of(self, encoder: str, donor: str, factor: str) -> float:
        return float(self.share[self._idx(encoder, donor, factor)])

    def top_factor(self, encoder: str, donor: str) -> tuple[str, float]:
        """The factor carrying the largest positive share of the likeness, and that share."""
        s = self.share[self._idx(encoder, donor)]
        i = int(np.argmax(s))
        return self.factor_names[i], float(s[i])

    def sentence(self, encoder: str, donor: str) -> str:
        """E.g. ``38% of the likeness to A-07 (dlib) comes through geometry (+0.012 cos over the mean face)``.

        When the face is no more like the donor than the population-mean face
        is, no factor carries likeness and the sentence says so.
        """
        e, d = self._idx(encoder, donor)
        gain = float(self.v_full[e, d] - self.v_empty[e, d])
        factor, share = self.top_factor(encoder, donor)
        if gain <= 0 or share <= 0:
            return (f"no factor adds likeness to {donor} ({encoder}): the face scores "
                    f"{self.v_full[e, d]:.3f}, the population-mean face {self.v_empty[e, d]:.3f}")
        return (f"{share * 100:.0f}% of the likeness to {donor} ({encoder}) comes through {factor} "
                f"({gain:+.3f} cos over the mean face)")

    def rows(self) -> list[dict[str, object]]:
        """Long-format records (one per encoder, donor, factor) for tables and DuckDB."""
        out: list[dict[str, object]] = []
        for e, enc in enumerate(self.encoder_names):
            for d, donor in enumerate(self.donor_ids):
                for f, factor in enumerate(self.factor_names):
                    out.append(dict(encoder=enc, donor=donor, factor=factor,
                                    phi=float(self.phi[e, d, f]), share=float(self.share[e, d, f]),
                                    drop=float(self.drop[e, d, f]), v_full=float(self.v_full[e, d]),
                                    v_empty=float(self.v_empty[e, d]), complete=self.complete))
        return out

    def summary(self) -> dict[str, object]:
        """Compact JSON-ready summary: per encoder and donor, shares by factor."""
        return {
            "normalisation": "share = phi / sum(|phi|)",
            "missing_face_rule": self.missing_face,
            "undetected_coalitions": [list(c) for c in self.undetected],
            "full_render_max_diff": int(self.full_render_max_diff),
            "scores": {enc: {donor: {
                "v_full": round(float(self.v_full[e, d]), 4),
                "v_empty": round(float(self.v_empty[e, d]), 4),
                "share": {f: round(float(self.share[e, d, i]), 4) for i, f in enumerate(self.factor_names)},
            } for d, donor in enumerate(self.donor_ids)} for e, enc in enumerate(self.encoder_names)},
        }


def compute_ics(table: CoalitionTable, missing_face: MissingFaceRule = "baseline") -> ICSResult:
    """Shapley values, shares and drop scores from a coalition table."""
    if missing_face not in MISSING_FACE_RULES:
        raise ValueError(f"missing_face must be one of {MISSING_FACE_RULES}, got {missing_face!r}")
    k = len(table.factor_names)
    full, empty = 2 ** k - 1, 0
    for b, what in ((empty, "the empty coalition (population-mean face)"),
                    (full, "the full coalition (the released face)")):
        if table.face_counts[b] == 0:
            raise ICSUndefinedError(f"{what} has no detectable face, so the contribution scores are "
                                    "undefined; check the backbone's population mean and the released factors")
    undetected = table.undetected
    if undetected and missing_face == "error":
        raise ICSUndefinedError(f"{len(undetected)} coalition image(s) have no detectable face, e.g. "
                                f"{undetected[0]}; use missing_face='baseline' to score them as v(empty)")
    v = np.moveaxis(table.values.astype(np.float64), 1, 0)  # [2**k, E, D]
    missing = table.face_counts == 0
    if missing.any():
        v[missing] = v[empty]
        log.info("ICS: %d of %d coalition images have no face; scored as v(empty)", missing.sum(), len(missing))
    if not np.all(np.isfinite(v)):
        raise ICSUndefinedError("non-finite similarity in the coalition table")
    phi = np.moveaxis(shapley_values(v), 0, -1)  # [E, D, k]
    mag = np.abs(phi).sum(axis=-1, keepdims=True)
    share = np.where(mag > SHARE_EPS, phi / np.maximum(mag, SHARE_EPS), 0.0)
    bits = 1 << np.arange(k)
    drop = np.moveaxis(v[full][None] - v[full ^ bits], 0, -1)  # [E, D, k]
    return ICSResult(table.factor_names, table.donor_ids, table.encoder_names,
                     phi.astype(np.float32), share.astype(np.float32), drop.astype(np.float32),
                     v[full].astype(np.float32), v[empty].astype(np.float32), missing_face,
                     undetected, table.render_seconds, table.similarity_seconds, table.full_render_max_diff)


def identity_contribution_scores(backbone: Backbone, released_factors: Factors,
                                 similarity: CoalitionSimilarity, *,
                                 factor_names: Sequence[str] | None = None,
                                 released_image: np.ndarray | None = None,
                                 missing_face: MissingFaceRule = "baseline",
                                 batch_size: int = 16, workers: int | None = None) -> ICSResult:
    """ICS of one released face: ``build_coalition_table`` then ``compute_ics``."""
    if missing_face not in MISSING_FACE_RULES:
        raise ValueError(f"missing_face must be one of {MISSING_FACE_RULES}, got {missing_face!r}")
    table = build_coalition_table(backbone, released_factors, similarity, factor_names=factor_names,
                                  released_image=released_image, batch_size=batch_size, workers=workers)
    return compute_ics(table, missing_face)

"""Cancelable faces: a user-held key turns a face into a revocable synthetic template.

Key handling
------------
The key is a string the user keeps. It is never stored or logged: only its
``key_id = sha256(sha256(key))`` (hex, first 24 characters) is, so a template
can be traced to "the same key" and a key can be revoked. Keys shorter than
``KEY_MIN_LENGTH`` characters are refused, because the key id (a fast hash)
lets anyone holding it test guesses of a weak key.

The key alone seeds the transform: ``code_key(key) = HMAC-SHA256(key,
CODE_DOMAIN)``, and every random choice is an integer drawn from
HMAC-SHA256 counter blocks under that code key (``KeyStream``: no floating
point, no library random generator). The same key therefore draws the same
transform on every platform and every library version; what the fitted
backbone contributes is only the coordinate system the transform acts in.

Transform
---------
In whitened factor coordinates ``z = (x - mu) / sd`` (``FactorScale``), the
key draws a sign for every mode of every identity factor and, with
``block > 1``, a permutation within each block of ``block`` neighbouring
modes (neighbours in a PCA-ordered factor have similar spreads): a signed
permutation ``P_k``. The template's factors are ``y = P_k z``. With the
default ``block = 1`` it is a reflection of each mode about the population
mean, which keeps every mode's spread exactly, in raw units too.

By construction, in factor space:

- ``P_k`` is orthogonal: ``|P_k z1 - P_k z2| = |z1 - z2|``. Two photos of one
  person stay as close as they were (consistency), two people as far apart
  as they were (discriminability);
- two keys draw independent signs, so ``E |P_k1 z - P_k2 z|^2 = 2 |z|^2``, the
  expected squared distance between two different people: templates under
  two keys are as far apart as two people (unlinkability); revocation is
  enrolment under a new key, so the same holds for old and new template;
- ``E |P_k z - z|^2 = 2 |z|^2`` as well: the template is as far from the face
  as another person is.

Whether the encoder sees what factor space promises is measured, not
assumed: ``CancelableEnroller.assess`` makes templates of the sources'
people under two assessment keys and scores the properties with every
gating encoder; ``enroll`` refuses (``CancelableUnavailableError``, with
the measured figures) when any required property falls short of
``min_ok_rate``. Each template is also checked by the guard (all sources)
and against the enrolled photo, and is released only when it passes
(irreversibility is enforced per template, fail closed).

Whoever holds the key and the fitted backbone can undo ``P_k`` (it is a
permutation): the key is a secret, like a password.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from ..guard import Guard
from ..types import Factors, SourceFace
from .population import FactorScale, IdentityProbe, Population

log = logging.getLogger(__name__)

KEY_MIN_LENGTH = 12
CODE_DOMAIN = b"personc/cancelable/v2|code"
TRANSFORM = "signed-permutation/v2"
ContextMode = Literal["own", "key"]
CONTEXT_MODES: tuple[str, ...] = ("own", "key")
#: Properties a usable template scheme must have (irreversibility is enforced per template).
REQUIRED_PROPERTIES: tuple[str, ...] = ("consistency", "unlinkability", "revocability", "discriminability")
#: The assessment's two keys: fixed, so that the assessment is a property of backbone and encoder.
ASSESSMENT_KEYS: tuple[str, str] = ("personc cancelable assessment key 1", "personc cancelable assessment key 2")


class CancelableKeyError(ValueError):
    """A key is too weak or revoked (the message says which and what to do)."""


class CancelableUnavailableError(RuntimeError):
    """The backbone and encoders cannot give templates the required properties (measured)."""


def _check_key(key: str) -> bytes:
    if not isinstance(key, str):
        raise CancelableKeyError("the key must be a string")
    if len(key) < KEY_MIN_LENGTH:
        raise CancelableKeyError(f"the key has {len(key)} characters; use at least {KEY_MIN_LENGTH} "
                                 "(a passphrase of several words), because its key id lets others test guesses")
    return key.encode("utf-8")


def key_id(key: str) -> str:
    """``sha256(sha256(key))`` hex prefix: identifies a key without storing it."""
    inner = hashlib.sha256(_check_key(key)).digest()
    return hashlib.sha256(inner).hexdigest()[:24]


def code_key(key: str) -> bytes:
    """``HMAC-SHA256(key, CODE_DOMAIN)``: the only input of every draw (the key bytes alone)."""
    return hmac.new(_check_key(key), CODE_DOMAIN, hashlib.sha256).digest()


def derive_seed(key: str) -> int:
    """The first 64 bits of ``code_key(key)`` as an integer (a short fingerprint of the draw)."""
    return int.from_bytes(code_key(key)[:8], "big")


class KeyStream:
    """Integers drawn from ``HMAC-SHA256(code_key, label | counter)`` blocks (exact, version-free).

    Each ``label`` is an independent stream, so adding a factor or changing
    another factor's size never changes this factor's draw.
    """

    def __init__(self, key: str, label: str) -> None:
        self._mac_key = code_key(key)
        self._label = label.encode("utf-8")
        self._counter = 0
        self._words: list[int] = []

    def word(self) -> int:
        """The next 64-bit unsigned integer."""
        if not self._words:
            block = hmac.new(self._mac_key, self._label + b"|" + self._counter.to_bytes(8, "big"),
                             hashlib.sha256).digest()
            self._counter += 1
            self._words = [int.from_bytes(block[i:i + 8], "big") for i in range(0, 32, 8)]
        return self._words.pop(0)

    def below(self, n: int) -> int:
        """Uniform integer in ``[0, n)`` (rejection sampling: no modulo bias)."""
        if n < 1:
            raise ValueError(f"below() needs n >= 1, got {n}")
        limit = (1 << 64) - (1 << 64) % n
        while True:
            w = self.word()
            if w < limit:
                return w % n

    def permutation(self, n: int) -> list[int]:
        """A uniform permutation of ``range(n)`` (Fisher-Yates)."""
        out = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.below(i + 1)
            out[i], out[j] = out[j], out[i]
        return out

    def signs(self, n: int) -> list[int]:
        """``n`` independent uniform signs in {-1, +1}."""
        return [1 if self.word() >> 63 else -1 for _ in range(n)]


@dataclass(frozen=True)
class CancelableKnobs:
    """Knobs of cancelable templates.

    ``block``: modes per signed-permutation block (1 = signs only).
    ``min_ok_rate``: share of assessment pairs each required property must
    get right before any template is made. ``assess_persons``: most people
    (with two photos each) the assessment uses.
    """

    block: int = 1
    context: ContextMode = "own"
    min_ok_rate: float = 1.0
    assess_persons: int = 7

    def __post_init__(self) -> None:
        if not 1 <= self.block <= 64:
            raise ValueError(f"block must be in [1, 64] modes, got {self.block}")
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {CONTEXT_MODES}, got {self.context!r}")
        if not 0.0 < self.min_ok_rate <= 1.0:
            raise ValueError(f"min_ok_rate must be in (0, 1], got {self.min_ok_rate}")
        if self.assess_persons < 2:
            raise ValueError(f"assess_persons must be >= 2 (discriminability needs two people), "
                             f"got {self.assess_persons}")

    @property
    def transform(self) -> str:
        return f"{TRANSFORM}/block={self.block}"


@dataclass(frozen=True)
class KeyTransform:
    """The signed permutation of one key: per factor ``y[i] = signs[i] * z[sources[i]]``."""

    key_id: str
    sources: Mapping[str, np.ndarray] = field(repr=False)   # int [D_f]
    signs: Mapping[str, np.ndarray] = field(repr=False)     # float [D_f], +-1
    context_index: int | None        # index into the population's sources ("key" context mode)

    def apply(self, factors: Factors, scale: FactorScale, names: Sequence[str],
              context: Factors | None = None) -> dict[str, np.ndarray]:
        """Template factors of ``factors``; context entries from ``context`` when given."""
        out = dict(factors)
        for f in names:
            ref = np.asarray(factors[f])
            z = (ref.astype(np.float64).ravel() - scale.mu[f]) / scale.sd[f]
            if z.shape != self.sources[f].shape:
                raise ValueError(f"factor {f!r} has {z.size} entries, the key transform {self.sources[f].size}; "
                                 "draw the transform on this backbone")
            y = self.signs[f] * z[self.sources[f]]
            out[f] = (scale.mu[f] + scale.sd[f] * y).reshape(ref.shape).astype(ref.dtype)
        if context is not None:
            out.update({k: v for k, v in context.items() if k.startswith("_")})
        return out


def factor_transform(key: str, factor: str, dim: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """``(sources [dim], signs [dim])``: a signed permutation within blocks of ``block`` neighbours."""
    stream = KeyStream(key, f"transform/{factor}/{dim}/{block}")
    sources: list[int] = []
    for start in range(0, dim, block):
        size = min(block, dim - start)
        sources += [start + j for j in stream.permutation(size)]
    return np.array(sources, np.int64), np.array(stream.signs(dim), np.float64)


def key_transform(key: str, scale: FactorScale, names: Sequence[str], knobs: CancelableKnobs = CancelableKnobs(),
                  n_sources: int = 0) -> KeyTransform:
    """The key's transform for factors ``names`` (sizes from ``scale``); no float enters the draw."""
    sources, signs = {}, {}
    for f in names:
        sources[f], signs[f] = factor_transform(key, f, int(scale.mu[f].size), knobs.block)
    context = KeyStream(key, "context").below(n_sources) if knobs.context == "key" and n_sources else None
    return KeyTransform(key_id(key), sources, signs, context)


@dataclass(frozen=True)
class Template:
    """A cancelable template: the synthetic face of one photo under one key."""

    template_id: str
    key_id: str
    input_hash: str
    passed: bool
    reason: str
    transform: str
    embeddings: Mapping[str, np.ndarray] = field(repr=False)  # per encoder [dim] (NaN: no face)
    sim_original: Mapping[str, float]
    max_sim_sources: Mapping[str, float]
    image: np.ndarray = field(repr=False)


# ---------------------------------------------------------------------------- properties

@dataclass(frozen=True)
class PropertyScores:
    """Score distribution of one property under one encoder.

    ``want`` says which side of tau the property needs: "match" (at or above)
    or "no_match" (below); ``ok_rate`` is the share of pairs on that side. A
    pair whose template shows no face (NaN) counts as a miss: such a template
    is useless whichever side it was meant to be on.
    """

    prop: str
    encoder: str
    want: str
    tau: float
    scores: tuple[float, ...]

    @property
    def finite(self) -> np.ndarray:
        return np.array([v for v in self.scores if math.isfinite(v)], np.float64)

    @property
    def ok_rate(self) -> float:
        s = self.finite
        if not s.size:
            return math.nan
        right = int(np.sum(s >= self.tau) if self.want == "match" else np.sum(s < self.tau))
        return right / len(self.scores)

    def summary(self) -> dict[str, object]:
        s = self.finite
        return {"property": self.prop, "encoder": self.encoder, "want": self.want, "tau": self.tau,
                "n": int(s.size), "no_face": len(self.scores) - int(s.size), "min": float(s.min()) if s.size else None,
                "median": float(np.median(s)) if s.size else None, "max": float(s.max()) if s.size else None,
                "ok_rate": self.ok_rate}

    def describe(self) -> str:
        s = self.finite
        if not s.size:
            return f"{self.prop} ({self.encoder}): not measured (no face found in the templates)"
        side = "at or above" if self.want == "match" else "below"
        missing = f", {len(self.scores) - s.size} without a face" if s.size < len(self.scores) else ""
        return (f"{self.prop} ({self.encoder}): {self.ok_rate:.0%} of {len(self.scores)} pairs {side} tau "
                f"{self.tau:.2f} (cosine {s.min():.3f}-{s.max():.3f}, median {np.median(s):.3f}{missing})")


@dataclass(frozen=True)
class Assessment:
    """The required properties measured on the sources' people under the assessment keys."""

    backbone_state: str
    transform: str
    persons: int
    min_ok_rate: float
    scores: tuple[PropertyScores, ...]
    templates: tuple[Template, ...] = field(default=(), repr=False, compare=False)  # what was scored

    def failures(self) -> list[PropertyScores]:
        """Required properties below ``min_ok_rate`` (or not measurable) under a gating encoder."""
        return [p for p in self.scores if p.prop in REQUIRED_PROPERTIES
                and not (p.ok_rate >= self.min_ok_rate)]

    @property
    def passed(self) -> bool:
        return self.persons >= 2 and not self.failures()

    def reason(self) -> str:
        if self.persons < 2:
            return ("cancelable templates cannot be assessed: they need at least two source people with two "
                    "photos each; add photos")
        if self.passed:
            return f"every required property reaches {self.min_ok_rate:.0%} on {self.persons} people"
        bad = "; ".join(p.describe() for p in self.failures())
        return (f"cancelable templates refused: on this backbone ({self.transform}) the measured properties fall "
                f"short of {self.min_ok_rate:.0%} on {self.persons} source people under two assessment keys: "
                f"{bad}. The backbone's synthetic faces are not told apart by the encoder the way real people "
                "are (docs/privacy_modes.md); use a backbone that renders distinct new identities, or more "
                "source people")

    def rows(self) -> list[dict[str, object]]:
        return [{**p.summary(), "required": p.prop in REQUIRED_PROPERTIES,
                 "passed": p.prop not in REQUIRED_PROPERTIES or p.ok_rate >= self.min_ok_rate} for p in self.scores]


class CancelableEnroller:
    """Makes and compares cancelable templates on a fitted backbone."""

    def __init__(self, pop: Population, guard: Guard, probe: IdentityProbe,
                 knobs: CancelableKnobs = CancelableKnobs(), scale: FactorScale | None = None) -> None:
        self.pop, self.guard, self.probe, self.knobs = pop, guard, probe, knobs
        self.scale = scale or pop.scale()
        self._transforms: dict[str, KeyTransform] = {}
        self._assessment: Assessment | None = None

    def transform(self, key: str) -> KeyTransform:
        kid = key_id(key)
        if kid not in self._transforms:
            self._transforms[kid] = key_transform(key, self.scale, self.pop.factor_names, self.knobs,
                                                  len(self.pop.hashes))
        return self._transforms[kid]

    # ------------------------------------------------------------------ the gate

    def assess(self) -> Assessment:
        """Measure the required properties on the sources (cached; about 30 renders)."""
        if self._assessment is None:
            persons = [p for p in self.pop.person_keys() if len(self.pop.photos_of(p)) >= 2]
            persons = persons[:self.knobs.assess_persons]
            faces = {f.content_hash: f for f in self.pop.faces}
            photos = {p: tuple(faces[h] for h in self.pop.photos_of(p)[:2]) for p in persons}
            scores: list[PropertyScores] = []
            templates: list[Template] = []
            if len(persons) >= 2:
                everyone = [faces[h] for p in persons for h in self.pop.photos_of(p)]
                emb = self.probe.embed_sources(everyone)
                owner = np.array([self.pop.persons[f.content_hash] for f in everyone])
                per_person = {e: {p: v[owner == p] for p in persons} for e, v in emb.items()}
                scores, templates = measure_properties(self, photos, ASSESSMENT_KEYS, per_person)
            self._assessment = Assessment(self.pop.backbone_state, self.knobs.transform, len(persons),
                                          self.knobs.min_ok_rate, tuple(scores), tuple(templates))
            log.info("cancelable assessment: %s", self._assessment.reason())
        return self._assessment

    def require_usable(self) -> Assessment:
        """The assessment, or ``CancelableUnavailableError`` with its measured reason."""
        assessment = self.assess()
        if not assessment.passed:
            raise CancelableUnavailableError(assessment.reason())
        return assessment

    # ------------------------------------------------------------------ templates

    def enroll(self, face: SourceFace, key: str, factors: Factors | None = None,
               revoked: Sequence[str] = ()) -> Template:
        """The template of ``face`` under ``key``; refuses revoked keys and unusable backbones.

        ``passed`` is False (nothing may be released) when the guard finds the
        template too close to a source or to the enrolled photo.
        """
        kid = key_id(key)
        if kid in set(revoked):
            raise CancelableKeyError(f"key {kid} has been revoked; enrol again with a new key")
        self.require_usable()
        tpl = self.template(face, key, factors)
        if not tpl.passed:
            log.warning("cancelable template of %s under key %s refused: %s", face.source_id, kid, tpl.reason)
        return tpl

    def template(self, face: SourceFace, key: str, factors: Factors | None = None) -> Template:
        """The template without the gate (measurements; ``enroll`` is the release path)."""
        kt = self.transform(key)
        if factors is None:
            factors = self.pop.factors.get(face.content_hash)
        if factors is None:
            factors = self.pop.backbone.decompose(self.pop.backbone.project([face])[0].latent)
        context = self.pop.factors[self.pop.hashes[kt.context_index]] if kt.context_index is not None else None
        fac = kt.apply(factors, self.scale, self.pop.factor_names, context)
        image = self.pop.backbone.synthesize([self.pop.backbone.compose(fac)])[0]
        original = {e: v[0] for e, v in self.probe.embed_sources([face]).items()}
        return self._judge(face, kt, image, original)

    def _judge(self, face: SourceFace, kt: KeyTransform, image: np.ndarray,
               original: Mapping[str, np.ndarray]) -> Template:
        verdict = self.guard.check([("template", image)])[0]
        reasons = [] if verdict.passed else [verdict.reason]
        sim_orig, max_src = {}, {}
        emb = self.probe([image]).vectors
        for ev in verdict.per_encoder:
            max_src[ev.encoder] = ev.max_similarity
            if ev.embedding is not None and ev.encoder in original:
                s = float(np.asarray(ev.embedding) @ original[ev.encoder])
                sim_orig[ev.encoder] = s
                if ev.gating and s >= ev.tau:
                    reasons.append(f"{ev.encoder}: similarity {s:.3f} to the enrolled photo reaches tau {ev.tau:.3f}")
        tid = "cxl-" + hashlib.sha256(f"{kt.key_id}/{face.content_hash}/{self.pop.backbone_state}/"
                                      f"{self.knobs}".encode()).hexdigest()[:16]
        return Template(tid, kt.key_id, face.content_hash, not reasons,
                        "passes the guard and differs from the enrolled photo" if not reasons else "; ".join(reasons),
                        self.knobs.transform, {e: v[0] for e, v in emb.items()}, sim_orig, max_src, image)


def template_similarity(a: Template, b: Template) -> dict[str, float]:
    """Cosine between two templates per encoder (NaN when either has no face)."""
    out = {}
    for enc in a.embeddings:
        if enc in b.embeddings:
            va, vb = a.embeddings[enc], b.embeddings[enc]
            out[enc] = float(va @ vb) if np.all(np.isfinite(va)) and np.all(np.isfinite(vb)) else math.nan
    return out


def measure_properties(enroller: CancelableEnroller, photos: Mapping[str, Sequence[SourceFace]],
                       keys: tuple[str, str],
                       all_photo_embeddings: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[
                           list[PropertyScores], list[Template]]:
    """Scores of the five properties on persons with two photos each (no gate: this is the measurement).

    ``photos[person] = (p1, p2)``; ``all_photo_embeddings[encoder][person]``
    is ``[n, dim]`` of every photo of that person (irreversibility compares
    each template with all of them). Properties::

        consistency       T_k1(p1) vs T_k1(p2)          want match
        unlinkability     T_k1(p1) vs T_k2(p1)          want no match
        revocability      T_k1(p1) vs T_k2(p2)          want no match (old template vs re-enrolment)
        irreversibility   T_k(p) vs every photo of the person, max   want no match
        discriminability  T_k(p1, A) vs T_k(p1, B), A != B          want no match

    Templates refused by the guard are still scored (they show what the
    refusal prevented) and are all returned.
    """
    k1, k2 = keys
    taus = {m.encoder.name: m.tau for m in enroller.guard.members if m.gating}
    t: dict[tuple[str, int, int], Template] = {}
    for person, (p1, p2) in photos.items():
        t[(person, 1, 1)] = enroller.template(p1, k1)
        t[(person, 2, 1)] = enroller.template(p2, k1)
        t[(person, 1, 2)] = enroller.template(p1, k2)
        t[(person, 2, 2)] = enroller.template(p2, k2)
    out = []
    persons = list(photos)
    for enc, tau in taus.items():
        def sim(a: Template, b: Template) -> float:
            return template_similarity(a, b).get(enc, math.nan)

        cons = [sim(t[(p, 1, k)], t[(p, 2, k)]) for k in (1, 2) for p in persons]
        unl = [sim(t[(p, i, 1)], t[(p, i, 2)]) for i in (1, 2) for p in persons]
        rev = [sim(t[(p, 1, 1)], t[(p, 2, 2)]) for p in persons] + [sim(t[(p, 2, 1)], t[(p, 1, 2)]) for p in persons]
        irr = []
        for (p, _, _), tpl in t.items():
            e = tpl.embeddings.get(enc)
            irr.append(float(np.max(all_photo_embeddings[enc][p] @ e)) if e is not None and np.all(np.isfinite(e))
                       else math.nan)
        disc = [sim(t[(a, 1, k)], t[(b, 1, k)]) for k in (1, 2) for i, a in enumerate(persons)
                for b in persons[i + 1:]]
        out += [PropertyScores("consistency", enc, "match", tau, tuple(cons)),
                PropertyScores("unlinkability", enc, "no_match", tau, tuple(unl)),
                PropertyScores("revocability", enc, "no_match", tau, tuple(rev)),
                PropertyScores("irreversibility", enc, "no_match", tau, tuple(irr)),
                PropertyScores("discriminability", enc, "no_match", tau, tuple(disc))]
    return out, list(t.values())

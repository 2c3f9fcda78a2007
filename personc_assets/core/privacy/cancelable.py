"""Cancelable faces: a user-held key turns a face into a revocable synthetic template.

Key handling
------------
The key is a string the user keeps. It is never stored or logged: only its
``key_id = sha256(sha256(key))`` (hex, first 24 characters) is, so a template
can be traced to "the same key" and a key can be revoked. The code seed is
``HMAC-SHA256(key, "personc/cancelable/v1|" + backbone state)``: the same key
gives the same code on the same fitted backbone, another key an unrelated
one. Keys shorter than ``KEY_MIN_LENGTH`` characters are refused, because the
key id (a fast hash) lets anyone holding it test guesses of a weak key.

Synthetic code
--------------
The seed draws a synthetic face in factor space: per identity factor a
Dirichlet-weighted mix of ``code_persons`` source persons' mean factors, whose
whitened deviation from the population mean is rescaled to a typical
person's length (a plain average of several people regresses to the mean
face and makes every code look alike). With ``context="key"`` the seed also
picks the source whose backbone-private context (hair, background) every
template of this key uses; ``"own"`` keeps the photo's own context.

Template
--------
With ``mu``, ``x`` the face's and ``c`` the code's factors, per identity factor::

    y = mu + sqrt(1 - beta^2) * (x - mu) + beta * (c - mu)

(variance-preserving: a face of typical spread stays typical). ``beta`` is
the code's share. Two photos of one person differ by ``sqrt(1-beta^2) * (x1 - x2)``,
one face under two keys by ``beta * (c1 - c2)``, a template and its face by
``(sqrt(1-beta^2) - 1) (x - mu) + beta (c - mu)``.

Irreversibility is enforced, not hoped for: each template is checked by the
guard (all sources) and against the enrolled photo; ``beta`` climbs the
``beta_ladder`` until it passes, and enrolment fails closed when no rung
does. Measured trade-offs (``measure_properties``) are in docs/privacy_modes.md.

Whoever holds the key and the fitted backbone can recompute the code and so
invert the blend: the key is a secret, like a password.
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
CODE_DOMAIN = b"personc/cancelable/v1|"
ContextMode = Literal["own", "key"]
CONTEXT_MODES: tuple[str, ...] = ("own", "key")


class CancelableKeyError(ValueError):
    """A key is too weak or revoked (the message says which and what to do)."""


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


def derive_seed(key: str, backbone_state: str) -> int:
    """64-bit seed ``HMAC-SHA256(key, domain | backbone_state)``."""
    mac = hmac.new(_check_key(key), CODE_DOMAIN + backbone_state.encode(), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big")


@dataclass(frozen=True)
class CancelableKnobs:
    """Knobs of cancelable templates (defaults measured on ../shared/faces)."""

    beta_ladder: tuple[float, ...] = (0.9, 0.95, 1.0)
    code_persons: int = 4
    context: ContextMode = "own"

    def __post_init__(self) -> None:
        if not self.beta_ladder or any(not 0.0 < b <= 1.0 for b in self.beta_ladder):
            raise ValueError(f"beta_ladder must hold values in (0, 1], got {self.beta_ladder}")
        if list(self.beta_ladder) != sorted(self.beta_ladder):
            raise ValueError(f"beta_ladder must be increasing, got {self.beta_ladder}")
        if self.code_persons < 1:
            raise ValueError(f"code_persons must be >= 1, got {self.code_persons}")
        if self.context not in CONTEXT_MODES:
            raise ValueError(f"context must be one of {CONTEXT_MODES}, got {self.context!r}")


@dataclass(frozen=True)
class SyntheticCode:
    """The code of one key on one fitted backbone (never stored: recomputed from the key)."""

    key_id: str
    factors: Mapping[str, np.ndarray] = field(repr=False)
    context_source: str | None        # source hash supplying the context ("key" mode)


def synthetic_code(pop: Population, scale: FactorScale, key: str,
                   knobs: CancelableKnobs = CancelableKnobs()) -> SyntheticCode:
    """The key's synthetic face in factor space (see the module docstring)."""
    rng = np.random.default_rng(derive_seed(key, pop.backbone_state))
    persons = list(pop.person_keys())
    k = min(knobs.code_persons, len(persons))
    picks = [persons[i] for i in rng.permutation(len(persons))[:k]]
    means = {p: pop.person_mean(p) for p in persons}
    typical = {f: float(np.sqrt(np.mean([np.sum(((means[p][f] - scale.mu[f]) / scale.sd[f]) ** 2)
                                         for p in persons]))) for f in pop.factor_names}
    code = {}
    for f in pop.factor_names:
        w = rng.dirichlet(np.full(k, 2.0))
        mix = sum(wi * means[p][f] for wi, p in zip(w, picks))
        dz = (mix - scale.mu[f]) / scale.sd[f]
        norm = float(np.linalg.norm(dz))
        dz = dz * (typical[f] / norm) if norm > 1e-12 else dz
        code[f] = scale.mu[f] + scale.sd[f] * dz
    context = None
    if knobs.context == "key":
        hashes = pop.hashes
        context = hashes[int(rng.integers(len(hashes)))]
    return SyntheticCode(key_id(key), code, context)


def blend(factors: Factors, code: SyntheticCode, scale: FactorScale, names: Sequence[str], beta: float,
          context: Factors | None = None) -> dict[str, np.ndarray]:
    """Template factors ``mu + sqrt(1-beta^2)(x-mu) + beta(c-mu)``; context from ``context`` when given."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    a = math.sqrt(max(0.0, 1.0 - beta * beta))
    out = dict(factors)
    for f in names:
        x = np.asarray(factors[f], np.float64)
        y = scale.mu[f] + a * (x - scale.mu[f]) + beta * (np.asarray(code.factors[f]) - scale.mu[f])
        out[f] = y.reshape(np.shape(factors[f])).astype(np.asarray(factors[f]).dtype)
    if context is not None:
        out.update({k: v for k, v in context.items() if k.startswith("_")})
    return out


@dataclass(frozen=True)
class Template:
    """A cancelable template: the synthetic face of one photo under one key."""

    template_id: str
    key_id: str
    input_hash: str
    passed: bool
    beta: float
    reason: str
    embeddings: Mapping[str, np.ndarray] = field(repr=False)  # per encoder [dim] (NaN: no face)
    sim_original: Mapping[str, float]
    max_sim_sources: Mapping[str, float]
    image: np.ndarray = field(repr=False)


class CancelableEnroller:
    """Makes and compares cancelable templates on a fitted backbone."""

    def __init__(self, pop: Population, guard: Guard, probe: IdentityProbe,
                 knobs: CancelableKnobs = CancelableKnobs(), scale: FactorScale | None = None) -> None:
        self.pop, self.guard, self.probe, self.knobs = pop, guard, probe, knobs
        self.scale = scale or pop.scale()
        self._codes: dict[str, SyntheticCode] = {}

    def code(self, key: str) -> SyntheticCode:
        kid = key_id(key)
        if kid not in self._codes:
            self._codes[kid] = synthetic_code(self.pop, self.scale, key, self.knobs)
        return self._codes[kid]

    def enroll(self, face: SourceFace, key: str, factors: Factors | None = None,
               revoked: Sequence[str] = ()) -> Template:
        """The template of ``face`` under ``key``; ``passed`` is False when no beta passes the guard."""
        code = self.code(key)
        if code.key_id in set(revoked):
            raise CancelableKeyError(f"key {code.key_id} has been revoked; enrol again with a new key")
        if factors is None:
            factors = self.pop.factors.get(face.content_hash)
        if factors is None:
            factors = self.pop.backbone.decompose(self.pop.backbone.project([face])[0].latent)
        context = self.pop.factors[code.context_source] if code.context_source else None
        original = {e: v[0] for e, v in self.probe.embed_sources([face]).items()}
        last: Template | None = None
        for beta in self.knobs.beta_ladder:
            fac = blend(factors, code, self.scale, self.pop.factor_names, beta, context)
            image = self.pop.backbone.synthesize([self.pop.backbone.compose(fac)])[0]
            last = self._judge(face, code, beta, image, original)
            if last.passed:
                return last
        assert last is not None
        log.warning("cancelable template of %s under key %s refused: %s", face.source_id, code.key_id, last.reason)
        return last

    def _judge(self, face: SourceFace, code: SyntheticCode, beta: float, image: np.ndarray,
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
        tid = "cxl-" + hashlib.sha256(f"{code.key_id}/{face.content_hash}/{self.pop.backbone_state}/{beta}/"
                                      f"{self.knobs}".encode()).hexdigest()[:16]
        return Template(tid, code.key_id, face.content_hash, not reasons, beta,
                        "passes the guard and differs from the enrolled photo" if not reasons else "; ".join(reasons),
                        {e: v[0] for e, v in emb.items()}, sim_orig, max_src, image)


def template_similarity(a: Template, b: Template) -> dict[str, float]:
    """Cosine between two templates per encoder (NaN when either has no face)."""
    out = {}
    for enc in a.embeddings:
        if enc in b.embeddings:
            va, vb = a.embeddings[enc], b.embeddings[enc]
            out[enc] = float(va @ vb) if np.all(np.isfinite(va)) and np.all(np.isfinite(vb)) else math.nan
    return out


# ---------------------------------------------------------------------------- properties

@dataclass(frozen=True)
class PropertyScores:
    """Score distribution of one property under one encoder.

    ``want`` says which side of tau the property needs: "match" (at or above)
    or "no_match" (below); ``ok_rate`` is the share of pairs on that side.
    """

    prop: str
    encoder: str
    want: str
    tau: float
    scores: tuple[float, ...]

    @property
    def ok_rate(self) -> float:
        s = np.array([v for v in self.scores if math.isfinite(v)])
        if not s.size:
            return math.nan
        return float(np.mean(s >= self.tau) if self.want == "match" else np.mean(s < self.tau))

    def summary(self) -> dict[str, object]:
        s = np.array([v for v in self.scores if math.isfinite(v)])
        return {"property": self.prop, "encoder": self.encoder, "want": self.want, "tau": self.tau,
                "n": int(s.size), "min": float(s.min()) if s.size else None,
                "median": float(np.median(s)) if s.size else None, "max": float(s.max()) if s.size else None,
                "ok_rate": self.ok_rate}


def measure_properties(enroller: CancelableEnroller, photos: Mapping[str, Sequence[SourceFace]],
                       keys: tuple[str, str],
                       all_photo_embeddings: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[
                           list[PropertyScores], list[Template]]:
    """Scores of the five properties on persons with two photos each.

    ``photos[person] = (p1, p2)``; ``all_photo_embeddings[encoder][person]``
    is ``[n, dim]`` of every photo of that person (irreversibility compares
    each template with all of them). Properties::

        consistency       T_k1(p1) vs T_k1(p2)          want match
        unlinkability     T_k1(p1) vs T_k2(p1)          want no match
        revocability      T_k1(p1) vs T_k2(p2)          want no match (old template vs re-enrolment)
        irreversibility   T_k(p) vs every photo of the person, max   want no match
        discriminability  T_k1(p1, A) vs T_k1(p1, B), A != B          want no match

    Templates refused by the guard are still scored (they show what the
    refusal prevented) and are all returned.
    """
    k1, k2 = keys
    taus = {m.encoder.name: m.tau for m in enroller.guard.members if m.gating}
    t: dict[tuple[str, int, int], Template] = {}
    for person, (p1, p2) in photos.items():
        t[(person, 1, 1)] = enroller.enroll(p1, k1)
        t[(person, 2, 1)] = enroller.enroll(p2, k1)
        t[(person, 1, 2)] = enroller.enroll(p1, k2)
        t[(person, 2, 2)] = enroller.enroll(p2, k2)
    out = []
    persons = list(photos)
    for enc, tau in taus.items():
        def sim(a: Template, b: Template) -> float:
            return template_similarity(a, b).get(enc, math.nan)

        cons = [sim(t[(p, 1, 1)], t[(p, 2, 1)]) for p in persons] + [sim(t[(p, 1, 2)], t[(p, 2, 2)]) for p in persons]
        unl = [sim(t[(p, 1, 1)], t[(p, 1, 2)]) for p in persons] + [sim(t[(p, 2, 1)], t[(p, 2, 2)]) for p in persons]
        rev = [sim(t[(p, 1, 1)], t[(p, 2, 2)]) for p in persons] + [sim(t[(p, 2, 1)], t[(p, 1, 2)]) for p in persons]
        irr = []
        for (p, _, _), tpl in t.items():
            e = tpl.embeddings.get(enc)
            irr.append(float(np.max(all_photo_embeddings[enc][p] @ e)) if e is not None and np.all(np.isfinite(e))
                       else math.nan)
        disc = [sim(t[(a, 1, 1)], t[(b, 1, 1)]) for i, a in enumerate(persons) for b in persons[i + 1:]]
        out += [PropertyScores("consistency", enc, "match", tau, tuple(cons)),
                PropertyScores("unlinkability", enc, "no_match", tau, tuple(unl)),
                PropertyScores("revocability", enc, "no_match", tau, tuple(rev)),
                PropertyScores("irreversibility", enc, "no_match", tau, tuple(irr)),
                PropertyScores("discriminability", enc, "no_match", tau, tuple(disc))]
    return out, list(t.values())

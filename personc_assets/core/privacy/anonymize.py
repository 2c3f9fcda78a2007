"""Anonymize one face: keep what is not identity, replace what is.

Given a face ``x`` (its factors from ``Backbone.decompose``), the output keeps
``x``'s backbone-private context (pose, hair, ears, background: the
``_``-prefixed entries) and moves each identity factor toward a mix drawn
from the source population::

    out_f = (1 - alpha_f) * x_f + alpha_f * mix_f
    mix_f = (1 - mean_pull) * sum_i w_i * donor_i[f] + mean_pull * mean[f]

Strength
--------
``strength`` in [0, 1] is the share of identity (per the disentanglement
ranking's per-unit shares) that is replaced. Factors are taken in ranking
order, most identifying first; each is replaced fully while the cumulative
share stays within the strength, the next one partly, the rest not at all::

    alpha_f = clip((strength - share of the factors ranked before f) / share_f, 0, 1)

so 0 returns the face unchanged and 1 replaces every identity factor.
Lower strength keeps more of the face (and its attributes), higher strength
moves further from the person.

Donors
------
Donors are persons other than the face's own (the face's person when it is
a source, plus every source person the encoders match at or above tau).
They are ranked by compatibility with the face: same gender and nearby age
when the labeller is available (mixing a bearded face into a made-up one
breaks both attributes and realism), similar head turn and mouth openness.
Each factor mixes ``donors_per_factor`` people of the ``pool_size`` most
compatible ones, with a different primary per factor.

Guard
-----
Every attempt is judged by the PersonC guard (all sources, every encoder,
fail closed) and additionally against the original photo itself; only a
passing attempt is returned as ``passed``. Attempts that flip the labelled
gender are refused too when ``keep_gender`` is set. When every attempt at a
strength fails, the strength is raised by ``escalate_step`` up to
``max_strength`` (equal to the strength by default: no escalation).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..guard import Guard, Verdict
from ..recipes import estimate_yaw, make_recipe, mix_factors, mouth_openness
from ..types import Factors, Recipe, SourceFace
from .attributes import AgeGenderLabeller, FaceAttributes
from .disentangle import FactorRanking
from .population import IdentityProbe, Population

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnonymizeKnobs:
    """Knobs of the anonymizer (defaults measured on ../shared/faces, see docs/privacy_modes.md)."""

    strength: float = 0.75
    max_strength: float | None = None      # None: no escalation beyond ``strength``
    escalate_step: float = 0.125
    attempts: int = 4                      # donor draws per strength
    donors_per_factor: int = 3
    primary_weight: float = 0.5
    pool_size: int = 5
    mean_pull: float = 0.0                 # 0.15 measured higher similarity to the original (mean face)
    keep_gender: bool = True
    repel: float = 0.5                     # push away from sources the guard found too close (0: off)
    age_tolerance: float = 10.0            # years counted as one unit of incompatibility
    yaw_tolerance: float = 0.05
    mouth_tolerance: float = 0.04

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        top = self.strength if self.max_strength is None else self.max_strength
        if not self.strength <= top <= 1.0:
            raise ValueError(f"max_strength must be in [strength, 1], got {self.max_strength}")
        if self.attempts < 1 or self.donors_per_factor < 1 or self.pool_size < 1:
            raise ValueError("attempts, donors_per_factor and pool_size must be >= 1")
        if not 0.0 < self.primary_weight <= 1.0 or not 0.0 <= self.mean_pull < 1.0:
            raise ValueError("primary_weight must be in (0, 1] and mean_pull in [0, 1)")
        if self.repel < 0:
            raise ValueError(f"repel must be >= 0, got {self.repel}")
        if self.escalate_step <= 0:
            raise ValueError(f"escalate_step must be > 0, got {self.escalate_step}")

    def ladder(self) -> list[float]:
        top = self.strength if self.max_strength is None else self.max_strength
        out, s = [], self.strength
        while s < top - 1e-9:
            out.append(round(s, 6))
            s += self.escalate_step
        return out + [round(top, 6)]


def strength_alphas(ranking: FactorRanking, strength: float) -> dict[str, float]:
    """Blend weight ``alpha_f`` of each identity factor at ``strength`` (see module docstring)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    shares = ranking.shares()
    out, before = {}, 0.0
    for f in ranking.order():
        share = shares[f]
        out[f] = 1.0 if share <= 0 and strength >= 1.0 else float(np.clip((strength - before) / max(share, 1e-12), 0, 1))
        before += share
    return out


@dataclass(frozen=True)
class Attempt:
    """One anonymization attempt and why it passed or failed."""

    attempt: int
    strength: float
    passed: bool
    reason: str
    recipe: Recipe
    alphas: Mapping[str, float]
    sim_original: Mapping[str, float]      # per encoder, cosine to the original photo
    max_sim_sources: Mapping[str, float]   # per encoder, max cosine to any source
    attributes: FaceAttributes | None
    image: np.ndarray = field(repr=False)
    too_close: tuple[str, ...] = ()        # sources the guard found at or above tau


@dataclass(frozen=True)
class Anonymized:
    """The outcome for one face: the passing attempt (or the last one) and every attempt made."""

    output_id: str
    input_hash: str
    passed: bool
    chosen: Attempt
    attempts: tuple[Attempt, ...]
    input_attributes: FaceAttributes | None
    excluded_persons: tuple[str, ...]

    @property
    def image(self) -> np.ndarray | None:
        """The anonymized face, or None when no attempt passed (fail closed)."""
        return self.chosen.image if self.passed else None


@dataclass(frozen=True)
class _Donor:
    content_hash: str
    person: str
    yaw: float
    mouth: float
    attrs: FaceAttributes | None


class Anonymizer:
    """Feature-preserving de-identification on a fitted backbone (see the module docstring)."""

    def __init__(self, pop: Population, ranking: FactorRanking, guard: Guard, probe: IdentityProbe,
                 labeller: AgeGenderLabeller | None = None,
                 source_attributes: Mapping[str, FaceAttributes | None] | None = None,
                 knobs: AnonymizeKnobs = AnonymizeKnobs()) -> None:
        if set(ranking.identity_factors()) != set(pop.factor_names):
            raise ValueError(f"the ranking covers {sorted(ranking.identity_factors())} but the backbone has "
                             f"{sorted(pop.factor_names)}; rank the factors of this backbone first")
        if ranking.backbone_state != pop.backbone_state:
            raise ValueError("the ranking was measured on another fitted backbone "
                             f"({ranking.backbone_state[:12]} != {pop.backbone_state[:12]}); re-rank")
        self.pop, self.ranking, self.guard, self.probe = pop, ranking, guard, probe
        self.labeller, self.knobs = labeller, knobs
        attrs = dict(source_attributes or {})
        self.mean = pop.backbone.population_mean()
        self._donors = [_Donor(f.content_hash, pop.persons[f.content_hash], estimate_yaw(f.landmarks),
                               mouth_openness(f.landmarks), attrs.get(f.content_hash)) for f in pop.faces]
        self._taus = {m.encoder.name: m.tau for m in guard.members if m.gating}
        self._source_embeddings: dict[str, np.ndarray] | None = None

    def source_embeddings(self) -> dict[str, np.ndarray]:
        """``{encoder: [N, dim]}`` of the sources (computed once)."""
        if self._source_embeddings is None:
            self._source_embeddings = self.probe.embed_sources(self.pop.faces)
        return self._source_embeddings

    # ------------------------------------------------------------------ donors

    def _excluded(self, face: SourceFace, original: Mapping[str, np.ndarray]) -> set[str]:
        """The face's own person: its source label and every person an encoder matches at tau."""
        out = set()
        if face.content_hash in self.pop.persons:
            out.add(self.pop.persons[face.content_hash])
        src = self.source_embeddings()
        for enc, tau in self._taus.items():
            if enc in original and enc in src:
                sims = src[enc] @ original[enc]
                out.update(self.pop.persons[h] for h, s in zip(self.pop.hashes, sims) if s >= tau)
        return out

    def _pool(self, face: SourceFace, attrs: FaceAttributes | None, excluded: set[str]) -> list[_Donor]:
        k = self.knobs
        yaw, mouth = estimate_yaw(face.landmarks), mouth_openness(face.landmarks)

        def cost(d: _Donor) -> float:
            c = abs(d.yaw - yaw) / k.yaw_tolerance + abs(d.mouth - mouth) / k.mouth_tolerance
            if attrs is not None and d.attrs is not None:
                c += 10.0 * (d.attrs.gender != attrs.gender) + abs(d.attrs.age - attrs.age) / k.age_tolerance
            return c

        best: dict[str, tuple[float, _Donor]] = {}
        for d in self._donors:
            if d.person in excluded:
                continue
            c = cost(d)
            if d.person not in best or (c, d.content_hash) < (best[d.person][0], best[d.person][1].content_hash):
                best[d.person] = (c, d)
        ranked = [d for _, d in sorted(best.values(), key=lambda t: (t[0], t[1].content_hash))]
        if attrs is not None and self.knobs.keep_gender:
            same = [d for d in ranked if d.attrs is not None and d.attrs.gender == attrs.gender]
            ranked = same or ranked  # only people of the same labelled gender, when there are any
        if not ranked:
            raise ValueError("no donor person left after excluding the face's own person; add sources")
        return ranked[:max(k.pool_size, 1)]

    def _recipe(self, face: SourceFace, pool: list[_Donor], seed: int) -> Recipe:
        k, rng = self.knobs, np.random.default_rng(seed)
        names = self.pop.factor_names
        order = [pool[i] for i in rng.permutation(len(pool))]
        components = {}
        for j, f in enumerate(names):
            primary = order[j % len(order)]
            others = [d for d in order if d.person != primary.person]
            picks = [others[i] for i in rng.permutation(len(others))[:k.donors_per_factor - 1]]
            if picks:
                rest = (1.0 - k.primary_weight) * rng.dirichlet(np.full(len(picks), 4.0))
                parts = [(primary.content_hash, k.primary_weight)] + [(d.content_hash, float(w))
                                                                        for d, w in zip(picks, rest)]
            else:
                parts = [(primary.content_hash, 1.0)]
            components[f] = parts
        return make_recipe(seed, components, k.mean_pull, face.content_hash)

    # ---------------------------------------------------------------- one face

    def candidate(self, face: SourceFace, factors: Factors, pool: list[_Donor], strength: float,
                  seed: int, repel_from: Sequence[str] = ()) -> tuple[dict[str, np.ndarray], Recipe, dict[str, float]]:
        """Factors of one attempt (no rendering).

        ``repel_from`` lists sources an earlier attempt came too close to: the
        replacement target is pushed away from their mean by ``knobs.repel``
        (``target + repel * (target - mean of those sources)``).
        """
        recipe = self._recipe(face, pool, seed)
        table = dict(self.pop.factors)
        table[face.content_hash] = factors
        mixed = mix_factors(recipe, table, self.mean)
        alphas = strength_alphas(self.ranking, strength)
        repel = [h for h in dict.fromkeys(repel_from) if h in self.pop.factors]
        out = dict(factors)
        for f in self.pop.factor_names:
            x = np.asarray(factors[f], np.float64)
            target = np.asarray(mixed[f], np.float64)
            if repel and self.knobs.repel > 0:
                near = np.mean([np.asarray(self.pop.factors[h][f], np.float64) for h in repel], axis=0)
                target = target + self.knobs.repel * (target - near)
            out[f] = ((1.0 - alphas[f]) * x + alphas[f] * target).astype(np.asarray(factors[f]).dtype)
        return out, recipe, alphas

    def anonymize(self, face: SourceFace, factors: Factors | None = None, seed: int = 0) -> Anonymized:
        """Anonymize ``face`` (a source or any aligned face); fail closed when no attempt passes."""
        if factors is None:
            factors = self.pop.factors.get(face.content_hash)
        if factors is None:
            proj = self.pop.backbone.project([face])[0]
            factors = self.pop.backbone.decompose(proj.latent)
        original = {e: v[0] for e, v in self.probe.embed_sources([face]).items()}
        attrs_in = self.labeller.label([face.aligned])[0] if self.labeller else None
        excluded = self._excluded(face, original)
        pool = self._pool(face, attrs_in, excluded)
        attempts: list[Attempt] = []
        too_close: list[str] = []
        for strength in self.knobs.ladder():
            for a in range(self.knobs.attempts):
                s = _seed(face.content_hash, seed, strength, a)
                out, recipe, alphas = self.candidate(face, factors, pool, strength, s, too_close)
                image = self.pop.backbone.synthesize([self.pop.backbone.compose(out)])[0]
                attempt = self._judge(len(attempts), strength, recipe, alphas, image, original, attrs_in)
                attempts.append(attempt)
                too_close += [h for h in attempt.too_close if h not in too_close]
                if attempt.passed:
                    return self._result(face, seed, True, attempt, attempts, attrs_in, excluded)
        return self._result(face, seed, False, attempts[-1], attempts, attrs_in, excluded)

    def _judge(self, index: int, strength: float, recipe: Recipe, alphas: Mapping[str, float],
               image: np.ndarray, original: Mapping[str, np.ndarray],
               attrs_in: FaceAttributes | None) -> Attempt:
        verdict: Verdict = self.guard.check([(f"anon-{index}", image)])[0]
        sim_orig: dict[str, float] = {}
        max_src: dict[str, float] = {}
        reasons = [] if verdict.passed else [verdict.reason]
        too_close = []
        for ev in verdict.per_encoder:
            max_src[ev.encoder] = ev.max_similarity
            if ev.gating and ev.nearest_source and ev.max_similarity >= ev.tau:
                too_close.append(ev.nearest_source)
            if ev.embedding is not None and ev.encoder in original:
                sim = float(np.asarray(ev.embedding) @ original[ev.encoder])
                sim_orig[ev.encoder] = sim
                if ev.gating and sim >= ev.tau:
                    reasons.append(f"{ev.encoder}: similarity {sim:.3f} to the original reaches tau {ev.tau:.3f}")
            elif ev.gating:
                sim_orig[ev.encoder] = math.nan
        attrs = self.labeller.label([image])[0] if self.labeller else None
        if self.knobs.keep_gender and attrs_in is not None:
            if attrs is None:
                reasons.append("the labeller found no face in the output")
            elif attrs.gender != attrs_in.gender:
                reasons.append(f"gender changed ({attrs_in.gender} -> {attrs.gender})")
        passed = not reasons
        return Attempt(index, strength, passed, "passes the guard against the sources and the original"
                       if passed else "; ".join(reasons), recipe, dict(alphas), sim_orig, max_src, attrs, image,
                       tuple(too_close))

    def _result(self, face: SourceFace, seed: int, passed: bool, chosen: Attempt, attempts: list[Attempt],
                attrs_in: FaceAttributes | None, excluded: set[str]) -> Anonymized:
        oid = "anon-" + hashlib.sha256(f"{face.content_hash}/{self.pop.backbone_state}/{seed}/"
                                       f"{self.knobs}".encode()).hexdigest()[:16]
        if not passed:
            log.warning("anonymization of %s failed after %d attempts: %s", face.source_id, len(attempts),
                        chosen.reason)
        return Anonymized(oid, face.content_hash, passed, chosen, tuple(attempts), attrs_in,
                          tuple(sorted(excluded)))


def _seed(content_hash: str, seed: int, strength: float, attempt: int) -> int:
    digest = hashlib.sha256(f"{content_hash}/{seed}/{strength:.6f}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# --------------------------------------------------------------------------- the curve

@dataclass(frozen=True)
class CurvePoint:
    """Identity distance and attribute preservation at one strength (means over faces)."""

    strength: float
    n: int
    sim_original: Mapping[str, float]     # mean cosine to the original, per encoder
    guard_pass_rate: float                # share passing guard + original check, first attempt
    gender_kept: float                    # share whose labelled gender is unchanged (NaN: no labeller)
    age_abs_diff: float                   # mean |age out - age in| in years (NaN: no labeller)
    undetected: int


def measure_strength_curve(anonymizer: Anonymizer, faces: Sequence[SourceFace],
                           strengths: Sequence[float], seed: int = 0) -> list[CurvePoint]:
    """One attempt per face and strength (no retries): the strength/identity/attribute trade-off."""
    out = []
    for s in strengths:
        sims: dict[str, list[float]] = {}
        passed, kept, ages, undetected = 0, [], [], 0
        for face in faces:
            factors = anonymizer.pop.factors.get(face.content_hash)
            if factors is None:
                factors = anonymizer.pop.backbone.decompose(anonymizer.pop.backbone.project([face])[0].latent)
            original = {e: v[0] for e, v in anonymizer.probe.embed_sources([face]).items()}
            attrs_in = anonymizer.labeller.label([face.aligned])[0] if anonymizer.labeller else None
            pool = anonymizer._pool(face, attrs_in, anonymizer._excluded(face, original))
            fac, recipe, alphas = anonymizer.candidate(face, factors, pool, s, _seed(face.content_hash, seed, s, 0))
            image = anonymizer.pop.backbone.synthesize([anonymizer.pop.backbone.compose(fac)])[0]
            att = anonymizer._judge(0, s, recipe, alphas, image, original, attrs_in)
            passed += att.passed
            for e, v in att.sim_original.items():
                if math.isfinite(v):
                    sims.setdefault(e, []).append(v)
                else:
                    undetected += 1
            if attrs_in is not None and att.attributes is not None:
                kept.append(att.attributes.gender == attrs_in.gender)
                ages.append(abs(att.attributes.age - attrs_in.age))
        out.append(CurvePoint(float(s), len(faces), {e: float(np.mean(v)) for e, v in sims.items()},
                              passed / max(len(faces), 1), float(np.mean(kept)) if kept else math.nan,
                              float(np.mean(ages)) if ages else math.nan, undetected))
        log.info("strength %.2f: sim to original %s, pass %.2f, gender kept %.2f, |dage| %.1f", s,
                 {e: round(v, 3) for e, v in out[-1].sim_original.items()}, out[-1].guard_pass_rate,
                 out[-1].gender_kept, out[-1].age_abs_diff)
    return out

"""Anonymize one face: keep what is not identity, replace what is.

Given a face ``x`` (its factors from ``Backbone.decompose``), the output keeps
``x``'s backbone-private context (pose, hair, ears, background: the
``_``-prefixed entries) and moves each identity factor ``f`` toward a target
``t_f`` built from the source population::

    out_f = (1 - alpha_f) * x_f + alpha_f * t_f

All of this happens in whitened coordinates (``FactorScale``: person-weighted
mean 0, unit spread per dimension), so that factors of different raw scales
are treated alike.

Target
------
A donor draw (a ``Recipe``) mixes, for each factor, ``donors_per_factor``
compatible people with a different primary per factor::

    mix_f = (1 - mean_pull) * sum_i w_i * donor_i[f] + mean_pull * mean[f]

A mix of several faces is closer to the population mean than any of them,
and near the mean every face looks like every other one to a face encoder
(on ../shared/faces the mean face scores 0.91-0.95 against one of the
sources, whoever's context it is rendered in). So the mix is rescaled to the
face's own distinctiveness: ``t_f = d * |x_f| * mix_f / |mix_f|`` with
``d = knobs.distinctiveness``: a new face as far from the mean as the one it
replaces, in the direction of the mix.

Steering
--------
Each attempt is rendered and judged (see Guard below). A rejected attempt
steers the next one, within the same donor draw: every source photo whose
similarity ``s`` exceeds ``tau - margin`` (the nearest photo of each person,
and the original photo) pushes the target away from its own factors::

    t <- t + repel * sum_k ((s_k - (tau - margin)) / margin) * (o - z_k) / |o - z_k|

(``o``: the attempt's whitened factors, ``z_k``: source ``k``'s), after
which each factor is rescaled to the distinctiveness again: the target turns
away from whoever the encoders still recognise, but keeps its distance from
the mean (a "new" face, not a caricature or an average). When the labeller
says the gender flipped (pushing away from every woman of the population
moves toward the men), the push loses its component toward the other gender
and the target moves ``gender_pull`` along the gender direction (the
difference of the persons' means of the two labelled genders). After
``steps`` attempts a new donor draw starts, up to ``attempts`` draws.

Strength
--------
``strength`` in [0, 1] is the share of identity (per the disentanglement
ranking's per-unit shares) that is replaced. Factors are taken in ranking
order, most identifying first; each is replaced fully while the cumulative
share stays within the strength, the next one partly, the rest not at all::

    alpha_f = clip((strength - share of the factors ranked before f) / share_f, 0, 1)

so 0 returns the face unchanged and 1 replaces every identity factor.
Lower strength keeps more of the face (and its attributes), higher strength
moves further from the person. Within a draw, each rejected attempt raises
the strength by ``escalate_step`` up to ``max_strength`` (equal to the
strength by default: no escalation), so more factors are swapped, in ranking
order, when the first ones were not enough.

Donors
------
Donors are persons other than the face's own (the face's person when it is
a source, plus every source person the encoders match at or above tau).
Their photos are ranked by compatibility with the face: same gender and
nearby age when the labeller is available (mixing a bearded face into a
made-up one breaks both attributes and realism), similar head turn and mouth
openness. The pool takes ``pool_size`` photos round robin over the persons
(each person's most compatible photo first), so that with only two people in
reach the draws still differ.

Guard
-----
Every attempt is judged by the PersonC guard (all sources, every encoder,
fail closed) and additionally against the original photo itself; only a
passing attempt is returned as ``passed``. Attempts that flip the labelled
gender are refused too when ``keep_gender`` is set. When no attempt passes,
nothing is released and ``chosen`` is the attempt that came closest.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

import numpy as np

from ..faces.align import estimate_yaw
from ..guard import Guard, Verdict
from ..recipes import make_recipe, mix_factors, mouth_openness
from ..types import Factors, Recipe, SourceFace
from ..faces.age_gender import AgeGenderLabeller, FaceAttributes
from .disentangle import FactorRanking
from .population import FactorScale, IdentityProbe, Population

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnonymizeKnobs:
    """Knobs of the anonymizer (defaults measured on ../shared/faces, see docs/privacy_modes.md)."""

    strength: float = 1.0                  # share of identity replaced (ranking order)
    max_strength: float | None = None      # None: no escalation beyond ``strength``
    escalate_step: float = 0.125           # strength added after each rejected attempt of a draw
    attempts: int = 3                      # donor draws per face
    steps: int = 8                         # guard-judged, steered attempts per donor draw
    donors_per_factor: int = 3
    primary_weight: float = 0.5
    pool_size: int = 8                     # donor photos (several per person) a draw picks from
    mean_pull: float = 0.0                 # 0.15 measured higher similarity to the original (mean face)
    distinctiveness: float = 1.0           # target's distance from the mean, in units of the face's own
    repel: float = 4.0                     # whitened units per step, per source at tau (0: no steering)
    repel_margin: float = 0.03             # sources above tau - margin repel
    gender_pull: float = 2.0               # whitened units toward the face's gender after a flip
    keep_gender: bool = True
    age_tolerance: float = 10.0            # years counted as one unit of incompatibility
    yaw_tolerance: float = 0.05
    mouth_tolerance: float = 0.04

    def __post_init__(self) -> None:
        if not 0.0 <= self.strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {self.strength}")
        top = self.strength if self.max_strength is None else self.max_strength
        if not self.strength <= top <= 1.0:
            raise ValueError(f"max_strength must be in [strength, 1], got {self.max_strength}")
        if min(self.attempts, self.steps, self.donors_per_factor, self.pool_size) < 1:
            raise ValueError("attempts, steps, donors_per_factor and pool_size must be >= 1")
        if not 0.0 < self.primary_weight <= 1.0 or not 0.0 <= self.mean_pull < 1.0:
            raise ValueError("primary_weight must be in (0, 1] and mean_pull in [0, 1)")
        if self.distinctiveness <= 0:
            raise ValueError(f"distinctiveness must be > 0, got {self.distinctiveness}")
        if self.repel < 0 or self.gender_pull < 0:
            raise ValueError(f"repel and gender_pull must be >= 0, got {self.repel}, {self.gender_pull}")
        if not 0.0 < self.repel_margin < 1.0:
            raise ValueError(f"repel_margin must be in (0, 1), got {self.repel_margin}")
        if self.escalate_step <= 0:
            raise ValueError(f"escalate_step must be > 0, got {self.escalate_step}")

    @property
    def top_strength(self) -> float:
        return self.strength if self.max_strength is None else self.max_strength

    def strength_at(self, step: int) -> float:
        """Strength of the ``step``-th attempt of a draw (escalating up to ``max_strength``)."""
        return round(min(self.strength + step * self.escalate_step, self.top_strength), 6)

    def ladder(self) -> list[float]:
        """The distinct strengths a draw walks through."""
        return list(dict.fromkeys(self.strength_at(i) for i in range(self.steps)))


def strength_alphas(ranking: FactorRanking, strength: float) -> dict[str, float]:
    """Blend weight ``alpha_f`` of each identity factor at ``strength`` (see module docstring)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    shares = ranking.shares()
    out, before = {}, 0.0
    for f in ranking.order():
        share = shares[f]
        # a factor whose whole share lies below strength is fully blended, exactly 1.0 even
        # where the shares' float sum falls short of 1 by a rounding error
        out[f] = (1.0 if strength >= before + share - 1e-9
                  else float(np.clip((strength - before) / max(share, 1e-12), 0, 1)))
        before += share
    return out


@dataclass(frozen=True)
class Attempt:
    """One anonymization attempt and why it passed or failed."""

    attempt: int
    strength: float
    passed: bool
    reason: str
    recipe: Recipe                         # the donor draw (the target was steered from its mix)
    alphas: Mapping[str, float]
    sim_original: Mapping[str, float]      # per encoder, cosine to the original photo
    max_sim_sources: Mapping[str, float]   # per encoder, max cosine to any source
    attributes: FaceAttributes | None
    image: np.ndarray = field(repr=False)
    too_close: tuple[str, ...] = ()        # sources the guard found at or above tau
    draw: int = 0                          # donor draw (0-based)
    step: int = 0                          # steered step within the draw (0: the draw's own mix)
    embeddings: Mapping[str, np.ndarray] = field(default_factory=dict, repr=False)  # encoder -> [dim]
    gender_kept: bool | None = None        # None: not checked (no labeller)
    below_tau_original: bool = False       # below tau vs the original photo for every gating encoder

    def worst_similarity(self) -> float:
        """Largest similarity to the original or any source over the gating encoders (NaN: no face)."""
        vals = list(self.sim_original.values()) + list(self.max_sim_sources.values())
        return max(vals) if vals and all(math.isfinite(v) for v in vals) else math.nan


@dataclass(frozen=True)
class Anonymized:
    """The outcome for one face: the passing attempt (or the closest one) and every attempt made."""

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
        self.scale: FactorScale = pop.scale()
        self._names = tuple(pop.factor_names)
        self._slices = _slices(self.scale, self._names)
        self._donors = [_Donor(f.content_hash, pop.persons[f.content_hash], estimate_yaw(f.landmarks),
                               mouth_openness(f.landmarks), attrs.get(f.content_hash)) for f in pop.faces]
        # whitened identity factors of every source [N, D], rows in pop.hashes order
        self._z = np.stack([self.scale.whiten(pop.factors[h], self._names) for h in pop.hashes])
        self._person_rows = {p: np.array([i for i, h in enumerate(pop.hashes) if pop.persons[h] == p])
                             for p in pop.person_keys()}
        self._gender_dir = _gender_directions(pop, self._z, attrs)
        self._taus = {m.encoder.name: m.tau for m in guard.members if m.gating}
        self._source_embeddings: dict[str, np.ndarray] | None = None

    def with_knobs(self, knobs: AnonymizeKnobs) -> "Anonymizer":
        """The same anonymizer (population, ranking, guard, labels) with other knobs."""
        self.source_embeddings()  # computed once, shared
        other = copy.copy(self)
        other.knobs = knobs
        return other

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

        ranked = sorted((d for d in self._donors if d.person not in excluded),
                        key=lambda d: (cost(d), d.content_hash))
        if attrs is not None and self.knobs.keep_gender:
            same = [d for d in ranked if d.attrs is not None and d.attrs.gender == attrs.gender]
            ranked = same or ranked  # only people of the same labelled gender, when there are any
        if not ranked:
            raise ValueError("no donor person left after excluding the face's own person; add sources")
        # round robin over persons (most compatible photo of each person first), so that
        # every person in reach contributes several photos and no one dominates the pool
        by_person: dict[str, list[_Donor]] = {}
        for d in ranked:
            by_person.setdefault(d.person, []).append(d)
        rounds = max(len(v) for v in by_person.values())
        pool = [v[r] for r in range(rounds) for v in by_person.values() if r < len(v)]
        return pool[:k.pool_size]

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

    # ----------------------------------------------------------------- targets

    @property
    def factor_slices(self) -> dict[str, slice]:
        """Where each identity factor lies in the whitened vectors ``[D]`` of ``whiten``."""
        return dict(self._slices)

    def whiten(self, factors: Factors) -> np.ndarray:
        """Whitened identity factors ``[D]`` (concatenated in ``factor_names`` order)."""
        return self.scale.whiten(factors, self._names)

    def _rescale(self, target: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Each factor of ``target [D]`` at ``distinctiveness`` times the norm of ``x``'s."""
        out = target.copy()
        for sl in self._slices.values():
            norm = float(np.linalg.norm(target[sl]))
            if norm > 1e-12:
                out[sl] = target[sl] * (self.knobs.distinctiveness * float(np.linalg.norm(x[sl])) / norm)
        return out

    def first_target(self, face: SourceFace, factors: Factors, recipe: Recipe) -> np.ndarray:
        """Whitened target ``[D]`` of a donor draw: its mix, at the face's distinctiveness."""
        table = dict(self.pop.factors)
        table[face.content_hash] = factors
        mixed = mix_factors(recipe, table, self.mean)
        return self._rescale(self.whiten(mixed), self.whiten(factors))

    def blend(self, factors: Factors, target: np.ndarray, strength: float) -> tuple[dict[str, np.ndarray],
                                                                                   np.ndarray, dict[str, float]]:
        """Output factors (context of ``factors``), their whitened identity ``[D]`` and the alphas."""
        alphas = strength_alphas(self.ranking, strength)
        x = self.whiten(factors)
        if target.shape != x.shape:
            raise ValueError(f"target must be whitened identity factors shaped {x.shape}, got {target.shape}; "
                             "build it with first_target()")
        a = np.empty_like(x)
        for f, sl in self._slices.items():
            a[sl] = alphas[f]
        z = (1.0 - a) * x + a * target
        out = dict(factors)
        out.update(self.scale.unwhiten(z, self._names, factors))
        return out, z, alphas

    def steer(self, target: np.ndarray, z_out: np.ndarray, x: np.ndarray, attempt: Attempt,
              attrs_in: FaceAttributes | None) -> np.ndarray:
        """The next target after a rejected attempt (see "Steering" in the module docstring).

        ``target``, ``z_out`` (the attempt's whitened factors) and ``x`` (the
        face's) are ``[D]``; returns ``[D]``.
        """
        k = self.knobs
        if not target.shape == z_out.shape == x.shape == self._z.shape[1:]:
            raise ValueError(f"target, z_out and x must be shaped {self._z.shape[1:]}, got "
                             f"{target.shape}, {z_out.shape}, {x.shape}")
        push = np.zeros_like(target)
        src = self.source_embeddings()
        for enc, tau in self._taus.items():
            emb = attempt.embeddings.get(enc)
            if emb is None or enc not in src:
                continue
            thr = tau - k.repel_margin
            sims = src[enc] @ emb
            near: list[tuple[float, np.ndarray]] = []
            for rows in self._person_rows.values():
                i = rows[int(np.argmax(sims[rows]))]
                near.append((float(sims[i]), self._z[i]))
            near.append((attempt.sim_original.get(enc, math.nan), x))
            for s, z in near:
                if math.isfinite(s) and s > thr:
                    d = z_out - z
                    push += (s - thr) / k.repel_margin * d / max(float(np.linalg.norm(d)), 1e-9)
        step = k.repel * push
        flipped = attrs_in is not None and (attempt.attributes is None
                                            or attempt.attributes.gender != attrs_in.gender)
        g = self._gender_dir.get(attrs_in.gender) if attrs_in is not None else None
        if k.keep_gender and flipped and g is not None:
            step = step - min(float(step @ g), 0.0) * g + k.gender_pull * g
        return self._rescale(target + step, x)

    # ---------------------------------------------------------------- one face

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
        x = self.whiten(factors)
        attempts: list[Attempt] = []
        for draw in range(self.knobs.attempts):
            recipe = self._recipe(face, pool, _seed(face.content_hash, seed, draw))
            target = self.first_target(face, factors, recipe)
            for step in range(self.knobs.steps):
                strength = self.knobs.strength_at(step)
                out, z_out, alphas = self.blend(factors, target, strength)
                image = self.pop.backbone.synthesize([self.pop.backbone.compose(out)])[0]
                attempt = self._judge(len(attempts), strength, recipe, alphas, image, original, attrs_in)
                attempt = replace(attempt, draw=draw, step=step)
                attempts.append(attempt)
                if attempt.passed:
                    return self._result(face, seed, True, attempt, attempts, attrs_in, excluded)
                if self.knobs.repel > 0 or self.knobs.gender_pull > 0:
                    target = self.steer(target, z_out, x, attempt, attrs_in)
        return self._result(face, seed, False, _closest(attempts), attempts, attrs_in, excluded)

    def _judge(self, index: int, strength: float, recipe: Recipe, alphas: Mapping[str, float],
               image: np.ndarray, original: Mapping[str, np.ndarray],
               attrs_in: FaceAttributes | None) -> Attempt:
        verdict: Verdict = self.guard.check([(f"anon-{index}", image)])[0]
        sim_orig: dict[str, float] = {}
        max_src: dict[str, float] = {}
        below_original = True
        embeddings: dict[str, np.ndarray] = {}
        reasons = [] if verdict.passed else [verdict.reason]
        too_close = []
        for ev in verdict.per_encoder:
            max_src[ev.encoder] = ev.max_similarity
            if ev.gating and ev.nearest_source and ev.max_similarity >= ev.tau:
                too_close.append(ev.nearest_source)
            if ev.embedding is not None:
                embeddings[ev.encoder] = np.asarray(ev.embedding, np.float32)
            if ev.embedding is not None and ev.encoder in original:
                sim = float(np.asarray(ev.embedding) @ original[ev.encoder])
                sim_orig[ev.encoder] = sim
                if ev.gating and sim >= ev.tau:
                    below_original = False
                    reasons.append(f"{ev.encoder}: similarity {sim:.3f} to the original reaches tau {ev.tau:.3f}")
            elif ev.gating:
                below_original = False
                sim_orig[ev.encoder] = math.nan
        attrs = self.labeller.label([image])[0] if self.labeller else None
        gender_kept = None
        if attrs_in is not None and self.labeller is not None:
            gender_kept = attrs is not None and attrs.gender == attrs_in.gender
        if self.knobs.keep_gender and attrs_in is not None:
            if attrs is None:
                reasons.append("the labeller found no face in the output")
            elif attrs.gender != attrs_in.gender:
                reasons.append(f"gender changed ({attrs_in.gender} -> {attrs.gender})")
        passed = not reasons
        return Attempt(index, strength, passed, "passes the guard against the sources and the original"
                       if passed else "; ".join(reasons), recipe, dict(alphas), sim_orig, max_src, attrs, image,
                       tuple(too_close), embeddings=embeddings, gender_kept=gender_kept,
                       below_tau_original=below_original and bool(sim_orig))

    def _result(self, face: SourceFace, seed: int, passed: bool, chosen: Attempt, attempts: list[Attempt],
                attrs_in: FaceAttributes | None, excluded: set[str]) -> Anonymized:
        oid = "anon-" + hashlib.sha256(f"{face.content_hash}/{self.pop.backbone_state}/{seed}/"
                                       f"{self.knobs}".encode()).hexdigest()[:16]
        if not passed:
            log.warning("anonymization of %s failed after %d attempts; closest: %s", face.source_id,
                        len(attempts), chosen.reason)
        return Anonymized(oid, face.content_hash, passed, chosen, tuple(attempts), attrs_in,
                          tuple(sorted(excluded)))


def _slices(scale: FactorScale, names: Sequence[str]) -> dict[str, slice]:
    """Where each factor lies in the concatenated whitened vector."""
    out, start = {}, 0
    for f in names:
        n = scale.mu[f].size
        out[f] = slice(start, start + n)
        start += n
    return out


def _gender_directions(pop: Population, z: np.ndarray,
                       attrs: Mapping[str, FaceAttributes | None]) -> dict[str, np.ndarray]:
    """Unit vectors ``[D]`` toward each labelled gender: mean of that gender's persons minus the other's.

    A person's gender is the majority label of their photos; persons are
    counted once. Empty when fewer than one person of each gender is labelled.
    """
    by_person: dict[str, list[str]] = {}
    for h in pop.hashes:
        a = attrs.get(h)
        if a is not None:
            by_person.setdefault(pop.persons[h], []).append(a.gender)
    gender = {p: max(set(g), key=g.count) for p, g in by_person.items()}
    rows = {p: [i for i, h in enumerate(pop.hashes) if pop.persons[h] == p] for p in gender}
    means: dict[str, list[np.ndarray]] = {}
    for p, g in gender.items():
        means.setdefault(g, []).append(z[rows[p]].mean(axis=0))
    if set(means) != {"female", "male"}:
        return {}
    d = np.mean(means["female"], axis=0) - np.mean(means["male"], axis=0)
    norm = float(np.linalg.norm(d))
    if norm <= 1e-12:
        return {}
    return {"female": d / norm, "male": -d / norm}


def _closest(attempts: Sequence[Attempt]) -> Attempt:
    """The rejected attempt that came closest to passing: gender kept first, then below tau
    vs the original, then the lowest worst similarity."""
    def key(a: Attempt) -> tuple[bool, bool, float, int]:
        worst = a.worst_similarity()
        return (a.gender_kept is False, not a.below_tau_original, worst if math.isfinite(worst) else math.inf,
                a.attempt)
    return min(attempts, key=key)


def _seed(content_hash: str, seed: int, draw: int) -> int:
    digest = hashlib.sha256(f"{content_hash}/{seed}/{draw}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


# --------------------------------------------------------------------------- the curve

@dataclass(frozen=True)
class CurvePoint:
    """Identity distance and attribute preservation at one strength (means over faces)."""

    strength: float
    n: int
    sim_original: Mapping[str, float]     # mean cosine to the original, per encoder
    guard_pass_rate: float                # share passing guard + original check (first attempt, or released)
    gender_kept: float                    # share whose labelled gender is unchanged (NaN: no labeller)
    age_abs_diff: float                   # mean |age out - age in| in years (NaN: no labeller)
    undetected: int
    max_sim_sources: Mapping[str, float] = field(default_factory=dict)  # mean max cosine to any source
    below_tau_original: float = math.nan  # share below tau vs the original, every gating encoder
    mean_attempts: float = 1.0            # attempts per face (1 without search)


def measure_strength_curve(anonymizer: Anonymizer, faces: Sequence[SourceFace],
                           strengths: Sequence[float], seed: int = 0, search: bool = False) -> list[CurvePoint]:
    """The strength/identity/attribute trade-off, one point per strength.

    ``search=False``: one attempt per face (the first donor draw's own mix,
    no steering, no retries): what the strength alone does. ``search=True``:
    the full anonymizer at that fixed strength (no escalation): the released
    output, or the closest attempt when none passed.
    """
    out = []
    a = anonymizer
    for s in strengths:
        sims: dict[str, list[float]] = {}
        srcs: dict[str, list[float]] = {}
        passed, below, kept, ages, undetected, n_att = 0, 0, [], [], 0, []
        for face in faces:
            factors = a.pop.factors.get(face.content_hash)
            if factors is None:
                factors = a.pop.backbone.decompose(a.pop.backbone.project([face])[0].latent)
            if search:
                fixed = a.with_knobs(replace(a.knobs, strength=float(s), max_strength=None))
                result = fixed.anonymize(face, factors, seed)
                att, attrs_in, n = result.chosen, result.input_attributes, len(result.attempts)
            else:
                original = {e: v[0] for e, v in a.probe.embed_sources([face]).items()}
                attrs_in = a.labeller.label([face.aligned])[0] if a.labeller else None
                pool = a._pool(face, attrs_in, a._excluded(face, original))
                recipe = a._recipe(face, pool, _seed(face.content_hash, seed, 0))
                fac, _, alphas = a.blend(factors, a.first_target(face, factors, recipe), s)
                image = a.pop.backbone.synthesize([a.pop.backbone.compose(fac)])[0]
                att, n = a._judge(0, s, recipe, alphas, image, original, attrs_in), 1
            passed += att.passed
            n_att.append(n)
            below += att.below_tau_original
            for e, v in att.sim_original.items():
                if math.isfinite(v):
                    sims.setdefault(e, []).append(v)
                else:
                    undetected += 1
            for e, v in att.max_sim_sources.items():
                if math.isfinite(v):
                    srcs.setdefault(e, []).append(v)
            if attrs_in is not None and att.attributes is not None:
                kept.append(att.attributes.gender == attrs_in.gender)
                ages.append(abs(att.attributes.age - attrs_in.age))
        nf = max(len(faces), 1)
        out.append(CurvePoint(float(s), len(faces), {e: float(np.mean(v)) for e, v in sims.items()},
                              passed / nf, float(np.mean(kept)) if kept else math.nan,
                              float(np.mean(ages)) if ages else math.nan, undetected,
                              {e: float(np.mean(v)) for e, v in srcs.items()}, below / nf, float(np.mean(n_att))))
        p = out[-1]
        log.info("strength %.2f%s: sim to original %s, max to sources %s, pass %.2f, gender kept %.2f, "
                 "|dage| %.1f, attempts %.1f", s, " (search)" if search else "",
                 {e: round(v, 3) for e, v in p.sim_original.items()},
                 {e: round(v, 3) for e, v in p.max_sim_sources.items()}, p.guard_pass_rate, p.gender_kept,
                 p.age_abs_diff, p.mean_attempts)
    return out

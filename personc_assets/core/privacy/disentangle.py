"""Disentanglement ranking: how much identity each factor carries.

For a probe face ``x`` (a source) and a donor ``d`` of another person, swap
one identity factor ``f`` of ``x`` for ``d``'s and render. With ``r`` the
rendering of ``x`` itself and ``e`` an encoder::

    drop      = 1 - cos(e(render(x with f from d)), e(r))        # identity lost by the swap
    unit      = ||x_f - d_f|| / rms_f                            # size of the change, population units
    per_unit  = drop / unit                                      # identity change per unit of change

``rms_f`` is the person-weighted RMS distance of a source's factor ``f`` from
the population mean (``FactorScale.rms``), so a unit means "a typical
person's deviation" whatever the factor's raw scale (PCA coefficients of
pixels and of landmark shapes differ by orders of magnitude). Comparing
with ``r`` rather than the photo isolates the swap from the backbone's
reconstruction error.

For the StyleGAN2 backbone the factors *are* the W+ layer groups
(coarse/middle/fine symmetric halves and the antisymmetric half), so the same
table ranks layer groups. Backbone-private context (``_``-prefixed entries:
hair, background, pose of the embedded backbone) is measured as one extra
row ``CONTEXT`` (whole context swapped; no unit, so ``per_unit`` is NaN): it
says how much identity stays in what an anonymizer keeps.

Swaps whose rendering has no detectable face are left out of the means and
counted in ``undetected``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from .population import FactorScale, IdentityProbe, Population, render, replace_factors

log = logging.getLogger(__name__)

#: Row name of the backbone-private context swap.
CONTEXT = "_context"


@dataclass(frozen=True)
class FactorSensitivity:
    """Identity change for one factor under one encoder (means over probe/donor pairs)."""

    factor: str
    encoder: str
    per_unit: float        # mean of drop / unit (NaN for the context row)
    swap_drop: float       # mean 1 - cosine after swapping the factor for a donor's
    swap_drop_sd: float
    mean_unit: float       # mean size of the swap in population units (NaN for context)
    n: int                 # pairs measured (face found)
    undetected: int        # pairs whose rendering had no face

    def as_row(self) -> dict[str, object]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


@dataclass(frozen=True)
class FactorRanking:
    """Sensitivities of every factor under every encoder, plus what was probed."""

    rows: tuple[FactorSensitivity, ...]
    backbone_state: str
    probes: tuple[str, ...]          # probe content hashes
    donors_per_probe: int

    @property
    def encoders(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.encoder for r in self.rows))

    def identity_factors(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.factor for r in self.rows if r.factor != CONTEXT))

    def per_unit(self) -> dict[str, float]:
        """Identity change per population unit for each identity factor (mean over encoders)."""
        out = {}
        for f in self.identity_factors():
            vals = [r.per_unit for r in self.rows if r.factor == f and math.isfinite(r.per_unit)]
            out[f] = float(np.mean(vals)) if vals else 0.0
        return out

    def swap_drop(self) -> dict[str, float]:
        """Mean identity lost by swapping each factor (context row included), mean over encoders."""
        out = {}
        for f in dict.fromkeys(r.factor for r in self.rows):
            vals = [r.swap_drop for r in self.rows if r.factor == f and math.isfinite(r.swap_drop)]
            out[f] = float(np.mean(vals)) if vals else 0.0
        return out

    def order(self) -> tuple[str, ...]:
        """Identity factors, most identity per unit first (ties by name)."""
        pu = self.per_unit()
        return tuple(sorted(pu, key=lambda f: (-pu[f], f)))

    def shares(self) -> dict[str, float]:
        """Each identity factor's share of the identity per unit (non-negative, sums to 1)."""
        pu = {f: max(v, 0.0) for f, v in self.per_unit().items()}
        total = sum(pu.values())
        if total <= 0:
            return {f: 1.0 / len(pu) for f in pu}
        return {f: v / total for f, v in pu.items()}

    def table(self) -> list[dict[str, object]]:
        return [r.as_row() for r in self.rows]


def pick_probe_pairs(pop: Population, n_probes: int, donors_per_probe: int,
                     seed: int) -> list[tuple[str, list[str]]]:
    """``(probe hash, [donor hashes])``: probes of distinct persons, donors of other persons."""
    rng = np.random.default_rng(seed)
    persons = list(pop.person_keys())
    if n_probes < 1 or donors_per_probe < 1:
        raise ValueError(f"n_probes and donors_per_probe must be >= 1, got {n_probes}, {donors_per_probe}")
    chosen = [persons[i] for i in rng.permutation(len(persons))[:n_probes]]
    pairs = []
    for person in chosen:
        photos = pop.photos_of(person)
        probe = photos[int(rng.integers(len(photos)))]
        others = [p for p in persons if p != person]
        picks = [others[i] for i in rng.permutation(len(others))[:donors_per_probe]]
        donors = []
        for p in picks:
            ph = pop.photos_of(p)
            donors.append(ph[int(rng.integers(len(ph)))])
        pairs.append((probe, donors))
    return pairs


def rank_factors(pop: Population, probe: IdentityProbe, n_probes: int = 4, donors_per_probe: int = 2,
                 seed: int = 0, scale: FactorScale | None = None,
                 include_context: bool = True) -> FactorRanking:
    """Measure every factor's identity change per unit of change (see the module docstring).

    Cost: ``n_probes * (1 + donors_per_probe * (factors + 1))`` renders and
    embeddings per encoder.
    """
    scale = scale or pop.scale()
    names = pop.factor_names
    pairs = pick_probe_pairs(pop, n_probes, donors_per_probe, seed)
    context_keys = [k for k in pop.factors[pairs[0][0]] if k.startswith("_")]
    rows_spec: list[tuple[int, str, float]] = []  # (probe index, factor, unit)
    sets = []
    for pi, (h, donors) in enumerate(pairs):
        x = pop.factors[h]
        sets.append(dict(x))
        for d in donors:
            y = pop.factors[d]
            for f in names:
                unit = float(np.linalg.norm(np.asarray(x[f], np.float64) - np.asarray(y[f], np.float64))
                             / scale.rms[f])
                sets.append(replace_factors(x, {f: y[f]}))
                rows_spec.append((pi, f, unit))
            if include_context and context_keys:
                sets.append(replace_factors(x, {k: y[k] for k in context_keys}))
                rows_spec.append((pi, CONTEXT, math.nan))
    images = render(pop.backbone, sets)
    result = probe(images)
    # index of each probe's own rendering in `sets`
    ref_pos, pos = [], 0
    for _, donors in pairs:
        ref_pos.append(pos)
        pos += 1 + len(donors) * (len(names) + (1 if include_context and context_keys else 0))
    swap_pos = [i for i in range(len(sets)) if i not in set(ref_pos)]
    out = []
    factors = list(names) + ([CONTEXT] if include_context and context_keys else [])
    for enc in probe.encoder_names:
        v = result.vectors[enc]
        drops: dict[str, list[tuple[float, float]]] = {f: [] for f in factors}
        missing: dict[str, int] = {f: 0 for f in factors}
        for (pi, f, unit), i in zip(rows_spec, swap_pos):
            ref = v[ref_pos[pi]]
            if not (np.all(np.isfinite(v[i])) and np.all(np.isfinite(ref))):
                missing[f] += 1
                continue
            drops[f].append((1.0 - float(v[i] @ ref), unit))
        for f in factors:
            d = np.array([a for a, _ in drops[f]])
            u = np.array([b for _, b in drops[f]])
            n = len(d)
            per_unit = float(np.mean(d / np.maximum(u, 1e-9))) if n and f != CONTEXT else math.nan
            out.append(FactorSensitivity(
                factor=f, encoder=enc, per_unit=per_unit,
                swap_drop=float(d.mean()) if n else math.nan,
                swap_drop_sd=float(d.std()) if n else math.nan,
                mean_unit=float(u.mean()) if n and f != CONTEXT else math.nan,
                n=n, undetected=missing[f]))
    ranking = FactorRanking(tuple(out), pop.backbone_state, tuple(h for h, _ in pairs), donors_per_probe)
    log.info("factor ranking (identity per unit): %s",
             ", ".join(f"{f} {ranking.per_unit()[f]:.4f}" for f in ranking.order()))
    return ranking

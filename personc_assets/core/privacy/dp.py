"""Differentially private attribute positions, with a DuckDB privacy ledger.

What is private
---------------
For a face with whitened factors ``z`` and an attribute direction ``n``
(``attributes.AttributeDirection``), the released value is the face's
coordinate ``t = n . z - offset`` along that direction, privatised:

1. clip ``t`` to the stated range ``[lo, hi]`` (``lo = -width * coord_sd``,
   ``hi = +width * coord_sd`` around the boundary). Two neighbouring inputs
   (the face replaced by any other face) then differ by at most
   ``sensitivity = hi - lo`` — a real bound, unlike an assumed sensitivity
   of 1 on an unbounded coordinate;
2. add noise with OpenDP's Laplace mechanism (pure epsilon-DP, scale found by
   OpenDP's binary search so that its own privacy map gives at most epsilon
   at ``d_in = sensitivity``) or Gaussian mechanism (zCDP converted to
   (epsilon, delta)-DP by OpenDP);
3. post-process: clip the noisy value back into ``[lo, hi]`` and move ``z``
   along ``n`` to it (``z + (t_released - t) n``). Post-processing keeps the
   guarantee.

Only the coordinate along the chosen directions is protected. The rest of the
face (the component of ``z`` orthogonal to the directions, and the context)
is released as is: this mode hides *where on the attribute axis* a face sits,
not who it is. Several directions are released one after the other
(adaptive sequential composition: epsilons and deltas add up).

The bound holds only if nothing the mechanism uses depends on the face it
privatises: the direction, its offset and the clip width (``coord_sd``) are
therefore fitted without any photo of that face's person (the steps fit one
set per person). ``guarantee`` says, in words that travel with every
release, what the epsilon covers and what it does not.

Ledger
------
``PrivacyLedger`` keeps every charge in ``privacy_dp_ledger`` (epsilon, delta,
mechanism, sensitivity and clip range per face, release and run). Before any
noise is drawn, a release is charged in one transaction under the store's
lock; if the face's spent epsilon or delta plus this release would exceed
the ``PrivacyBudget`` (or the run's, when set) the release is refused, the
refusal is recorded, and ``BudgetExceededError`` is raised. Charging before
drawing means a crash can waste budget but never release unaccounted noise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from ..lineage.store import LineageStore, now
from ..types import Factors
from .attributes import AttributeDirection
from .population import FactorScale

log = logging.getLogger(__name__)

Mechanism = Literal["laplace", "gaussian"]
MECHANISMS: tuple[str, ...] = ("laplace", "gaussian")


class BudgetExceededError(RuntimeError):
    """A release would spend more epsilon/delta than the budget allows (it was refused)."""


@dataclass(frozen=True)
class DPSpec:
    """One direction to privatise: mechanism, epsilon (and delta for Gaussian), clip width in sd units."""

    direction: AttributeDirection
    mechanism: Mechanism = "laplace"
    epsilon: float = 1.0
    delta: float = 0.0
    width: float = 2.0

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}, got {self.mechanism!r}")
        if not (self.epsilon > 0 and math.isfinite(self.epsilon)):
            raise ValueError(f"epsilon must be a positive finite number, got {self.epsilon}")
        if self.mechanism == "laplace" and self.delta != 0.0:
            raise ValueError("the Laplace mechanism is pure epsilon-DP: use delta=0 (or mechanism='gaussian')")
        if self.mechanism == "gaussian" and not 0.0 < self.delta < 1.0:
            raise ValueError(f"the Gaussian mechanism needs 0 < delta < 1, got {self.delta}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0 (clip range in coordinate sd units), got {self.width}")

    @property
    def clip(self) -> tuple[float, float]:
        half = self.width * self.direction.coord_sd
        return -half, half

    @property
    def sensitivity(self) -> float:
        lo, hi = self.clip
        return hi - lo


def _space():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp, (dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float))


def make_measurement(spec: DPSpec):
    """The OpenDP measurement for ``spec``, calibrated so its privacy map gives at most epsilon (delta)."""
    dp, space = _space()
    d_in = float(spec.sensitivity)
    if spec.mechanism == "laplace":
        def build(scale: float):
            return space >> dp.m.then_laplace(scale=scale)
        scale = dp.binary_search_param(build, d_in=d_in, d_out=float(spec.epsilon))
    else:
        def build(scale: float):
            return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(space >> dp.m.then_gaussian(scale=scale)),
                                       delta=float(spec.delta))
        scale = dp.binary_search_param(build, d_in=d_in, d_out=(float(spec.epsilon), float(spec.delta)))
    return build(scale), float(scale)


def privatize_coordinate(t: float, spec: DPSpec) -> tuple[float, float, float]:
    """``(clipped, noisy, released)`` for coordinate ``t``; released = noisy clipped back to range."""
    lo, hi = spec.clip
    clipped = float(np.clip(t, lo, hi))
    meas, _ = make_measurement(spec)
    noisy = float(meas(clipped))
    return clipped, noisy, float(np.clip(noisy, lo, hi))


# --------------------------------------------------------------------------- ledger

@dataclass(frozen=True)
class PrivacyBudget:
    """Most epsilon/delta one face may ever spend (all runs), and optionally one run."""

    epsilon_per_face: float = 4.0
    delta_per_face: float = 1e-5
    epsilon_per_run: float | None = None

    def __post_init__(self) -> None:
        if not self.epsilon_per_face > 0 or self.delta_per_face < 0:
            raise ValueError("epsilon_per_face must be > 0 and delta_per_face >= 0")
        if self.epsilon_per_run is not None and not self.epsilon_per_run > 0:
            raise ValueError("epsilon_per_run must be > 0 when set")


class PrivacyLedger:
    """Epsilon and delta spent per face and per run, in ``privacy_dp_ledger``."""

    def __init__(self, store: LineageStore, budget: PrivacyBudget = PrivacyBudget()) -> None:
        self.store = store
        self.budget = budget

    def spent(self, face_key: str) -> tuple[float, float]:
        row = self.store.query("SELECT coalesce(sum(epsilon), 0), coalesce(sum(delta), 0) FROM privacy_dp_ledger "
                               "WHERE face_key = ? AND status = 'spent'", [face_key])[0]
        return float(row[0]), float(row[1])

    def spent_in_run(self, run_id: str) -> tuple[float, float]:
        row = self.store.query("SELECT coalesce(sum(epsilon), 0), coalesce(sum(delta), 0) FROM privacy_dp_ledger "
                               "WHERE run_id = ? AND status = 'spent'", [run_id])[0]
        return float(row[0]), float(row[1])

    def charge(self, face_key: str, run_id: str, release_id: str, specs: Sequence[DPSpec]) -> None:
        """Record the charge of a release, or record a refusal and raise ``BudgetExceededError``."""
        eps = sum(s.epsilon for s in specs)
        delta = sum(s.delta for s in specs)
        refused = ""
        t = now()
        with self.store.transaction() as tx:
            f_eps, f_delta = tx.query("SELECT coalesce(sum(epsilon), 0), coalesce(sum(delta), 0) FROM "
                                      "privacy_dp_ledger WHERE face_key = ? AND status = 'spent'", [face_key])[0]
            r_eps = tx.query("SELECT coalesce(sum(epsilon), 0) FROM privacy_dp_ledger WHERE run_id = ? AND "
                             "status = 'spent'", [run_id])[0][0]
            b = self.budget
            if f_eps + eps > b.epsilon_per_face + 1e-12:
                refused = (f"face {face_key[:12]} has spent epsilon {f_eps:g} of its budget {b.epsilon_per_face:g}; "
                           f"this release needs {eps:g} more")
            elif f_delta + delta > b.delta_per_face + 1e-18:
                refused = (f"face {face_key[:12]} has spent delta {f_delta:g} of its budget {b.delta_per_face:g}; "
                           f"this release needs {delta:g} more")
            elif b.epsilon_per_run is not None and r_eps + eps > b.epsilon_per_run + 1e-12:
                refused = (f"run {run_id} has spent epsilon {r_eps:g} of its budget {b.epsilon_per_run:g}; "
                           f"this release needs {eps:g} more")
            status = "refused" if refused else "spent"
            tx.upsert("privacy_dp_ledger", [{
                "entry_id": f"{release_id}/{i}", "release_id": release_id, "face_key": face_key, "run_id": run_id,
                "attribute": s.direction.attribute, "mechanism": s.mechanism, "epsilon": float(s.epsilon),
                "delta": float(s.delta), "sensitivity": s.sensitivity, "clip_lo": s.clip[0], "clip_hi": s.clip[1],
                "status": status, "reason": refused or None, "created_at": t} for i, s in enumerate(specs)])
        if refused:
            raise BudgetExceededError(f"release refused: {refused}. Raise the budget knowingly or stop releasing "
                                      "this face")


# --------------------------------------------------------------------------- guarantee

DP_COVERS = ("the position of each released face along the privatised attribute directions: the direction, "
             "its offset and the clip range are fitted without any photo of that face's person, so replacing "
             "the face by any other face changes the probability of any released coordinate by at most a factor "
             "exp(epsilon) (plus delta for the Gaussian mechanism); each release is charged to the face's budget "
             "and the charges add up")
DP_DOES_NOT_COVER: tuple[str, ...] = (
    "the rest of the face: identity, hair, clothes, background and every factor component orthogonal to the "
    "directions are released as they are, and they show the attribute too (gender and age are visible in much "
    "more than one coordinate); the image is the person's own face",
    "the face-model backbone and the face's factor coordinates: the backbone is fitted on all sources, this "
    "face included, and what its fit reveals about the face is not bounded by epsilon",
    "the other people: each person's direction is fitted on everyone else's photos and labels, and a release "
    "moves the face along that direction, which reveals something about those people (no epsilon for them)",
)


def guarantee(attributes: Sequence[str], mechanism: str, epsilon: float, delta: float) -> dict[str, object]:
    """What one release's epsilon covers and what it does not (JSON-ready); epsilon and delta per attribute."""
    return {"per_release": {"epsilon": float(epsilon) * len(attributes), "delta": float(delta) * len(attributes)},
            "mechanism": mechanism, "attributes": list(attributes),
            "covers": DP_COVERS, "does_not_cover": list(DP_DOES_NOT_COVER)}


def check_held_out(specs: Sequence[DPSpec], person: str) -> None:
    """Refuse specs whose directions were fitted with photos of ``person`` (the face being privatised)."""
    bad = [s.direction.attribute for s in specs if s.direction.held_out != person]
    if bad:
        raise ValueError(f"the {', '.join(bad)} direction(s) were not fitted without person {person!r}; the "
                         "epsilon would not cover what they learned from this face. Fit them with "
                         "held_out=person and train=everyone else's photos")


# --------------------------------------------------------------------------- releases

@dataclass(frozen=True)
class DPRelease:
    """Factors with privatised attribute coordinates and what was spent."""

    release_id: str
    face_key: str
    factors: Mapping[str, np.ndarray] = field(repr=False)
    coordinates: Mapping[str, Mapping[str, float]]   # attribute -> t, clipped, noisy, released
    epsilon: float
    delta: float


def release_id_for(face_key: str, run_id: str, specs: Sequence[DPSpec]) -> str:
    body = json.dumps([face_key, run_id, [(s.direction.attribute, s.mechanism, s.epsilon, s.delta, s.width)
                                          for s in specs], uuid.uuid4().hex])
    return "dp-" + hashlib.sha256(body.encode()).hexdigest()[:16]


def privatize_factors(factors: Factors, scale: FactorScale, specs: Sequence[DPSpec],
                      ledger: PrivacyLedger | None, face_key: str, run_id: str) -> DPRelease:
    """Charge the ledger (when given), then privatise each direction in turn.

    ``ledger=None`` is for measurements on data that is never released; every
    release path passes a ledger.
    """
    if not specs:
        raise ValueError("nothing to privatise: pass at least one DPSpec")
    rid = release_id_for(face_key, run_id, specs)
    if ledger is not None:
        ledger.charge(face_key, run_id, rid, specs)
    out = dict(factors)
    coords: dict[str, dict[str, float]] = {}
    for s in specs:
        d = s.direction
        z = scale.whiten(out, d.names)
        t = d.coordinate(z)
        clipped, noisy, released = privatize_coordinate(t, s)
        out.update(scale.unwhiten(z + (released - t) * d.normal, d.names, out))
        coords[d.attribute] = {"t": t, "clipped": clipped, "noisy": noisy, "released": released}
    return DPRelease(rid, face_key, out, coords, float(sum(s.epsilon for s in specs)),
                     float(sum(s.delta for s in specs)))


@dataclass(frozen=True)
class AccuracyPoint:
    """Attribute accuracy at one epsilon (``inf`` = no noise), mean over faces and repeats.

    ``side_kept``: share of releases whose coordinate stays on the face's
    side of the boundary (cheap, many repeats). ``label_accuracy``: share of
    rendered releases the labeller gives the same label as the original
    photo (``age``: same side of the age split).
    """

    attribute: str
    mechanism: str
    epsilon: float
    side_kept: float
    label_accuracy: float
    n_side: int
    n_label: int


def measure_accuracy(pop, scale: FactorScale, direction: AttributeDirection, labeller, faces,
                     photo_labels: Mapping[str, object], epsilons: Sequence[float], mechanism: Mechanism = "laplace",
                     delta: float = 0.0, width: float = 2.0, side_repeats: int = 200,
                     rendered_per_face: int = 1) -> list[AccuracyPoint]:
    """Accuracy before (``epsilon=inf``) and after noise at each epsilon (no ledger: measurement only)."""
    out = []
    for eps in epsilons:
        side, labels_ok, n_label = [], [], 0
        renders, truth = [], []
        for face in faces:
            fac = pop.factors[face.content_hash]
            z = scale.whiten(fac, direction.names)
            t = direction.coordinate(z)
            if math.isinf(eps):
                side.append(1.0)
                released = [t] * rendered_per_face
            else:
                spec = DPSpec(direction, mechanism, float(eps), delta, width)
                meas, _ = make_measurement(spec)
                lo, hi = spec.clip
                c = float(np.clip(t, lo, hi))
                draws = [float(np.clip(meas(c), lo, hi)) for _ in range(side_repeats)]
                side.append(float(np.mean([(r > 0) == (t > 0) for r in draws])))
                released = draws[:rendered_per_face]
            for r in released:
                moved = dict(fac)
                moved.update(scale.unwhiten(z + (r - t) * direction.normal, direction.names, fac))
                renders.append(moved)
                truth.append(photo_labels.get(face.content_hash))
        if labeller is not None:
            images = pop.backbone.synthesize([pop.backbone.compose(f) for f in renders])
            got = labeller.label(images)
            for g, want in zip(got, truth):
                if g is None or want is None:
                    continue
                n_label += 1
                labels_ok.append(direction.label_of(g) == direction.label_of(want))
        out.append(AccuracyPoint(direction.attribute, mechanism, float(eps), float(np.mean(side)),
                                 float(np.mean(labels_ok)) if labels_ok else math.nan, len(side) * (
                                     1 if math.isinf(eps) else side_repeats), n_label))
        log.info("%s eps=%s: side kept %.2f, label accuracy %.2f (n=%d)", direction.attribute, eps,
                 out[-1].side_kept, out[-1].label_accuracy, n_label)
    return out

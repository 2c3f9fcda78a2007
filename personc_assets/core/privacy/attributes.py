"""Linear attribute directions (age, gender) in factor space.

``fit_direction`` learns a linear boundary for a binary attribute (gender;
age above a split) in the whitened identity-factor space of the sources
(``FactorScale.whiten``), with scikit-learn's L2 logistic regression and
person-balanced sample weights, as InterFaceGAN does with SVM/logistic
boundaries in GAN latent spaces. The boundary's unit normal ``n`` gives each
face a coordinate ``t = n . z - offset`` (positive: "male" / "older"); moving
``z`` along ``n`` moves the attribute. Accuracy is reported on the training
set and leave-one-person-out. ``train`` restricts the fit to some photos:
the DP mode fits each person's direction (and scale) without any photo of
that person (``held_out``), so nothing its epsilon rests on is fitted on the
face it privatises.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Literal, Mapping, Sequence

import numpy as np

from ..backbones.morphable import person_weights
from ..faces.age_gender import FaceAttributes
from ..types import Factors
from .population import FactorScale, Population

log = logging.getLogger(__name__)

Attribute = Literal["gender", "age"]
ATTRIBUTES: tuple[str, ...] = ("gender", "age")


@dataclass(frozen=True)
class AttributeDirection:
    """A linear attribute boundary in whitened factor space.

    ``normal`` is a unit vector ``[D]`` over the concatenated whitened
    ``names`` factors; ``coordinate(z) = normal . z - offset`` is the signed
    distance to the boundary (positive side: ``positive``). ``coord_sd`` is
    the person-weighted spread of the sources' coordinates.
    """

    attribute: str
    names: tuple[str, ...]
    normal: np.ndarray = field(repr=False)
    offset: float
    positive: str
    negative: str
    split: float              # age split in years (NaN for gender)
    coord_sd: float
    n_train: int
    train_accuracy: float
    cv_accuracy: float        # leave-one-person-out (NaN with fewer than 3 persons)
    labeller_version: str
    held_out: str | None = None  # person whose photos were left out of the fit (None: fitted on all)
    n_persons: int = 0           # persons in the fit

    def __post_init__(self) -> None:
        n = np.asarray(self.normal, np.float64)
        if n.ndim != 1 or not np.isclose(np.linalg.norm(n), 1.0, atol=1e-6):
            raise ValueError("normal must be a unit vector [D]")

    def coordinate(self, z: np.ndarray) -> float:
        z = np.asarray(z, np.float64)
        if z.shape != self.normal.shape:
            raise ValueError(f"whitened vector must be {self.normal.shape}, got {z.shape}")
        return float(self.normal @ z - self.offset)

    def side(self, t: float) -> str:
        return self.positive if t > 0 else self.negative

    def label_of(self, attrs: FaceAttributes) -> int:
        """1 when ``attrs`` is on the positive side (male / older than ``split``)."""
        return int(attrs.gender == "male") if self.attribute == "gender" else int(attrs.age > self.split)

    def to_npz(self) -> dict[str, np.ndarray]:
        meta = {k: getattr(self, k) for k in ("attribute", "offset", "positive", "negative", "split", "coord_sd",
                                               "n_train", "train_accuracy", "cv_accuracy", "labeller_version",
                                               "held_out", "n_persons")}
        return {"normal": self.normal.astype(np.float64), "names": np.array(self.names),
                "meta": np.array(json.dumps(meta))}

    @classmethod
    def from_npz(cls, arrays: Mapping[str, np.ndarray]) -> "AttributeDirection":
        meta = json.loads(str(arrays["meta"]))
        return cls(names=tuple(str(s) for s in arrays["names"]), normal=np.asarray(arrays["normal"], np.float64),
                   **meta)


def fit_direction(pop: Population, scale: FactorScale, labels: Mapping[str, FaceAttributes],
                  attribute: Attribute, labeller_version: str, c: float = 1.0,
                  names: Sequence[str] | None = None, train: Sequence[str] | None = None,
                  held_out: str | None = None) -> AttributeDirection:
    """Logistic boundary for ``attribute`` over the sources (or the ``train`` hashes) that have labels.

    Gender: male vs female. Age: older vs younger than the median of the
    persons' mean ages (so both sides hold people). Samples are weighted so
    that every person counts once; ``c`` is the inverse L2 strength.
    ``held_out`` names the person whose photos ``train`` leaves out; a
    training photo of that person is an error.
    """
    from sklearn.linear_model import LogisticRegression

    if attribute not in ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")
    names = tuple(names or pop.factor_names)
    pool = pop.hashes if train is None else tuple(train)
    if held_out is not None and any(pop.persons[h] == held_out for h in pool):
        raise ValueError(f"the training photos include person {held_out!r}, who is to be held out; "
                         "pass train without that person's photos")
    hashes = [h for h in pool if labels.get(h) is not None]
    if len(hashes) < 4:
        raise ValueError(f"only {len(hashes)} labelled sources; fitting a direction needs at least 4")
    persons = [pop.persons[h] for h in hashes]
    split = float("nan")
    if attribute == "gender":
        y = np.array([int(labels[h].gender == "male") for h in hashes])
        positive, negative = "male", "female"
    else:
        mean_age = {p: np.mean([labels[h].age for h in hashes if pop.persons[h] == p]) for p in set(persons)}
        split = float(np.median(list(mean_age.values())))
        y = np.array([int(labels[h].age > split) for h in hashes])
        positive, negative = f"older than {split:g}", f"{split:g} or younger"
    if len(set(y)) < 2:
        raise ValueError(f"every labelled source is on one side of the {attribute} boundary; "
                         "add sources of the other side")
    x = np.stack([scale.whiten(pop.factors[h], names) for h in hashes])
    w = person_weights(persons) * len(hashes)
    model = LogisticRegression(C=c, max_iter=2000)
    model.fit(x, y, sample_weight=w)
    coef = model.coef_[0].astype(np.float64)
    norm = float(np.linalg.norm(coef))
    if norm <= 0:
        raise ValueError(f"the {attribute} boundary is degenerate (zero normal); regularisation c={c} too strong?")
    normal = coef / norm
    offset = float(-model.intercept_[0] / norm)
    t = x @ normal - offset
    train_acc = float(np.average((t > 0).astype(int) == y, weights=w))
    cv = _leave_one_person_out(x, y, w, persons, c)
    mu_t = np.average(t, weights=w)
    coord_sd = float(np.sqrt(np.average((t - mu_t) ** 2, weights=w)))
    return AttributeDirection(attribute, names, normal, offset, positive, negative, split, coord_sd,
                              len(hashes), train_acc, cv, labeller_version, held_out, len(set(persons)))


def _leave_one_person_out(x: np.ndarray, y: np.ndarray, w: np.ndarray, persons: Sequence[str],
                          c: float) -> float:
    from sklearn.linear_model import LogisticRegression

    keys = sorted(set(persons))
    if len(keys) < 3:
        return float("nan")
    right = total = 0.0
    for p in keys:
        test = np.array([q == p for q in persons])
        if len(set(y[~test])) < 2:
            continue
        m = LogisticRegression(C=c, max_iter=2000).fit(x[~test], y[~test], sample_weight=w[~test])
        right += float(np.sum((m.predict(x[test]) == y[test]) * w[test]))
        total += float(np.sum(w[test]))
    return right / total if total else float("nan")


def move_along(factors: Factors, scale: FactorScale, direction: AttributeDirection,
               target: float) -> tuple[dict[str, np.ndarray], float]:
    """Factors whose coordinate along ``direction`` is ``target``; returns (factors, old coordinate).

    Only the component along the direction changes (``z + (target - t) n``);
    non-identity and other factors are kept.
    """
    z = scale.whiten(factors, direction.names)
    t = direction.coordinate(z)
    z2 = z + (float(target) - t) * direction.normal
    out = dict(factors)
    out.update(scale.unwhiten(z2, direction.names, factors))
    return out, t

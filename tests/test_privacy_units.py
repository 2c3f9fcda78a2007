"""Privacy modes without photos: keys, strength mapping, DP calibration and the privacy ledger."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from personc_assets.core.lineage.store import LineageStore
from personc_assets.core.privacy.attributes import AttributeDirection
from personc_assets.core.privacy.cancelable import (Assessment, CancelableEnroller, CancelableKeyError, CancelableKnobs,
                                                    CancelableUnavailableError, PropertyScores, code_key, derive_seed,
                                                    factor_transform, key_id, key_transform)
from personc_assets.core.privacy.population import FactorScale
from personc_assets.core.privacy.disentangle import FactorRanking, FactorSensitivity
from personc_assets.core.privacy.anonymize import AnonymizeKnobs, strength_alphas
from personc_assets.core.privacy.dp import (BudgetExceededError, DPSpec, PrivacyBudget, PrivacyLedger,
                                            make_measurement, privatize_coordinate)

PKG = Path(__file__).resolve().parents[1] / "personc_assets" / "core" / "privacy"


def _direction(sd: float = 1.5) -> AttributeDirection:
    return AttributeDirection("gender", ("texture",), np.array([0.6, 0.8]), 0.0, "male", "female", math.nan,
                              sd, 10, 1.0, 1.0, "test")


def _ranking() -> FactorRanking:
    rows = tuple(FactorSensitivity(f, "dlib", pu, 0.01, 0.0, 1.0, 4, 0)
                 for f, pu in (("geometry", 0.04), ("texture", 0.03), ("eyes", 0.02), ("mouth", 0.01)))
    return FactorRanking(rows, "state", ("p",), 1)


def test_core_privacy_never_imports_dagster():
    # why: the core library is framework-free; Dagster wiring lives in defs/privacy.py only
    for path in PKG.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not any(n.split(".")[0] == "dagster" for n in names), path.name


def test_key_id_is_a_hash_of_a_hash_and_never_the_key():
    # why: only the key id may be stored; it must be stable, and differ between keys
    import hashlib

    key = "correct horse battery staple"
    assert key_id(key) == hashlib.sha256(hashlib.sha256(key.encode()).digest()).hexdigest()[:24]
    assert key_id(key) != key_id(key + "!") and key not in key_id(key)


KEY = "correct horse battery staple"


def _scale(dims: dict[str, int], spread: float = 1.0, seed: int = 0) -> FactorScale:
    rng = np.random.default_rng(seed)
    return FactorScale({f: rng.normal(0, spread, d) for f, d in dims.items()},
                       {f: rng.uniform(0.5, 2.0, d) * spread for f, d in dims.items()},
                       {f: 1.0 for f in dims})


def test_seed_is_the_key_alone_with_a_known_answer():
    # why: a seed that hashed the fitted backbone changed every template after a dependency upgrade;
    # the draw must depend on the key bytes only, identically on every platform and version
    import hashlib
    import hmac

    assert code_key(KEY) == hmac.new(KEY.encode(), b"personc/cancelable/v2|code", hashlib.sha256).digest()
    assert code_key(KEY).hex() == "ce596eaa48d1aeb8ad3779573dd02636b90562819d9e3d3d07a6c377bdbc19a9"
    assert derive_seed(KEY) == 14869037322385600184
    _, signs = factor_transform(KEY, "geometry", 36, 1)
    assert signs[:16].astype(int).tolist() == [-1, -1, -1, -1, -1, 1, -1, 1, -1, 1, 1, 1, 1, -1, -1, 1]
    sources, signs = factor_transform(KEY, "geometry", 8, 4)
    assert sources.tolist() == [1, 2, 3, 0, 5, 7, 6, 4] and signs.astype(int).tolist() == [1, -1, -1, -1, -1, -1, -1, 1]
    assert derive_seed(KEY) != derive_seed("another long passphrase")


def test_transform_ignores_the_fitted_floats():
    # why: two fits of one backbone (another library version) differ in their floats; the key's draw must not
    dims = {"geometry": 36, "texture": 36, "mouth": 37}
    a = key_transform(KEY, _scale(dims, seed=1), tuple(dims))
    b = key_transform(KEY, _scale(dims, spread=3.0, seed=2), tuple(dims))
    for f in dims:
        assert np.array_equal(a.sources[f], b.sources[f]) and np.array_equal(a.signs[f], b.signs[f])
    # each factor draws from its own stream: another factor's presence or size changes nothing
    alone = key_transform(KEY, _scale({"texture": 36}), ("texture",))
    assert np.array_equal(alone.signs["texture"], a.signs["texture"])


def test_transform_keeps_distances_and_two_keys_are_as_far_apart_as_two_people():
    # why: consistency and discriminability rest on the transform being an isometry; unlinkability and
    # revocability on two keys moving one face as far apart as two different people are
    dims = {"geometry": 36, "symmetry": 36, "texture": 36, "eyes": 37, "nose": 36, "mouth": 37}
    names = tuple(dims)
    scale = _scale(dims)
    for block in (1, 2, 4):
        knobs = CancelableKnobs(block=block)
        t1 = key_transform(KEY, scale, names, knobs)
        t2 = key_transform("tuna lamp violet 42 orbit", scale, names, knobs)
        rng = np.random.default_rng(7)
        people = [{f: (scale.mu[f] + scale.sd[f] * rng.standard_normal(d)).astype(np.float32)
                   for f, d in dims.items()} for _ in range(200)]
        z = [scale.whiten(p, names) for p in people]
        y1 = [scale.whiten(t1.apply(p, scale, names), names) for p in people]
        y2 = [scale.whiten(t2.apply(p, scale, names), names) for p in people]
        for i in range(0, 200, 2):  # pairs of people: distances kept under one key (float32 rounding aside)
            assert np.linalg.norm(y1[i] - y1[i + 1]) == pytest.approx(np.linalg.norm(z[i] - z[i + 1]), rel=1e-4)
        two_keys = np.mean([np.sum((a - b) ** 2) for a, b in zip(y1, y2)])
        two_people = np.mean([np.sum((z[i] - z[i + 1]) ** 2) for i in range(0, 200, 2)])
        to_face = np.mean([np.sum((a - b) ** 2) for a, b in zip(y1, z)])
        assert two_keys == pytest.approx(two_people, rel=0.15), block
        assert to_face == pytest.approx(two_people, rel=0.15), block


def test_short_keys_are_refused_with_the_reason():
    # why: the key id is a fast hash, so a short key could be guessed from it
    with pytest.raises(CancelableKeyError, match="at least 12"):
        key_id("hunter2")


def test_cancelable_knobs_are_validated():
    # why: an empty block or an unknown context mode would silently change what is enforced
    with pytest.raises(ValueError, match="block"):
        CancelableKnobs(block=0)
    with pytest.raises(ValueError, match="context"):
        CancelableKnobs(context="mirror")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_ok_rate"):
        CancelableKnobs(min_ok_rate=0.0)


def _assessment(consistency: tuple[float, ...]) -> Assessment:
    scores = (PropertyScores("consistency", "dlib", "match", 0.9, consistency),
              PropertyScores("unlinkability", "dlib", "no_match", 0.9, (0.80, 0.85)),
              PropertyScores("revocability", "dlib", "no_match", 0.9, (0.80, 0.85)),
              PropertyScores("irreversibility", "dlib", "no_match", 0.9, (0.95,)),  # enforced per template
              PropertyScores("discriminability", "dlib", "no_match", 0.9, (0.70,)))
    return Assessment("state", "signed-permutation/v2/block=1", 2, 1.0, scores)


def test_assessment_names_each_failing_property_and_counts_faceless_templates_as_misses():
    # why: a refusal must say what was measured; a template without a face is useless, not "unlinkable"
    assert _assessment((0.95, 0.93)).passed
    bad = _assessment((0.95, 0.85))
    assert not bad.passed and [p.prop for p in bad.failures()] == ["consistency"]
    assert "consistency (dlib): 50% of 2 pairs at or above tau 0.90" in bad.reason()
    assert "irreversibility" not in bad.reason()
    faceless = _assessment((0.95, math.nan))
    assert faceless.scores[0].ok_rate == 0.5 and not faceless.passed
    assert "1 without a face" in faceless.reason()


def test_enrol_refuses_an_unusable_backbone_and_a_revoked_key_first(monkeypatch):
    # why: when the measured properties fall short nothing may be made; a revoked key is refused before
    # anything is measured (it says what to do)
    from types import SimpleNamespace

    pop = SimpleNamespace(factor_names=("texture",), hashes=("h",))
    enroller = CancelableEnroller(pop, None, None, scale=_scale({"texture": 4}))  # type: ignore[arg-type]
    monkeypatch.setattr(enroller, "assess", lambda: _assessment((0.95, 0.85)))
    with pytest.raises(CancelableUnavailableError, match=r"refused: .*consistency \(dlib\): 50%"):
        enroller.enroll(SimpleNamespace(content_hash="h"), KEY)  # type: ignore[arg-type]
    with pytest.raises(CancelableKeyError, match="revoked"):
        enroller.enroll(SimpleNamespace(content_hash="h"), KEY, revoked=[key_id(KEY)])  # type: ignore[arg-type]


def test_strength_replaces_factors_in_ranking_order():
    # why: the ranking decides what is swapped first; 0 keeps the face, 1 replaces every factor
    r = _ranking()
    assert all(a == 0.0 for a in strength_alphas(r, 0.0).values())
    assert all(a == 1.0 for a in strength_alphas(r, 1.0).values())
    half = strength_alphas(r, 0.5)
    assert half["geometry"] == 1.0 and half["mouth"] == 0.0 and 0.0 < half["texture"] < 1.0
    alphas = [strength_alphas(r, s) for s in np.linspace(0, 1, 11)]
    for f in r.order():
        assert all(b[f] >= a[f] for a, b in zip(alphas, alphas[1:])), f
    with pytest.raises(ValueError, match="strength"):
        AnonymizeKnobs(strength=1.5)


def test_dp_sensitivity_is_the_clip_range_and_opendp_scale_matches():
    # why: the guarantee rests on a real sensitivity; Laplace needs scale = sensitivity / epsilon
    spec = DPSpec(_direction(sd=1.5), "laplace", epsilon=2.0, width=2.0)
    assert spec.clip == (-3.0, 3.0) and spec.sensitivity == 6.0
    meas, scale = make_measurement(spec)
    assert scale == pytest.approx(3.0, rel=1e-6)
    assert meas.map(d_in=6.0) <= 2.0 + 1e-9
    clipped, noisy, released = privatize_coordinate(50.0, spec)
    assert clipped == 3.0 and -3.0 <= released <= 3.0


def test_side_kept_under_laplace_noise_matches_the_closed_form():
    # why: the accuracy-versus-epsilon figures must be measured, not assumed; for a coordinate t and
    # Laplace scale b the share of releases on t's side is 1 - exp(-|t| / b) / 2
    from types import SimpleNamespace

    from personc_assets.core.privacy.dp import measure_accuracy
    from personc_assets.core.privacy.population import FactorScale

    direction = _direction(sd=1.5)  # clip +-3, sensitivity 6
    scale = FactorScale({"texture": np.zeros(2)}, {"texture": np.ones(2)}, {"texture": 1.0})  # whitening = identity
    coords = {"near": 0.5, "far": -2.0}
    pop = SimpleNamespace(factors={h: {"texture": t * np.array([0.6, 0.8])} for h, t in coords.items()})
    faces = [SimpleNamespace(content_hash=h) for h in coords]
    for eps in (6.0, 2.0):
        b = 6.0 / eps
        want = np.mean([1 - 0.5 * math.exp(-abs(t) / b) for t in coords.values()])
        got = measure_accuracy(pop, scale, direction, None, faces, {}, [eps], side_repeats=4000)[0]
        assert got.side_kept == pytest.approx(want, abs=0.03), eps
        assert got.n_side == 2 * 4000 and math.isnan(got.label_accuracy)


def test_leave_one_person_out_accuracy_holds_each_person_out():
    # why: the cross-validated accuracy is the honest figure for a direction fitted on few people;
    # a person whose photos sit among the other class must count as wrong when held out
    from personc_assets.core.privacy.attributes import _leave_one_person_out

    persons = ["a", "a", "b", "b", "c", "c", "d", "d"]
    x = np.array([[2.0], [2.2], [1.0], [1.2], [-1.0], [-1.2], [-2.0], [-2.2]])
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    w = np.ones(8)
    assert _leave_one_person_out(x, y, w, persons, 1.0) == 1.0
    odd = x.copy()
    odd[:2] = -3.0  # person "a" (class 1) now looks like class 0
    assert _leave_one_person_out(odd, y, w, persons, 1.0) <= 0.75 + 1e-9
    assert math.isnan(_leave_one_person_out(x[:4], y[:4], w[:4], persons[:4], 1.0)), "two people: not measurable"


def test_gaussian_needs_delta_and_laplace_refuses_one():
    # why: a mechanism with the wrong accounting would understate what was spent
    with pytest.raises(ValueError, match="delta"):
        DPSpec(_direction(), "gaussian", 1.0, 0.0)
    with pytest.raises(ValueError, match="pure"):
        DPSpec(_direction(), "laplace", 1.0, 1e-5)
    meas, _ = make_measurement(DPSpec(_direction(), "gaussian", 1.0, 1e-5))
    eps, delta = meas.map(d_in=DPSpec(_direction(), "gaussian", 1.0, 1e-5).sensitivity)
    assert eps <= 1.0 + 1e-9 and delta == 1e-5


def test_ledger_refuses_once_the_face_budget_is_spent(tmp_path):
    # why: a budget that does not stop releases is no budget; refusals must be recorded, spend must not grow
    store = LineageStore.open(tmp_path / "p.duckdb")
    ledger = PrivacyLedger(store, PrivacyBudget(epsilon_per_face=2.5, delta_per_face=0.0))
    spec = DPSpec(_direction(), "laplace", 1.0)
    ledger.charge("face1", "run1", "r1", [spec])
    ledger.charge("face1", "run1", "r2", [spec])
    assert ledger.spent("face1") == (2.0, 0.0)
    with pytest.raises(BudgetExceededError, match="spent epsilon 2 of its budget 2.5"):
        ledger.charge("face1", "run2", "r3", [spec])
    assert ledger.spent("face1") == (2.0, 0.0)
    ledger.charge("face2", "run2", "r4", [spec])  # another face has its own budget
    assert store.query("SELECT count(*) FROM privacy_dp_ledger WHERE status = 'refused'")[0][0] == 1
    assert ledger.spent_in_run("run1") == (2.0, 0.0)


def test_ledger_run_budget_and_delta_budget(tmp_path):
    # why: per-run and delta budgets are separate limits and each must refuse on its own
    store = LineageStore.open(tmp_path / "p.duckdb")
    ledger = PrivacyLedger(store, PrivacyBudget(epsilon_per_face=10, delta_per_face=1.5e-5, epsilon_per_run=1.5))
    g = DPSpec(_direction(), "gaussian", 1.0, 1e-5)
    ledger.charge("a", "run", "r1", [g])
    with pytest.raises(BudgetExceededError, match="run run"):
        ledger.charge("b", "run", "r2", [g])
    with pytest.raises(BudgetExceededError, match="delta"):
        ledger.charge("a", "other", "r3", [g])


def test_dp_parameters_fitted_with_the_released_person_are_refused():
    # why: the epsilon bound needs direction, offset and clip range independent of the face they privatise
    from types import SimpleNamespace

    from personc_assets.core.faces.age_gender import FaceAttributes
    from personc_assets.core.privacy.attributes import fit_direction
    from personc_assets.core.privacy.dp import check_held_out

    rng = np.random.default_rng(3)
    persons = {f"h{i}": f"p{i // 2}" for i in range(8)}  # four people, two photos each
    male = {"p0", "p2"}
    pop = SimpleNamespace(hashes=tuple(persons), persons=persons, factor_names=("texture",),
                          factors={h: {"texture": rng.normal(1.0 if p in male else -1.0, 0.3, 2)}
                                   for h, p in persons.items()})
    labels = {h: FaceAttributes("male" if p in male else "female", 90, 30, 50, (0, 0, 1, 1))
              for h, p in persons.items()}
    scale = FactorScale({"texture": np.zeros(2)}, {"texture": np.ones(2)}, {"texture": 1.0})
    with pytest.raises(ValueError, match="include person 'p1'"):
        fit_direction(pop, scale, labels, "gender", "v", train=pop.hashes, held_out="p1")
    train = tuple(h for h, p in persons.items() if p != "p1")
    d = fit_direction(pop, scale, labels, "gender", "v", train=train, held_out="p1")
    assert d.held_out == "p1" and d.n_persons == 3 and d.n_train == 6
    assert AttributeDirection.from_npz(d.to_npz()).held_out == "p1"
    check_held_out([DPSpec(d, "laplace", 1.0)], "p1")
    with pytest.raises(ValueError, match="not fitted without person 'p2'"):
        check_held_out([DPSpec(d, "laplace", 1.0)], "p2")
    everyone = fit_direction(pop, scale, labels, "gender", "v")
    with pytest.raises(ValueError, match="not fitted without person 'p1'"):
        check_held_out([DPSpec(everyone, "laplace", 1.0)], "p1")

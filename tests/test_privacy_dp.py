"""Attribute directions from the bundled age/gender models, and accuracy under DP noise (../shared/faces)."""

from __future__ import annotations

import math

import pytest

from privacy_fixtures import build_world, labels
from personc_assets.core.privacy.attributes import fit_direction, verify_bundled_models
from personc_assets.core.privacy.dp import measure_accuracy

pytestmark = [pytest.mark.shared_faces, pytest.mark.slow]


def test_bundled_models_match_their_manifest():
    # why: the labeller must run the files the package ships, unmodified, with no download
    assert verify_bundled_models().startswith("agv1-")


@pytest.fixture(scope="module")
def setup(shared_faces):
    world = build_world(shared_faces)
    labeller, source_labels = labels(shared_faces)
    scale = world.pop.scale()
    direction = fit_direction(world.pop, scale, source_labels, "gender", labeller.version)
    return world, labeller, source_labels, scale, direction


def test_labeller_agrees_with_the_people(setup):
    # why: the directions are only as good as their labels; each person's photos share one gender
    world, _, source_labels, _, _ = setup
    for person in world.pop.person_keys():
        genders = {source_labels[f.content_hash].gender for f in world.photos(person) if source_labels[f.content_hash]}
        assert len(genders) == 1, (person, genders)


def test_gender_direction_separates_the_sources(setup):
    # why: a direction that does not separate the labels moves nothing meaningful
    _, _, source_labels, _, d = setup
    print(f"\ngender direction: train acc {d.train_accuracy:.2f}, leave-one-person-out {d.cv_accuracy:.2f}, "
          f"coord sd {d.coord_sd:.2f}")
    assert d.train_accuracy == 1.0
    # leave-one-person-out is reported, not bounded: with 7 people (3 women) it is unstable (measured 0.18);
    # it must be measured, though (its arithmetic is tested in test_privacy_units)
    assert math.isfinite(d.cv_accuracy) and d.n_train == sum(v is not None for v in source_labels.values())


def test_accuracy_before_and_after_noise(setup):
    # why: the issue asks for attribute accuracy at several epsilons; less epsilon must mean less accuracy
    world, labeller, source_labels, scale, d = setup
    faces = [world.photos(p)[0] for p in world.pop.person_keys()]
    points = measure_accuracy(world.pop, scale, d, labeller, faces, source_labels,
                              [math.inf, 1e6, 8.0, 1.0, 0.25], "laplace", width=2.0, side_repeats=300)
    for p in points:
        print(f"\neps {p.epsilon}: side kept {p.side_kept:.2f} (n={p.n_side}), label accuracy {p.label_accuracy:.2f} "
              f"(n={p.n_label})")
    by = {p.epsilon: p for p in points}
    assert by[math.inf].label_accuracy >= 0.85
    # no noise keeps every side by definition (measure_accuracy does not draw at epsilon inf); a huge
    # epsilon goes through the noise path and must keep (nearly) every side too
    assert by[1e6].side_kept >= 0.99
    assert by[1e6].side_kept >= by[8.0].side_kept > by[1.0].side_kept > by[0.25].side_kept
    assert by[0.25].side_kept < 0.7

"""Attribute directions from the bundled age/gender models, and accuracy under DP noise (../shared/faces)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from privacy_fixtures import build_world, labels
from personc_assets.core.faces.age_gender import verify_bundled_models
from personc_assets.core.privacy.attributes import fit_direction
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


def test_held_out_directions_leave_each_person_out_and_still_order_the_noise(setup):
    # why: the epsilon rests on direction, offset and clip range; fitted on the face they privatise, it would
    # not bound what they learned from it. Each person's set is fitted on everyone else; measured here
    world, labeller, source_labels, _, _ = setup
    points = {}
    for person in world.pop.person_keys():
        train = tuple(h for h in world.pop.hashes if world.pop.persons[h] != person)
        scale = world.pop.scale(hashes=train)
        d = fit_direction(world.pop, scale, source_labels, "gender", labeller.version, train=train, held_out=person)
        assert d.held_out == person and d.n_persons == len(world.pop.person_keys()) - 1
        assert d.n_train == sum(source_labels[h] is not None for h in train)
        face = world.photos(person)[0]
        for p in measure_accuracy(world.pop, scale, d, labeller, [face], source_labels, [math.inf, 8.0, 1.0, 0.25],
                                  "laplace", width=2.0, side_repeats=2000):
            points.setdefault(p.epsilon, []).append(p)
    # the noise is OpenDP's own, unseeded: held-out faces sit near the boundary (side kept about 0.7 at
    # epsilon 8), so epsilon 1 and 0.25 differ by only a few hundredths in expectation; 2000 draws per
    # face keep the sampling error (about 0.005) well below that, where 300 let them swap (0.512, 0.522)
    side = {eps: float(np.mean([p.side_kept for p in ps])) for eps, ps in points.items()}
    label = {eps: float(np.nanmean([p.label_accuracy for p in ps])) for eps, ps in points.items()}
    print("\nheld-out directions, one photo per person: side kept", side, "label accuracy", label)
    assert side[8.0] > side[1.0] > side[0.25]


def test_dp_release_is_watermarked_marked_synthetic_listed_and_says_what_epsilon_covers(setup, tmp_path):
    # why: a DP release is the person's own face re-rendered: like every output it must carry the
    # watermark and "Synthetic: true", be listed in the cumulative manifest, and say what its epsilon
    # does not cover; its directions must be fitted without the released person
    from personc_assets.core.explain.manifest import known_releases, load_manifest
    from personc_assets.core.explain.watermark import verify_png
    from personc_assets.core.lineage.store import LineageStore
    from personc_assets.core.pipeline.config import Workspace
    from personc_assets.core.privacy import steps

    world = setup[0]
    ws = Workspace(tmp_path)
    store = LineageStore.open(ws.db_path)
    first = steps.run_dp(world.pop, ws, store, "dp-run-1", ["gender"], epsilon=1.0, limit=2)
    second = steps.run_dp(world.pop, ws, store, "dp-run-2", ["gender"], epsilon=1.0, limit=1)
    released = first.releases + second.releases
    assert len(released) == 3 and not first.refused and not second.refused
    manifest = load_manifest(ws.manifest)
    assert set(manifest["runs"]) >= {"dp-run-1", "dp-run-2"}, "the manifest keeps every run"
    for rel in released:
        entry = manifest["releases"][rel.release_id]
        assert (tmp_path / entry["file"]).resolve() == Path(rel.image_path).resolve()
        assert entry["donors"][0]["source_hash"] == rel.face_key
        result = verify_png(Path(rel.image_path), known_releases(manifest))
        assert result.status == "verified" and result.synthetic, result.reason
        assert "attribute coordinates only" in result.metadata["PersonC-dp-scope"]
        assert rel.held_out == world.pop.persons[rel.face_key]
    rows = store.query("SELECT d.held_out, d.n_persons, r.held_out FROM privacy_dp_releases r JOIN "
                       "privacy_attribute_directions d ON r.direction_ids_json LIKE '%' || d.direction_id || '%'")
    assert len(rows) == 3 and all(d == r and n == len(world.pop.person_keys()) - 1 for d, n, r in rows)
    assert not list((tmp_path / "privacy" / "dp" / ".staging").glob("*.png")), "staged files are published"
    said = first.guarantee
    assert "fitted without any photo of that face's person" in said["covers"]
    assert any("the rest of the face" in s for s in said["does_not_cover"])
    assert any("backbone" in s for s in said["does_not_cover"])

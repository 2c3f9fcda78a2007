"""Disentanglement ranking and the anonymizer on real photos (../shared/faces)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from privacy_fixtures import build_world, labels
from personc_assets.core.privacy.anonymize import Anonymizer, AnonymizeKnobs, measure_strength_curve
from personc_assets.core.privacy.disentangle import CONTEXT, rank_factors

log = logging.getLogger(__name__)
pytestmark = [pytest.mark.shared_faces, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(shared_faces):
    return build_world(shared_faces)


@pytest.fixture(scope="module")
def ranking(world):
    return rank_factors(world.pop, world.probe, n_probes=2, donors_per_probe=1, seed=0)


@pytest.fixture(scope="module")
def anonymizer(world, ranking, shared_faces):
    labeller, source_labels = labels(shared_faces)
    return Anonymizer(world.pop, ranking, world.guard, world.probe, labeller, source_labels, AnonymizeKnobs())


def one_photo_per_person(world, n):
    return [world.photos(p)[0] for p in world.pop.person_keys()[:n]]


def test_ranking_covers_every_factor_and_the_kept_context(world, ranking):
    # why: users read this table to see which factors carry identity; every factor must be measured
    assert set(ranking.identity_factors()) == set(world.pop.factor_names)
    drops = ranking.swap_drop()
    print("\nranking (per unit):", {f: round(v, 4) for f, v in ranking.per_unit().items()},
          "context swap drop:", round(drops[CONTEXT], 4))
    assert all(r.n > 0 for r in ranking.rows)
    # a shape or texture factor, not mouth/symmetry detail, carries the most identity per unit
    assert ranking.order()[0] in ("geometry", "texture", "eyes")
    assert abs(sum(ranking.shares().values()) - 1.0) < 1e-9


def test_targets_keep_the_faces_distinctiveness(world, anonymizer):
    # why: a plain mix of donors drifts to the mean face, which the encoder finds close to everyone
    face = world.photos("id04")[0]
    x = anonymizer.whiten(world.pop.factors[face.content_hash])
    pool = anonymizer._pool(face, None, {"id04"})
    target = anonymizer.first_target(face, world.pop.factors[face.content_hash], anonymizer._recipe(face, pool, 0))
    for f, sl in anonymizer.factor_slices.items():
        assert np.linalg.norm(target[sl]) == pytest.approx(np.linalg.norm(x[sl]), rel=1e-6), f
    out, z, alphas = anonymizer.blend(world.pop.factors[face.content_hash], target, 1.0)
    assert np.allclose(z, target) and all(a == 1.0 for a in alphas.values())
    assert all(np.array_equal(out[k], v) for k, v in world.pop.factors[face.content_hash].items() if k.startswith("_"))


def test_default_strength_passes_against_the_original_and_keeps_gender(world, anonymizer):
    # why: the acceptance: below tau vs the original photo (and all sources) with attributes kept;
    # the three women of ../shared/faces are the hard case (only two other women to draw from)
    faces = one_photo_per_person(world, 3)
    results = [anonymizer.anonymize(f) for f in faces]
    for f, res in zip(faces, results):
        c = res.chosen
        print(f"\n{f.label}: sim to original {c.sim_original}, max to sources {c.max_sim_sources}, "
              f"gender {res.input_attributes.gender}->{c.attributes.gender if c.attributes else None}, "
              f"age {res.input_attributes.age}->{c.attributes.age if c.attributes else None}; "
              f"released={res.passed} after {len(res.attempts)} attempts (draw {c.draw}, step {c.step})")
        assert c.below_tau_original and c.sim_original["dlib"] < world.tau, f.label
        assert c.gender_kept and c.attributes is not None and c.attributes.gender == res.input_attributes.gender
        if res.passed:  # fail closed: anything released passed the whole guard
            assert res.image is not None and all(v < world.tau for v in c.max_sim_sources.values())
        else:
            assert res.image is None
        first = res.attempts[0]
        if not first.passed:  # steering moved away from the sources the guard named
            assert min(a.worst_similarity() for a in res.attempts if a.draw == 0) < first.worst_similarity()
    # measured: 7 of 7 first photos released at seed 0, 31 of 37 photos (docs/privacy_modes.md)
    assert sum(r.passed for r in results) >= 2, [r.chosen.reason for r in results]


def test_strength_trades_identity_distance_for_attributes(world, anonymizer):
    # why: the strength knob must move the face away from the person as it grows
    faces = one_photo_per_person(world, 3)
    curve = measure_strength_curve(anonymizer, faces, [0.0, 0.5, 1.0])
    for c in curve:
        print(f"\nstrength {c.strength}: sim {c.sim_original}, max to sources {c.max_sim_sources}, "
              f"pass {c.guard_pass_rate:.2f}, gender kept {c.gender_kept:.2f}, |dage| {c.age_abs_diff:.1f}")
    sims = [c.sim_original["dlib"] for c in curve]
    assert sims[0] > sims[1] > sims[2]
    assert sims[0] > world.tau > sims[2]
    assert curve[0].age_abs_diff <= curve[2].age_abs_diff + 1.0
    assert curve[0].below_tau_original == 0.0 and curve[2].below_tau_original == 1.0

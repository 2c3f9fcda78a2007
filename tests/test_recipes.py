"""The backbone-agnostic recipe sampler and factor mixer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from personc_assets.core.backbones import FACTOR_NAMES
from personc_assets.core.recipes import (
    DonorInfo, SamplerKnobs, describe_donors, estimate_yaw, make_recipe, mix_factors,
    mouth_openness, new_roles, persons_from_embeddings, recipe_from_json, recipe_json, recipe_roles,
    sample_recipes)
from personc_assets.core.types import SourceFace


def donors(n_people: int, photos_per_person: int = 1, turned: int = 0) -> list[DonorInfo]:
    """Alternating groups; the last ``turned`` people are photographed strongly turned."""
    out = []
    for p in range(n_people):
        for k in range(photos_per_person):
            out.append(DonorInfo(content_hash=f"h{p:02d}{k}" + "0" * 60, group="AB"[p % 2],
                                 person=f"p{p}", yaw=0.6 if p >= n_people - turned else 0.01 * k,
                                 cluster=p % 2, appearance=(float(p % 2), 0.1 * k)))
    return out


def persons(recipe, pool):
    by_hash = {d.content_hash: d.person for d in pool}
    return {f: {by_hash[h] for h, _ in parts} for f, parts in recipe.components.items()}


def check_rules(recipe, pool, distinct_primaries: bool):
    by_hash = {d.content_hash: d for d in pool}
    for f, parts in recipe.components.items():
        weights = [w for _, w in parts]
        assert abs(sum(weights) - 1.0) < 1e-5, f
        assert by_hash[recipe.primary[f]].person == by_hash[max(parts, key=lambda p: p[1])[0]].person
        assert len({by_hash[h].person for h, _ in parts}) == len(parts), "a person twice in one factor"
    primaries = [by_hash[recipe.primary[f]] for f in FACTOR_NAMES]
    assert {d.group for d in primaries} == {"A", "B"}
    everywhere = set.intersection(*({h for h, _ in parts} for parts in recipe.components.values()))
    assert not everywhere, "a donor supplies every factor"
    if distinct_primaries:
        assert len({d.person for d in primaries}) == len(FACTOR_NAMES)


def test_recipes_follow_the_rules_with_enough_people():
    # why: the product promise: each factor from a different person, A and B both used, no single source
    pool = donors(8)
    for recipe in sample_recipes(pool, FACTOR_NAMES, 25, seed=1):
        check_rules(recipe, pool, distinct_primaries=True)


def test_recipes_follow_the_rules_with_three_people():
    # why: tiny source sets still give valid recipes (repeating primaries, never one donor for all)
    pool = donors(3)
    for recipe in sample_recipes(pool, FACTOR_NAMES, 25, seed=2):
        check_rules(recipe, pool, distinct_primaries=False)
        assert len({recipe.primary[f] for f in FACTOR_NAMES}) > 1


def test_several_photos_of_one_person_count_as_one_person():
    # why: two photos of the same person in different factors would rebuild that person
    pool = donors(7, photos_per_person=3)
    for recipe in sample_recipes(pool, FACTOR_NAMES, 20, seed=3):
        check_rules(recipe, pool, distinct_primaries=True)


def test_sampling_is_reproducible_and_order_independent():
    # why: a run must be re-creatable from its seed, whatever order the sources were listed in
    pool = donors(7)
    a = sample_recipes(pool, FACTOR_NAMES, 5, seed=11)
    b = sample_recipes(list(reversed(pool)), FACTOR_NAMES, 5, seed=11)
    assert [r.recipe_id for r in a] == [r.recipe_id for r in b]
    assert a == b
    c = sample_recipes(pool, FACTOR_NAMES, 5, seed=12)
    assert [r.recipe_id for r in a] != [r.recipe_id for r in c]
    longer = sample_recipes(pool, FACTOR_NAMES, 8, seed=11)
    assert longer[:5] == a  # asking for more extends the same sequence


def test_recipe_id_is_a_content_hash():
    # why: lineage rows key on recipe_id; equal recipes share it, any change gives a new one
    parts = {"texture": [("a" * 64, 0.7), ("b" * 64, 0.3)], "eyes": [("b" * 64, 1.0)]}
    r1 = make_recipe(5, parts, 0.0, "a" * 64)
    assert r1.recipe_id == make_recipe(5, parts, 0.0, "a" * 64).recipe_id
    assert r1.recipe_id != make_recipe(5, parts, 0.1, "a" * 64).recipe_id
    assert r1.recipe_id != make_recipe(5, {**parts, "eyes": [("a" * 64, 1.0)]}, 0.0, "a" * 64).recipe_id
    assert r1.primary == {"texture": "a" * 64, "eyes": "b" * 64}
    assert len(r1.recipe_id) == 64


def test_context_donor_is_not_strongly_turned_and_gives_no_identity_factor():
    # why: the face is rendered into the context photo; a strongly turned one warps badly and its person leaks
    pool = donors(12, turned=2)
    by_hash = {d.content_hash: d for d in pool}
    for recipe in sample_recipes(pool, FACTOR_NAMES, 20, seed=4):
        context = by_hash[recipe.context_donor]
        assert abs(context.yaw) <= SamplerKnobs().context_max_yaw
        assert all(context.person not in ps for ps in persons(recipe, pool).values())


def test_moderately_turned_photos_serve_as_context():
    # why: with two frontal photos (the demo) every face landed in one of two contexts and came out a near-duplicate
    pool = [dataclasses.replace(d, yaw=0.3 if i >= 2 else 0.0) for i, d in enumerate(donors(8))]
    contexts = {r.context_donor for r in sample_recipes(pool, FACTOR_NAMES, 60, seed=8)}
    assert len(contexts) >= 6


def test_avoid_contexts_moves_the_context_to_other_people():
    # why: faces rendered into one photo resemble each other; a slot retried after a release should use another photo
    pool = donors(8)
    by_hash = {d.content_hash: d for d in pool}
    first = sample_recipes(pool, FACTOR_NAMES, 1, seed=9)[0].context_donor
    for recipe in sample_recipes(pool, FACTOR_NAMES, 30, seed=9, avoid_contexts=[first]):
        assert by_hash[recipe.context_donor].person != by_hash[first].person
    everyone = [d.content_hash for d in pool]  # nobody left to move to: the preference is dropped
    assert len(sample_recipes(pool, FACTOR_NAMES, 3, seed=9, avoid_contexts=everyone)) == 3


def test_context_rank_cycles_through_every_usable_person():
    # why: the pipeline spreads slots over photos with slot + attempt; ranks must reach every person, in order
    pool = donors(8)
    by_hash = {d.content_hash: d for d in pool}
    people = [by_hash[sample_recipes(pool, FACTOR_NAMES, 1, seed=3, context_rank=r)[0].context_donor].person
              for r in range(16)]
    assert sorted(set(people)) == sorted({d.person for d in pool})
    assert people[:8] == people[8:]  # modulo the number of people
    # the rank only moves the context: the same seed and rank give the same recipe
    again = sample_recipes(pool, FACTOR_NAMES, 1, seed=3, context_rank=5)[0]
    assert again.recipe_id == sample_recipes(pool, FACTOR_NAMES, 1, seed=3, context_rank=5)[0].recipe_id
    for r in range(16):
        check_rules(sample_recipes(pool, FACTOR_NAMES, 1, seed=3, context_rank=r)[0], pool, distinct_primaries=True)


def test_new_roles_counts_parts_dealt_to_other_people():
    # why: retries are dealt away from released recipes; the count must see people, not photos
    pool = donors(4, photos_per_person=2)
    person_of = {d.content_hash: d.person for d in pool}
    h = {(d.person, d.content_hash[3]): d.content_hash for d in pool}  # (person, photo index) -> hash
    base = make_recipe(1, {"texture": [(h["p0", "0"], 1.0)], "eyes": [(h["p1", "0"], 1.0)]}, 0.0, h["p2", "0"])
    other_photos = make_recipe(2, {"texture": [(h["p0", "1"], 1.0)], "eyes": [(h["p1", "1"], 1.0)]},
                               0.0, h["p2", "1"])
    swapped = make_recipe(3, {"texture": [(h["p1", "0"], 1.0)], "eyes": [(h["p0", "0"], 1.0)]}, 0.0, h["p3", "0"])
    assert recipe_roles(base, person_of) == {"texture": "p0", "eyes": "p1", "context": "p2"}
    assert new_roles(base, [], person_of) == 3
    assert new_roles(other_photos, [base], person_of) == 0  # the same people in the same parts
    assert new_roles(swapped, [base], person_of) == 3
    assert new_roles(swapped, [base, other_photos], person_of, parts=("texture",)) == 1
    assert new_roles(swapped, [base, swapped], person_of) == 0  # the fewest over the others


def test_recipe_json_round_trip_keeps_the_id():
    # why: reports read the recipe of a release back from DuckDB; a changed id means an altered lineage
    for recipe in sample_recipes(donors(8), FACTOR_NAMES, 10, seed=4):
        back = recipe_from_json(recipe_json(recipe))
        assert back == recipe


def test_sensitive_factors_never_fall_back_on_the_context_person():
    # why: the demo's small clusters made the context person give the eyes, so every face stayed that person
    pool = donors(6)  # clusters of three people: the context's cluster has only two others
    by_hash = {d.content_hash: d for d in pool}
    for recipe in sample_recipes(pool, FACTOR_NAMES, 30, seed=10):
        context = by_hash[recipe.context_donor].person
        for f in ("texture", "eyes", "mouth", "nose", "geometry"):
            assert by_hash[recipe.primary[f]].person != context, f


def test_turned_photos_give_shape_factors_only():
    # why: foreshortened features of a three-quarter view look pasted on a frontal face
    pool = donors(9, turned=2)
    turned = {d.content_hash for d in pool if not d.frontal}
    for recipe in sample_recipes(pool, FACTOR_NAMES, 20, seed=5):
        for f in ("texture", "eyes", "nose", "mouth"):
            assert not {h for h, _ in recipe.components[f]} & turned, f


def test_sensitive_factors_come_from_the_anchor_cluster():
    # why: a bearded donor's mouth on a made-up face is the "montage" look; sensitive factors stay compatible
    pool = donors(10)
    by_hash = {d.content_hash: d for d in pool}
    for recipe in sample_recipes(pool, FACTOR_NAMES, 20, seed=6):
        cluster = by_hash[recipe.context_donor].cluster
        for f in ("texture", "eyes", "mouth"):
            assert all(by_hash[h].cluster == cluster for h, _ in recipe.components[f]), f


def test_hidden_context_person_lets_a_small_cluster_give_every_sensitive_factor():
    # why: with the context person barred, three women left two for three sensitive factors, so every
    # woman's face took a man's mouth (stubble around the lips); a backbone that does not show the
    # context photo (the neutral frame) lets that person donate like anyone else
    pool = [dataclasses.replace(d, cluster=int(i >= 3)) for i, d in enumerate(donors(7))]
    by_hash = {d.content_hash: d for d in pool}
    mixed_when_shown = 0
    for visible in (True, False):
        for recipe in sample_recipes(pool, FACTOR_NAMES, 40, seed=7, context_visible=visible):
            context = by_hash[recipe.context_donor]
            clusters = {by_hash[h].cluster for f in ("texture", "eyes", "mouth") for h, _ in recipe.components[f]}
            if context.cluster != 0:
                continue
            if visible:
                mixed_when_shown += clusters != {0}
            else:
                assert clusters == {0}, recipe.components
    assert mixed_when_shown > 0, "the small cluster never ran out with the context person barred"


def test_covered_photos_give_shape_factors_only():
    # why: a fringe or glasses rims in a donor's texture or eye detail ghost in every face mixed from it
    pool = donors(9)
    covered = {pool[1].content_hash, pool[4].content_hash}
    pool = [dataclasses.replace(d, covered=("glasses",)) if d.content_hash in covered else d for d in pool]
    gave_shape = 0
    for recipe in sample_recipes(pool, FACTOR_NAMES, 30, seed=8):
        for f in ("texture", "eyes", "nose", "mouth"):
            assert not {h for h, _ in recipe.components[f]} & covered, f
        gave_shape += any({h for h, _ in recipe.components[f]} & covered for f in ("geometry", "symmetry"))
    assert gave_shape > 0, "covered photos should still give shape factors"


def test_a_turned_context_photo_gives_its_person_features_from_another_photo():
    # why: in the neutral frame the context photo is only an anchor; a strongly turned one gave
    # the nose and mouth of the demo's worst face (a dark gash from the nostril to the lip)
    pool = donors(6, photos_per_person=2)
    turned = {d.content_hash for d in pool if d.content_hash.startswith(("h000", "h010"))}
    pool = [dataclasses.replace(d, yaw=0.6) if d.content_hash in turned else d for d in pool]
    anchored = 0
    for recipe in sample_recipes(pool, FACTOR_NAMES, 40, seed=3, context_visible=False, context_max_yaw=0.7):
        anchored += recipe.context_donor in turned
        for f in ("texture", "eyes", "nose", "mouth"):
            assert not {h for h, _ in recipe.components[f]} & turned, (f, recipe.context_donor)
    assert anchored > 0, "the turned photos must still serve as the context anchor"


def test_a_beard_covers_the_lower_face():
    # why: a beard split between the texture and the mouth factor left a pale ring round another
    # donor's lips, and its modes darkened clean-shaven mixes: bearded faces give shape only
    import cv2

    from personc_assets.core.faces.occluders import MAX_BEARD, occluders
    from personc_assets.core.faces.marks import skin_marks
    from test_morphable import synthetic_face

    face = synthetic_face(3)
    bearded = face.aligned.copy()
    lm = np.round(face.landmarks).astype(np.int32)
    jaw = np.concatenate([lm[3:14], lm[[54, 35, 33, 31, 48]]])
    mask = np.zeros(bearded.shape[:2], np.uint8)
    cv2.fillPoly(mask, [jaw], 1)
    lips = np.zeros_like(mask)
    cv2.fillPoly(lips, [lm[48:60]], 1)
    bearded[(mask > 0) & (lips == 0)] = (60, 45, 35)  # dark hair over chin and upper lip
    assert skin_marks(face.aligned, face.landmarks)[1] < MAX_BEARD < skin_marks(bearded, face.landmarks)[1]
    assert "beard" not in occluders(face.aligned, face.landmarks)
    assert "beard" in occluders(bearded, face.landmarks)


def test_a_faces_occluders_are_measured_once_per_process(monkeypatch):
    # why: the backbone's fit and the sampler's donor description both ask, for every source face
    # (about 0.15 s each: a face detection and the realism measures); one run needs one answer
    import personc_assets.core.faces.occluders as occ
    from test_morphable import synthetic_face

    monkeypatch.setattr(occ, "_MEASURED", type(occ._MEASURED)())
    calls = []
    real = occ._measure_occluders
    monkeypatch.setattr(occ, "_measure_occluders", lambda im, lm: calls.append(1) or real(im, lm))
    face = synthetic_face(4)
    first = occ.occluders(face.aligned, face.landmarks)
    again = occ.occluders(face.aligned.copy(), face.landmarks.astype(np.float64))  # the fit's copy
    assert first == again and len(calls) == 1
    changed = face.aligned.copy()
    changed[0, 0] = 255 - changed[0, 0]  # one pixel: another photo, measured anew
    occ.occluders(changed, face.landmarks)
    assert len(calls) == 2
    moved = face.landmarks + 1.0
    occ.occluders(face.aligned, moved)
    assert len(calls) == 3, "other landmarks are another question"


def test_bad_inputs_say_what_to_fix():
    # why: a one-group source set or a typo in a knob must fail with the remedy
    only_a = [dataclasses.replace(d, group="A") for d in donors(5)]
    with pytest.raises(ValueError, match="both groups"):
        sample_recipes(only_a, FACTOR_NAMES, 1, seed=0)
    with pytest.raises(ValueError, match="de-duplicate"):
        sample_recipes(donors(4) + donors(1), FACTOR_NAMES, 1, seed=0)
    with pytest.raises(TypeError, match="donors_per_factor"):
        sample_recipes(donors(4), FACTOR_NAMES, 1, seed=0, donors_per_factr=2)
    with pytest.raises(ValueError, match="mean_pull"):
        SamplerKnobs(mean_pull=1.0)
    with pytest.raises(ValueError, match="group"):
        DonorInfo("x" * 64, "C", "p")  # type: ignore[arg-type]


def test_knobs_change_the_mix():
    # why: donors_per_factor / primary_weight / mean_pull are the tuning handles; they must act
    pool = donors(8)
    r = sample_recipes(pool, FACTOR_NAMES, 1, seed=7, donors_per_factor=3, donors_for={},
                       primary_weight=0.5, mean_pull=0.2, mean_push_spread=0.0)[0]
    for f in FACTOR_NAMES:
        assert len(r.components[f]) in (2, 3)  # 3, minus a donor dropped to avoid a universal donor
        assert max(w for _, w in r.components[f]) >= 0.5 - 1e-6
    assert r.mean_pull == 0.2
    default = sample_recipes(pool, FACTOR_NAMES, 1, seed=7)[0]
    assert all(len(default.components[f]) == 1 for f in FACTOR_NAMES)  # one person per factor
    assert -SamplerKnobs().mean_push_spread <= default.mean_pull <= 0.0
    pulls = {r.mean_pull for r in sample_recipes(pool, FACTOR_NAMES, 5, seed=7, mean_push_spread=0.0)}
    assert pulls == {0.0}


def test_the_sampler_reads_factor_roles_never_factor_names():
    # why: a backbone with other factor names must get the same rules through its FactorRoles
    from personc_assets.core.backbones import FACTOR_ROLES, FactorRoles

    rename = {f: f"f{i}" for i, f in enumerate(FACTOR_NAMES)}
    roles = FactorRoles(*(tuple(rename[f] for f in names)
                          for names in (FACTOR_ROLES.shape, FACTOR_ROLES.sensitive, FACTOR_ROLES.appearance)))
    pool = donors(6, photos_per_person=2, turned=1)
    ours = sample_recipes(pool, FACTOR_NAMES, 12, seed=13)
    theirs = sample_recipes(pool, [rename[f] for f in FACTOR_NAMES], 12, seed=13, roles=roles)
    assert [{rename[f]: parts for f, parts in r.components.items()} for r in ours] == \
        [r.components for r in theirs]
    unroled = sample_recipes(pool, [rename[f] for f in FACTOR_NAMES], 12, seed=13, roles=FactorRoles())
    assert [r.components for r in unroled] != [r.components for r in theirs], "roles must change the draw"


def test_stylegan2_roles_draw_what_its_factor_names_drew_before():
    # why: moving the roles into the backbone must not change the releases of the StyleGAN2 backbone
    import dataclasses

    from personc_assets.core.backbones import FACTOR_ROLES
    from personc_assets.core.backbones.stylegan2.factors import STYLEGAN2_FACTOR_NAMES, STYLEGAN2_FACTOR_ROLES

    pool = donors(7, photos_per_person=2, turned=1)
    old = dataclasses.replace(FACTOR_ROLES, pulled=None)  # the old constants: the push moved every factor
    before = sample_recipes(pool, STYLEGAN2_FACTOR_NAMES, 12, seed=21, roles=old)
    after = sample_recipes(pool, STYLEGAN2_FACTOR_NAMES, 12, seed=21, roles=STYLEGAN2_FACTOR_ROLES)
    assert [r.recipe_id for r in before] == [r.recipe_id for r in after]
    assert all(r.pulled is None for r in after), "StyleGAN2's push still moves its whole latent"


# ------------------------------------------------------------------------ mixing

def test_mix_is_a_weighted_sum_pulled_toward_the_mean():
    # why: this formula is what moves identity; reports and ICS recompute it from the recipe
    a, b = "a" * 64, "b" * 64
    factors = {a: {"texture": np.array([1.0, 0.0], np.float32), "_context": np.full((2, 2, 3), 7, np.uint8)},
               b: {"texture": np.array([0.0, 1.0], np.float32), "_context": np.full((2, 2, 3), 9, np.uint8)}}
    mean = {"texture": np.array([1.0, 1.0], np.float32)}
    recipe = make_recipe(0, {"texture": [(a, 0.75), (b, 0.25)]}, 0.2, b)
    mixed = mix_factors(recipe, factors, mean)
    np.testing.assert_allclose(mixed["texture"], 0.8 * np.array([0.75, 0.25]) + 0.2 * np.array([1.0, 1.0]))
    assert mixed["texture"].dtype == np.float32
    assert np.array_equal(mixed["_context"], factors[b]["_context"])  # context is copied whole


def test_the_push_moves_only_the_factors_the_roles_name():
    # why: pushing the morphable model's texture off the mean exaggerated each donor's skin marks
    # (stubble into a moustache, a crease into a streak) without lowering dlib's similarity; its
    # recipes leave the texture unpushed, and a stored recipe says so (a re-mix gives the same face)
    a, b = "a" * 64, "b" * 64
    factors = {a: {"texture": np.array([1.0, 0.0], np.float32), "geometry": np.array([2.0], np.float32)},
               b: {"texture": np.array([0.0, 1.0], np.float32), "geometry": np.array([4.0], np.float32)}}
    mean = {"texture": np.array([0.5, 0.5], np.float32), "geometry": np.array([3.0], np.float32)}
    recipe = make_recipe(0, {"texture": [(a, 1.0)], "geometry": [(b, 1.0)]}, -0.3, b, pulled=("geometry",))
    mixed = mix_factors(recipe, factors, mean)
    np.testing.assert_allclose(mixed["texture"], factors[a]["texture"])  # the donor's own texture
    np.testing.assert_allclose(mixed["geometry"], 1.3 * 4.0 - 0.3 * 3.0, rtol=1e-6)  # pushed off the mean
    back = recipe_from_json(recipe_json(recipe))
    assert back == recipe and back.pulled == ("geometry",)
    everything = make_recipe(0, {"texture": [(a, 1.0)], "geometry": [(b, 1.0)]}, -0.3, b)
    assert everything.pulled is None and everything.recipe_id != recipe.recipe_id
    np.testing.assert_allclose(mix_factors(everything, factors, mean)["texture"], [1.15, -0.15], rtol=1e-6)
    with pytest.raises(ValueError, match="does not mix"):
        make_recipe(0, {"texture": [(a, 1.0)]}, -0.3, b, pulled=("geometry",))
    assert {r.pulled for r in sample_recipes(donors(8), FACTOR_NAMES, 6, seed=4)} == \
        {("eyes", "geometry", "mouth", "nose", "symmetry")}


def test_mix_errors_name_the_problem():
    # why: factors from another fit or a missing donor must not mix silently
    a, b = "a" * 64, "b" * 64
    factors = {a: {"texture": np.zeros(2, np.float32)}}
    recipe = make_recipe(0, {"texture": [(a, 0.5), (b, 0.5)]}, 0.0, a)
    with pytest.raises(KeyError, match="bbbbbbbbbb"):
        mix_factors(recipe, factors, {"texture": np.zeros(2)})
    factors[b] = {"texture": np.zeros(3, np.float32)}
    with pytest.raises(ValueError, match="different fits"):
        mix_factors(recipe, factors, {"texture": np.zeros(2)})


# ------------------------------------------------------------------ donor facts

def _face(yaw_shift: float = 0.0, mouth: float = 0.0, label: str = "") -> SourceFace:
    lm = np.zeros((68, 2), np.float32)
    lm[:17, 0] = np.linspace(60, 196, 17)
    lm[:17, 1] = 120 + 60 * np.sin(np.linspace(0, np.pi, 17))
    lm[27] = (128, 100)
    lm[8] = (128, 190)
    lm[30] = (128 + yaw_shift, 140)
    lm[17:27] = (128, 95)
    lm[36:48] = (128, 115)
    lm[48:60] = (128, 165)
    lm[[61, 62, 63], 1] = 163
    lm[[65, 66, 67], 1] = 163 + mouth
    lm[60:68, 0] = 128
    img = np.full((256, 256, 3), 128, np.uint8)
    return SourceFace(f"{label}{yaw_shift}{mouth}".ljust(64, "0"), "A", label, "x", img, lm)


def test_yaw_and_mouth_openness_estimates():
    # why: compatibility matching rests on these two landmark measurements
    assert abs(estimate_yaw(_face().landmarks)) < 1e-6
    assert estimate_yaw(_face(-30).landmarks) < -0.2  # nose toward the image-left jaw end
    assert estimate_yaw(_face(30).landmarks) > 0.2
    assert mouth_openness(_face().landmarks) == 0.0
    assert mouth_openness(_face(mouth=9).landmarks) == pytest.approx(0.1)


def test_describe_donors_uses_labels_and_classes():
    # why: the pipeline only knows photos; labels/classes it derives must reach the sampler
    faces = [_face(label="x"), _face(5, label="y"), _face(-5)]
    info = describe_donors(faces, classes={faces[0].content_hash: "female",
                                           faces[1].content_hash: "male"})
    assert [d.person for d in info] == ["x", "y", faces[2].content_hash]
    assert info[0].cluster != info[1].cluster
    assert info[2].cluster not in (info[0].cluster, info[1].cluster)  # unnamed keeps its own
    relabelled = describe_donors(faces, labels={faces[2].content_hash: "x"})
    assert relabelled[2].person == "x"


def test_persons_from_embeddings_links_close_photos():
    # why: unlabelled sources are grouped into people by the encoder before sampling
    e = np.array([[1, 0, 0], [0.99, 0.14, 0], [0, 1, 0], [0, 0, 1]], np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    groups = persons_from_embeddings(["d", "c", "b", "a"], e, tau=0.9)
    assert groups["d"] == groups["c"] == "c"
    assert len({groups["b"], groups["a"], groups["c"]}) == 3

"""The embedded morphable backbone: shape model, warps, appearance, rendering, state.

Fast tests run on procedurally drawn faces; the tests on real photos
(../shared/faces) check reconstruction quality and identity with dlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from personc_assets.core.backbones import BACKBONES, FACTOR_NAMES, BackboneError
from personc_assets.core.backbones.morphable import MorphableBackbone, MorphableConfig
from personc_assets.core.backbones.morphable.appearance import low_pass, low_pass_reference
from personc_assets.core.backbones.morphable.shape import (
    MIRROR_PERM, align_to, apply_pose, fit_pca, mirror, normalise, uncross_lips)
from personc_assets.core.backbones.morphable.warp import (
    triangle_index_map, triangle_maps, triangle_maps_reference, triangulate, warp_image)
from personc_assets.core.types import SourceFace

# --------------------------------------------------------------- synthetic faces

_BASE = np.array(
    [(128 + 60 * np.sin(t), 112 + 78 * np.cos(t)) for t in np.radians(np.linspace(-100, 100, 17))]
    + [(92, 102), (99, 97), (107, 96), (115, 97), (122, 100),
       (134, 100), (141, 97), (149, 96), (157, 97), (164, 102)]
    + [(128, 108), (128, 118), (128, 128), (128, 138)]
    + [(116, 145), (122, 147), (128, 148), (134, 147), (140, 145)]
    + [(96, 115), (102, 111), (110, 111), (118, 115), (110, 118), (102, 118)]
    + [(138, 115), (146, 111), (154, 111), (160, 115), (154, 118), (146, 118)]
    + [(110, 165), (116, 160), (122, 158), (128, 159), (134, 158), (140, 160),
       (146, 165), (140, 171), (134, 174), (128, 175), (122, 174), (116, 171)]
    + [(113, 165), (122, 163), (128, 163), (134, 163), (143, 165), (134, 167), (128, 168), (122, 167)],
    dtype=np.float64)


def synthetic_face(seed: int, group: str = "A", label: str = "") -> SourceFace:
    """A drawn face (skin oval, eyes, brows, lips) with matching dlib-68 landmarks."""
    import cv2

    rng = np.random.default_rng(seed)
    pts = _BASE + rng.normal(0, 1.5, _BASE.shape)
    pts[[57, 58, 56, 66, 65, 67], 1] += rng.uniform(0, 4)  # mouth opening
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    bg = rng.uniform(40, 200, 3)
    img = (bg[None, None] * (0.7 + 0.3 * xx[..., None])).astype(np.float32)
    skin = rng.uniform([150, 100, 80], [230, 180, 150])
    cv2.ellipse(img, (128, 135), (62, 85), 0, 0, 360, skin.tolist(), -1)
    for eye in (pts[36:42], pts[42:48]):
        c = eye.mean(0)
        cv2.ellipse(img, (int(c[0]), int(c[1])), (9, 4), 0, 0, 360, (240, 240, 240), -1)
        cv2.circle(img, (int(c[0]), int(c[1])), 3, rng.uniform(20, 90, 3).tolist(), -1)
    brow = rng.uniform(20, 90, 3).tolist()
    for a, b in ((17, 21), (22, 26)):
        cv2.polylines(img, [np.round(pts[a:b + 1]).astype(np.int32)], False, brow, 3)
    lips = rng.uniform([140, 40, 40], [220, 110, 110]).tolist()
    cv2.fillPoly(img, [np.round(pts[48:60]).astype(np.int32)], lips)
    img += rng.normal(0, 6, img.shape).astype(np.float32)
    image = np.clip(img, 0, 255).astype(np.uint8)
    return SourceFace(f"{seed:064x}", group, label, f"synthetic-{seed}", image, pts.astype(np.float32))


@pytest.fixture(scope="module")
def faces() -> list[SourceFace]:
    return [synthetic_face(i, "AB"[i % 2], f"p{i // 2}") for i in range(6)]


@pytest.fixture(scope="module")
def fitted(faces) -> MorphableBackbone:
    bb = BACKBONES.create("morphable")
    bb.fit(faces)
    return bb


# ------------------------------------------------------------------- shape model

def test_mirror_permutation_pairs_left_and_right_points():
    # why: the geometry/symmetry split is only meaningful if mirroring swaps the right landmarks
    assert np.array_equal(MIRROR_PERM[MIRROR_PERM], np.arange(68))
    for a, b in ((0, 16), (36, 45), (39, 42), (48, 54), (17, 26), (31, 35), (61, 63)):
        assert MIRROR_PERM[a] == b
    for self_paired in (8, 27, 30, 33, 51, 57, 62, 66):
        assert MIRROR_PERM[self_paired] == self_paired
    shape, _ = normalise(_BASE)
    assert np.abs(mirror(shape) - shape).max() < 0.05  # the drawn template is nearly symmetric


def test_procrustes_pose_round_trip():
    # why: the pose separates where a face sits from what shape it has; it must invert exactly
    pts = _BASE + np.random.default_rng(0).normal(0, 2, _BASE.shape)
    ref, _ = normalise(_BASE)
    shape, pose = align_to(pts, ref)
    np.testing.assert_allclose(apply_pose(shape, pose), pts, atol=1e-9)


def test_crossed_inner_lips_are_uncrossed():
    # why: dlib often crosses the inner lips of closed mouths, which flips triangles in the warp
    pts = _BASE.copy()
    pts[62, 1], pts[66, 1] = 170.0, 165.0  # upper inner lip below the lower one
    fixed = uncross_lips(pts)
    assert fixed[62, 1] == fixed[66, 1] == 167.5
    assert np.array_equal(uncross_lips(_BASE), _BASE)


def test_pca_reconstructs_training_data_with_n_minus_one_modes():
    # why: with few sources (the demo has 7) every mode is kept so sources come back exactly
    rng = np.random.default_rng(1)
    data = rng.normal(size=(5, 40))
    w = np.full(5, 0.2)
    pca = fit_pca(data, w, max_modes=64)
    assert pca.n_modes == 4
    np.testing.assert_allclose(pca.reconstruct(pca.project(data)), data, atol=1e-4)
    np.testing.assert_allclose(pca.basis @ pca.basis.T, np.eye(4), atol=1e-9)


# ------------------------------------------------------------------------- warps

def test_triangle_maps_match_the_barycentric_reference():
    # why: the vectorised warp is the fast path; the per-pixel barycentric loop is its reference
    src = np.array([[0, 0], [47, 0], [47, 47], [0, 47], [20, 22], [30, 12]], np.float64)
    dst = src + np.array([[0, 0], [0, 0], [0, 0], [0, 0], [3, -2], [-2, 4]])
    tri = triangulate(dst)
    fast = triangle_maps(src, dst, tri, (48, 48))
    ref = triangle_maps_reference(src, dst, tri, (48, 48))
    index = triangle_index_map(dst, tri, (48, 48))
    assert (index >= 0).all(), "border points must make the triangulation cover every pixel"
    # pixels on shared edges may take either neighbour's affine; both agree there up to rounding
    assert np.abs(fast[0] - ref[0]).max() < 0.5 and np.abs(fast[1] - ref[1]).max() < 0.5
    assert np.median(np.abs(fast[0] - ref[0])) < 1e-4


def test_warp_with_identical_points_is_the_identity():
    # why: re-rendering a source into its own photo must not move or blur the context
    img = np.random.default_rng(2).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    pts = np.array([[0, 0], [31, 0], [31, 31], [0, 31], [15, 16]], np.float64)
    out = warp_image(img, pts, pts, triangulate(pts))
    assert np.array_equal(out, img)


def test_fast_low_pass_matches_reference():
    # why: wide blurs run on a 4x smaller copy; they must stay within a grey level of the full blur
    img = np.random.default_rng(3).random((256, 256, 3)).astype(np.float32)
    img = low_pass_reference(img, 3.0)  # image-like smoothness
    for sigma in (10.0, 20.0):
        assert np.abs(low_pass(img, sigma) - low_pass_reference(img, sigma)).max() < 2.0 / 255


def test_face_mask_forehead_leaves_the_upper_forehead_to_the_context():
    # why: donors' fringes lie in the upper forehead of their textures; a lower mask top keeps them out
    from personc_assets.core.backbones.morphable.appearance import face_mask

    pts = _BASE
    full, low = face_mask(pts, (256, 256)) > 0.5, face_mask(pts, (256, 256), forehead=0.45) > 0.5
    assert not (low & ~full).any()  # a subset of the full face
    top = lambda m: int(np.flatnonzero(m.any(axis=1))[0])  # noqa: E731
    brow_top = int(pts[17:27, 1].min())
    assert top(full) < top(low) < brow_top
    assert (face_mask(pts, (256, 256), forehead=0.0) > 0.5).any(axis=1)[brow_top + 2]
    with pytest.raises(ValueError, match="face_forehead"):
        BACKBONES.create("morphable", face_forehead=-0.1)


# --------------------------------------------------------------------- backbone

def _region_round_its_hull(fitted, region: str, points: slice):
    """The mean face's soft ``region`` mask, its landmarks' hull's inside (2 px in), and each pixel's
    distance from that hull in eye distances."""
    import cv2

    from personc_assets.core.backbones.morphable.appearance import interocular, region_masks

    s = fitted.image_size
    pts = fitted.mean_points()
    hull = np.zeros((s, s), np.uint8)
    cv2.fillConvexPoly(hull, cv2.convexHull(np.round(pts[points]).astype(np.int32)), 1)
    inside = (hull > 0) & (cv2.distanceTransform(hull, cv2.DIST_L2, 5) > 2)
    away = cv2.distanceTransform(1 - hull, cv2.DIST_L2, 5) / interocular(pts)
    return region_masks(pts, (s, s))[region], inside, away


def test_the_mouth_region_is_the_lips_not_the_skin_around_them(fitted):
    # why: with the skin round the lips in the mouth factor, a clean-shaven mouth donor left a clean
    # ring inside a stubbled texture (and a stubbled one a dark ring on a smooth face)
    mouth, lips, away = _region_round_its_hull(fitted, "mouth", slice(48, 60))
    assert mouth[lips].min() > 0.5, "the lips are the mouth's"
    assert mouth[away >= 0.25].max() < 0.05, "skin a quarter of the eye distance from the lips is the texture's"


def test_the_nose_region_stops_at_the_nostrils(fitted):
    # why: grown into the philtrum, the nose region's modes painted a dark smudge between the nose
    # and the lips (a moustache nobody had); the skin there is the texture's
    nose, inside, away = _region_round_its_hull(fitted, "nose", slice(27, 36))
    assert nose[inside].min() > 0.5, "the nose is the nose's"
    pts = fitted.mean_points()
    philtrum = np.round((pts[33] + pts[51]) / 2).astype(int)  # between the nose's base and the upper lip
    # the region's feathered edge still reaches the middle of the philtrum (0.18 there; 0.41 grown 0.12)
    assert nose[philtrum[1], philtrum[0]] < 0.25, "the philtrum is mostly the texture's"
    assert nose[away >= 0.25].max() < 0.05  # 0.11 grown 0.12


def test_registered_with_known_knobs():
    # why: the pipeline builds backbones by name; a typo in a knob must say which knobs exist
    assert "morphable" in BACKBONES.names()
    with pytest.raises(TypeError, match="detail_sigma"):
        BACKBONES.create("morphable", detial_sigma=0.2)
    with pytest.raises(ValueError, match="colour_match"):
        BACKBONES.create("morphable", colour_match=2.0)


def test_unfitted_backbone_says_how_to_fix_it():
    # why: using the model before fit/load must fail with the remedy, not an AttributeError
    with pytest.raises(BackboneError, match="fit"):
        MorphableBackbone().population_mean()
    with pytest.raises(BackboneError, match="at least 2"):
        MorphableBackbone().fit([synthetic_face(0)])


def test_fits_three_faces(faces):
    # why: the smallest useful source set (one person in A, two in B) must still give a model
    bb = MorphableBackbone()
    bb.fit(faces[:3])
    out = bb.synthesize([p.latent for p in bb.project(faces[:3])])
    assert all(o.shape == (256, 256, 3) and o.dtype == np.uint8 for o in out)


def test_factors_are_the_six_named_ones(fitted, faces):
    # why: recipes, ICS and reports name factors; the backbone must offer all six plus context
    factors = fitted.decompose(fitted.project(faces[:1])[0].latent)
    assert set(FACTOR_NAMES) <= set(factors)
    assert {k for k in factors if k.startswith("_")} == {"_pose", "_yaw", "_context", "_context_points"}
    for name in FACTOR_NAMES:
        assert factors[name].ndim == 1 and factors[name].dtype == np.float32


def test_decompose_compose_round_trip_is_exact(fitted, faces):
    # why: factor mixing relies on compose(decompose(z)) being z itself
    latent = fitted.project(faces[:1])[0].latent
    again = fitted.compose(fitted.decompose(latent))
    assert set(again) == set(latent)
    for k in latent:
        assert np.array_equal(np.asarray(again[k]), np.asarray(latent[k])), k


def test_reconstruction_is_close(fitted, faces):
    # why: projected sources must render back to themselves, or factors describe someone else
    projections = fitted.project(faces)
    assert max(p.reconstruction_error for p in projections) < 0.02
    assert max(p.extras["face_error"] for p in projections) < 0.05


def test_compose_rejects_incomplete_or_foreign_factors(fitted, faces):
    # why: factors from another fit (other mode counts) or missing context must fail clearly
    factors = dict(fitted.decompose(fitted.project(faces[:1])[0].latent))
    del factors["_context"]
    with pytest.raises(ValueError, match="_context"):
        fitted.compose(factors)
    factors = dict(fitted.decompose(fitted.project(faces[:1])[0].latent))
    factors["texture"] = np.zeros(99, np.float32)
    with pytest.raises(ValueError, match="another fit"):
        fitted.compose(factors)


def test_population_mean_counts_each_person_once(faces):
    # why: one person's many photos must not pull the "mean face" toward that person
    p0, p1 = faces[0], faces[2]
    copies = [SourceFace(f"dup{k}", p1.group, p1.label, p1.path, p1.aligned, p1.landmarks)
              for k in range(5)]
    bb = MorphableBackbone()
    bb.fit([p0] + copies)
    mean = bb.population_mean()
    own = [bb.decompose(p.latent) for p in bb.project([p0, p1])]
    for name in FACTOR_NAMES:
        np.testing.assert_allclose(mean[name], 0.5 * (own[0][name] + own[1][name]), atol=1e-4)


def test_state_save_load_round_trip(fitted, faces, tmp_path):
    # why: pipeline steps share the fitted model through the saved state; nothing may drift
    path = tmp_path / "state.npz"
    fitted.save_state(path)
    other = MorphableBackbone()
    other.load_state(path)
    assert other.state_hash() == fitted.state_hash()
    latent = fitted.project(faces[:1])[0].latent
    assert np.array_equal(other.synthesize([latent])[0], fitted.synthesize([latent])[0])
    with np.load(path, allow_pickle=False) as data:  # no pickles in the state
        assert "texture_basis" in data.files


def test_state_hash_follows_the_fit_and_load_checks_config(fitted, faces, tmp_path):
    # why: lineage identifies the model by its hash; a different fit or knob must not pass as the same
    other = MorphableBackbone()
    other.fit(faces[:4])
    assert other.state_hash() != fitted.state_hash()
    path = tmp_path / "state.npz"
    fitted.save_state(path)
    with pytest.raises(BackboneError, match="same knobs"):
        MorphableBackbone(MorphableConfig(light_sigma=0.3)).load_state(path)


def test_mixing_two_faces_changes_the_face_not_the_context(faces):
    # why: in the context frame (the privacy modes' edit of the user's own photo) identity factors
    # must move the face region while hair/background come from the context donor
    fitted = BACKBONES.create("morphable", frame="context")
    fitted.fit(faces)
    a, b = (fitted.decompose(p.latent) for p in fitted.project(faces[:2]))
    mixed = dict(a)
    for name in FACTOR_NAMES:
        mixed[name] = (0.5 * a[name] + 0.5 * b[name]).astype(np.float32)
    img = fitted.synthesize([fitted.compose(mixed)])[0].astype(np.float32)
    src = faces[0].aligned.astype(np.float32)
    assert np.abs(img[:20] - src[:20]).mean() < 3.0  # top border: context untouched
    centre = np.s_[110:180, 100:156]
    assert np.abs(img[centre] - src[centre]).mean() > 3.0  # the face changed


# ---------------------------------------------------------------- real photos

PEOPLE = ["id01", "id02", "id03", "id04", "id05", "id06", "id07"]


@pytest.fixture(scope="module")
def real(shared_faces: Path):
    from personc_assets.core.encoders import ENCODERS
    from personc_assets.core.faces.ingest import ingest_file

    faces = [ingest_file(sorted((shared_faces / p).glob(f"{p}_0*.jpg"))[0], "A" if i % 2 else "B", p)
             for i, p in enumerate(PEOPLE)]
    extra = [ingest_file(shared_faces / "id01" / f"id01_0{k}.jpg", "B", "id01") for k in (2, 5)]
    bb = MorphableBackbone()
    bb.fit(faces + extra)
    return {"faces": faces, "extra": extra, "backbone": bb, "encoder": ENCODERS.create("dlib")}


def _embed(encoder, image: np.ndarray) -> np.ndarray:
    from personc_assets.core.faces.detect import detect_faces

    found = detect_faces(image)
    assert len(found) == 1, f"expected one face in the render, found {len(found)}"
    return encoder.embed(found)[0]


def test_real_faces_reconstruct_with_their_identity(real, monkeypatch):
    # why: a projection that loses the person would make every factor meaningless. The projection
    # keeps the mouth's opening; releases drop it on purpose (closed_mouth), so fidelity is
    # measured with it drawn
    import dataclasses

    bb, enc = real["backbone"], real["encoder"]
    monkeypatch.setattr(bb, "config", dataclasses.replace(bb.config, closed_mouth=False))
    faces = real["faces"][:3]
    projections = bb.project(faces)
    assert max(p.reconstruction_error for p in projections) < 0.01
    for face, p in zip(faces, projections):
        sim = float(_embed(enc, bb.synthesize([p.latent])[0]) @ _embed(enc, face.aligned))
        assert sim > 0.97, f"{face.label}: reconstruction similarity {sim:.3f}"


def test_recomposition_from_one_person_stays_that_person(real):
    # why: factors that all come from one person must give that person back, so the guard rejects it
    from personc_assets.core.recipes import make_recipe, mix_factors

    bb, enc = real["backbone"], real["encoder"]
    id01 = [real["faces"][0]] + real["extra"]
    factors = {f.content_hash: bb.decompose(p.latent) for f, p in zip(id01, bb.project(id01))}
    parts = [(f.content_hash, w) for f, w in zip(id01, (0.5, 0.3, 0.2))]
    recipe = make_recipe(0, {name: parts for name in bb.factor_names}, 0.0, id01[0].content_hash)
    image = bb.synthesize([bb.compose(mix_factors(recipe, factors, bb.population_mean()))])[0]
    probe = _embed(enc, image)
    sims = [float(probe @ _embed(enc, f.aligned)) for f in id01]
    assert max(sims) >= 0.90, f"one-person recomposition only reached {max(sims):.3f}"


def test_mixed_face_is_not_its_context_donor(real):
    # why: the rendered face must replace the context donor's face, not leave it showing through
    from personc_assets.core.recipes import describe_donors, mix_factors, sample_recipes

    bb, enc = real["backbone"], real["encoder"]
    faces = real["faces"]
    factors = {f.content_hash: bb.decompose(p.latent) for f, p in zip(faces, bb.project(faces))}
    recipe = sample_recipes(describe_donors(faces, factors), bb.factor_names, 1, seed=3)[0]
    image = bb.synthesize([bb.compose(mix_factors(recipe, factors, bb.population_mean()))])[0]
    context = next(f for f in faces if f.content_hash == recipe.context_donor)
    sim = float(_embed(enc, image) @ _embed(enc, context.aligned))
    assert sim < 0.95, f"the mixed face still matches its context donor ({sim:.3f})"

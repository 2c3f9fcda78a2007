"""Whole-frame synthesis: the neutral frame, its linearisation and the novelty step.

Fast tests run on procedurally drawn faces (``test_morphable.synthetic_face``);
the novelty test on real photos (../shared/faces) checks that the step takes a
mixed face below dlib's tau as the guard measures it.
"""

from __future__ import annotations

import numpy as np
import pytest

from personc_assets.core.backbones import BACKBONES
from personc_assets.core.backbones.morphable import MorphableBackbone
from personc_assets.core.novelty import NoveltyConfig, NoveltySearch, chip_affine
from test_morphable import faces, fitted  # noqa: F401  (the drawn faces and their fitted model)


def _oval(bb: MorphableBackbone, latent) -> np.ndarray:
    return bb._oval(bb.render_landmarks(latent))[..., 0]


def test_neutral_frame_shows_no_pixel_of_the_context_photo(fitted, faces):
    # why: a release must not be an edited source photo: hair, clothes, backdrop come from nobody
    latents = [p.latent for p in fitted.project(faces[:2])]
    swapped = dict(latents[0])
    swapped["context"], swapped["context_points"] = latents[1]["context"], latents[1]["context_points"]
    swapped["pose"], swapped["yaw"] = latents[1]["pose"], latents[1]["yaw"]
    a, b = fitted.synthesize([latents[0], swapped])
    assert np.array_equal(a, b), "the neutral render must not depend on the context donor's photo"
    outside = _oval(fitted, latents[0]) < 1e-3
    backdrop = np.round(fitted._backdrop() * 255).astype(np.int16)
    assert outside.mean() > 0.15  # the drawn faces are large: about a fifth of the frame is backdrop
    assert np.abs(a.astype(np.int16)[outside] - backdrop[outside]).max() <= 1


def test_context_frame_stays_available_and_differs(faces):
    # why: the privacy modes edit the user's own photo on purpose and ask for it by name
    bb = BACKBONES.create("morphable", frame="context")
    bb.fit(faces)
    latent = bb.project(faces[:1])[0].latent
    render = bb.synthesize([latent])[0]
    crop = faces[0].aligned
    assert np.abs(render.astype(float) - crop).mean() < 12  # the photo around the face is kept
    with pytest.raises(ValueError, match="frame"):
        BACKBONES.create("morphable", frame="collage")


def test_the_oval_rim_fades_to_the_mean_appearance(fitted, faces):
    # why: strands of a donor's hair over the temples and cheeks end up at the oval's rim; the rim
    # shows the population's mean appearance, the core each face's own
    latents = [p.latent for p in fitted.project(faces[:2])]
    same_shape = dict(latents[1])
    for k in ("geometry", "symmetry"):
        same_shape[k] = latents[0][k]
    same_shape["eyes"] = np.concatenate([latents[1]["eyes"][:-1], latents[0]["eyes"][-1:]])
    same_shape["mouth"] = np.concatenate([latents[1]["mouth"][:-1], latents[0]["mouth"][-1:]])
    a, b = (im.astype(np.int16) for im in fitted.synthesize([latents[0], same_shape]))
    pts = fitted.render_landmarks(latents[0])
    oval = _oval(fitted, latents[0])
    cfg = fitted.config
    from personc_assets.core.backbones.morphable.appearance import face_mask
    inner = face_mask(pts, oval.shape, grow=cfg.oval_grow - 1.5 * cfg.periphery_fade,
                      forehead=cfg.oval_forehead) > 0.5
    rim = (oval > 0.5) & (face_mask(pts, oval.shape, grow=cfg.oval_grow - 0.1 * cfg.periphery_fade,
                                    forehead=cfg.oval_forehead) < 0.5)
    assert rim.sum() > 50 and inner.sum() > 1000
    assert np.abs(a - b)[rim].mean() < 0.25 * np.abs(a - b)[inner].mean()


def test_neutral_faces_keep_their_lips_closed(fitted, faces, monkeypatch):
    # why: an open donor mouth warped through the mean frame onto another opening read as fangs or a
    # dark hole; the neutral frame draws every mouth at the closed opening whatever the mouth factor says
    import dataclasses

    from personc_assets.core.backbones.morphable.appearance import interocular
    from personc_assets.core.backbones.morphable.shape import inner_lip_gap

    latent = dict(fitted.project(faces[:1])[0].latent)
    monkeypatch.setattr(fitted, "config", dataclasses.replace(fitted.config, closed_mouth=True))

    def gaps() -> list[float]:
        out = []
        for opening in (0.0, 0.05, 0.15):
            latent["mouth"] = np.concatenate([latent["mouth"][:-1], [opening]]).astype(np.float32)
            out.append(inner_lip_gap(fitted.render_landmarks(latent)))
        return out

    closed = gaps()
    iod = interocular(fitted.render_landmarks(latent))
    assert np.ptp(closed) < 1e-9, closed
    # the lips meet (a hair's gap keeps the warp's triangles): not merely the factor's opening set to 0,
    # which leaves whatever opening the expression regression did not take out of the shape
    assert closed[0] < 0.02 * iod, (closed, iod)
    monkeypatch.setattr(fitted, "config", dataclasses.replace(fitted.config, closed_mouth=False))
    opened = gaps()
    assert opened[2] > opened[0] + 1.0 and closed[0] < opened[0], (closed, opened)


def test_a_closed_mouth_shows_lips_not_teeth(fitted, monkeypatch):
    # why: a grinning donor's teeth, squeezed between closed lips, showed as a pale line: the mouth's
    # inside takes the colour of the lips around it, linearly (the novelty step's render stays exact)
    import dataclasses

    import cv2

    monkeypatch.setattr(fitted, "config", dataclasses.replace(fitted.config, closed_mouth=True))
    fitted.__dict__.pop("_lip_cache", None)
    s = fitted.image_size
    pts = np.round(fitted.mean_points() * 16).astype(np.int32)
    inside, lips = np.zeros((s, s), np.uint8), np.zeros((s, s), np.uint8)
    cv2.fillPoly(inside, [pts[60:68]], 1, shift=4)
    cv2.fillPoly(lips, [pts[48:60]], 1, shift=4)
    lips[cv2.dilate(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))) > 0] = 0
    red, teeth = np.array([0.7, 0.3, 0.3], np.float32), np.array([0.95, 0.95, 0.9], np.float32)
    texture = np.full((s, s, 3), 0.6, np.float32)
    texture[lips > 0], texture[inside > 0] = red, teeth
    closed = fitted._close_lips(texture)
    assert np.abs(closed[inside > 0] - red).max(axis=1).mean() < 0.06, "the inside must take the lips' colour"
    assert np.abs(closed[lips > 0] - texture[lips > 0]).max() < 0.02, "the lips themselves stay"
    other = np.random.default_rng(0).random((s, s, 3)).astype(np.float32)
    assert np.allclose(fitted._close_lips(texture + 2 * other), closed + 2 * fitted._close_lips(other), atol=1e-5)
    monkeypatch.setattr(fitted, "config", dataclasses.replace(fitted.config, closed_mouth=False))
    fitted.__dict__.pop("_lip_cache", None)
    assert fitted._close_lips(texture) is texture


def test_detail_restoration_sharpens_brightness_not_colour(fitted, monkeypatch):
    # why: an unsharp mask on each channel turned dark brows and lip lines on warm skin orange or
    # green (additive darkening saturates a warm base); only the luminance may be sharpened
    import dataclasses

    monkeypatch.setattr(fitted, "config", dataclasses.replace(fitted.config, harmonise=0.0, sharpen=1.0))
    s = fitted.image_size
    image = np.full((s, s, 3), (0.8, 0.6, 0.5), np.float32)
    image[s // 2 - 3:s // 2 + 3, s // 4:3 * s // 4] = (0.35, 0.25, 0.2)  # a dark brow stroke
    oval = np.ones((s, s, 1), np.float32)
    out = fitted._restore(image, oval)
    change = out - image
    assert np.abs(change).max() > 0.05, "the stroke's edges must be sharpened"
    assert np.allclose(change[..., 0], change[..., 1], atol=1e-6) and np.allclose(change[..., 1], change[..., 2], atol=1e-6)
    other = np.random.default_rng(1).random((s, s, 3)).astype(np.float32)
    assert np.allclose(fitted._restore(image + other, oval), out + fitted._restore(other, oval), atol=1e-5)


def test_brows_take_the_skins_hue_eyes_keep_theirs(fitted, monkeypatch):
    # why: a brow's band-pass detail from one donor, added onto another donor's warmer skin, came
    # out orange (releases' brows 1.3x as saturated as their skin, sources' 0.96x); harmonisation
    # gives a brow the skin's broad chroma and keeps the eyes' own colour
    import dataclasses

    import cv2

    monkeypatch.setattr(fitted, "config", dataclasses.replace(fitted.config, harmonise=1.0, sharpen=0.0))
    s = fitted.image_size
    pts = fitted.mean_points()
    skin_rgb, brow_rgb, iris_rgb = (0.8, 0.6, 0.5), (0.55, 0.35, 0.15), (0.3, 0.45, 0.7)
    image = np.full((s, s, 3), skin_rgb, np.float32)
    brow, eye = np.zeros((s, s), np.uint8), np.zeros((s, s), np.uint8)
    cv2.polylines(brow, [np.round(pts[17:22]).astype(np.int32)], False, 1, thickness=3)
    cv2.fillPoly(eye, [np.round(pts[36:42]).astype(np.int32)], 1)
    eye = cv2.erode(eye, np.ones((3, 3), np.uint8))
    image[brow > 0], image[eye > 0] = brow_rgb, iris_rgb
    oval = fitted._oval(pts)
    out = fitted._restore(image, oval, fitted._skin(pts, oval))

    luma = np.array([0.299, 0.587, 0.114], np.float32)  # brightness as the harmonisation keeps it

    def chroma(px):
        return px - (px @ luma)[..., None]

    skin_chroma = chroma(np.array(skin_rgb, np.float32))
    assert np.abs(chroma(out[brow > 0]).mean(0) - skin_chroma).max() < 0.05, "a brow takes the skin's hue"
    assert np.abs(out[brow > 0] @ luma - np.array(brow_rgb) @ luma).max() < 1e-5, "and keeps its darkness"
    assert np.abs(out[eye > 0] - iris_rgb).max(axis=1).mean() < 0.03, "an eye keeps its colour"


def test_linear_render_predicts_the_render(fitted, faces):
    # why: the novelty step optimises the linearised render; it must be the image synthesize draws
    factors = fitted.decompose(fitted.project(faces[:1])[0].latent)
    lin = fitted.linear_render(fitted.compose(factors))
    render = fitted.synthesize([fitted.compose(factors)])[0].astype(np.float32) / 255
    assert np.abs(lin.base - render).mean() < 2 / 255
    face = _oval(fitted, fitted.compose(factors)) > 0.5
    dz = np.random.default_rng(0).normal(0, 2.0, lin.jacobian.shape[1]).astype(np.float32)
    # float renders (before 8-bit rounding, which would swamp a small move)
    render = fitted._render_neutral(fitted.compose(factors))
    moved = fitted._render_neutral(fitted.compose(fitted.offset_appearance(factors, dz)))
    predicted = (lin.jacobian @ dz).reshape(lin.base.shape)  # the change the linear model predicts
    change = np.abs(moved - render)[face].mean()
    assert change > 1 / 255, "the move must change the face"
    assert np.abs(predicted - (moved - render))[face].mean() < 0.25 * change
    assert np.array_equal(fitted.offset_appearance(factors, np.zeros_like(dz))["texture"], factors["texture"])
    with pytest.raises(ValueError, match="dz must be shaped"):
        fitted.offset_appearance(factors, dz[:-1])


def test_chip_geometry_matches_dlib(faces):
    # why: the novelty step embeds its own chips; they must be the chips the guard's encoder sees
    import torch
    from torch.nn import functional as F

    from personc_assets.core.encoders.common import dlib_chip
    from personc_assets.core.faces.detect import face_from_landmarks

    face = faces[0]
    obs = face_from_landmarks(face.aligned, face.landmarks)
    ref = dlib_chip(obs).astype(np.float32)
    grid = NoveltySearch._grid(chip_affine(face.landmarks, 150, 0.25), 256, 150)
    image = torch.from_numpy(face.aligned.astype(np.float32)).permute(2, 0, 1)[None]
    mine = F.grid_sample(image, grid, mode="bilinear", align_corners=True)[0].permute(1, 2, 0).numpy()
    assert np.abs(mine - ref).mean() < 1.5


def test_the_novelty_steps_blurred_chip_is_the_guards_blurred_view(fitted, faces):
    # why: the guard judges the candidate blurred (and mirrored and blurred); the step aims below
    # tau in that view too, so its blurred chip must be the chip the encoder sees after the blur
    import cv2

    from personc_assets.core.encoders.common import dlib_chip
    from personc_assets.core.faces.detect import face_from_landmarks
    from personc_assets.core.novelty import _linear_chips

    factors = fitted.decompose(fitted.project(faces[:1])[0].latent)
    lin = fitted.linear_render(fitted.compose(factors))
    render = fitted.synthesize([fitted.compose(factors)])[0]
    grid = NoveltySearch._grid(chip_affine(lin.landmarks, 150, 0.25), 256, 150)
    plain, _, blurred, blurred_jac = _linear_chips(lin, grid, 1.0)
    softened = cv2.GaussianBlur(render, (0, 0), 1.0)
    ref = dlib_chip(face_from_landmarks(softened, lin.landmarks)).astype(np.float32)
    mine = blurred.view(3, 150, 150).permute(1, 2, 0).numpy()
    sharp = plain.view(3, 150, 150).permute(1, 2, 0).numpy()
    assert np.abs(mine - ref).mean() < 1.0  # 0.67 grey levels when written (the sharp chip: 1.63)
    assert np.abs(sharp - ref).mean() > 2 * np.abs(mine - ref).mean(), "the blur must show in the chip"
    assert blurred_jac.shape == (3 * 150 * 150, lin.jacobian.shape[1])
    assert _linear_chips(lin, grid, 0.0)[2] is None
    with pytest.raises(ValueError, match="blur"):
        NoveltyConfig(blur=-1.0)


def test_novelty_config_is_validated():
    # why: a negative margin would aim at or above tau and the step would stop too early
    with pytest.raises(ValueError, match="margin"):
        NoveltyConfig(margin=-0.1)
    with pytest.raises(ValueError, match="tau"):
        NoveltySearch(1.5)


def test_novelty_steps_side_by_side_give_the_results_of_one_at_a_time(fitted, faces):
    # why: candidates of one round are moved on threads (one core each); a release must not
    # depend on how many cores the machine has or how the candidates were spread over them
    latents = [p.latent for p in fitted.project(faces[:3])]
    mixes = [fitted.decompose(lat) for lat in latents]
    avoid = np.random.default_rng(1).normal(size=(64, 128)).astype(np.float32)
    avoid /= np.linalg.norm(avoid, axis=1, keepdims=True)  # some lie near any face's descriptor
    search = NoveltySearch(0.05, NoveltyConfig(steps=3, margin=0.0))
    alone = [search.refine(fitted, m, avoid) for m in mixes]
    together = search.refine_many(fitted, mixes, avoid, workers=2)
    assert [r.steps for r in together] == [r.steps for r in alone]
    assert all(r.steps > 0 for r in alone), "the test must take steps to compare"
    for a, b in zip(alone, together):
        assert a.end_similarity == b.end_similarity and a.start_similarity == b.start_similarity
        assert all(np.array_equal(a.factors[k], b.factors[k]) for k in a.factors)


def test_the_marks_term_keeps_the_step_from_painting_marks(fitted, faces):
    # why: the step lowered dlib's likeness most cheaply with a few strong local marks (white upper
    # lids, a dark streak, a bright spot between the brows); the marks term caps how far any face
    # pixel's grey level may move from the mix, so the move spreads over the face instead
    mix = fitted.decompose(fitted.project(faces[:1])[0].latent)
    avoid = np.random.default_rng(1).normal(size=(64, 128)).astype(np.float32)
    avoid /= np.linalg.norm(avoid, axis=1, keepdims=True)
    base = fitted._render_neutral(fitted.compose(mix)).mean(axis=2) * 255
    face = _oval(fitted, fitted.compose(mix)) > 0.5

    def largest_change(cfg):
        res = NoveltySearch(0.05, cfg).refine(fitted, mix, avoid)
        moved = fitted._render_neutral(fitted.compose(res.factors)).mean(axis=2) * 255
        return float(np.percentile(np.abs(moved - base)[face], 99.9)), res

    free, _ = largest_change(NoveltyConfig(steps=20, margin=0.0, learning_rate=0.3, prior=0.0, marks=0.0))
    capped, res = largest_change(NoveltyConfig(steps=20, margin=0.0, learning_rate=0.3, prior=0.0, marks=50.0, mark_limit=8.0))
    assert free > 16.0, "the test must move the face enough to paint marks"
    assert capped < 0.7 * free and res.shift > 0  # 29 vs 75 grey levels when written
    with pytest.raises(ValueError, match="mark"):
        NoveltyConfig(mark_limit=0.0)


@pytest.mark.slow
@pytest.mark.shared_faces
def test_novelty_step_takes_a_mixed_face_below_tau(shared_faces):
    # why: a coherent mix of real people sits near them; the step must move it below tau (as the
    # guard measures it: detection, landmarks, dlib chip) while the face stays a coherent face
    from personc_assets.core.encoders import ENCODERS
    from personc_assets.core.faces.detect import detect_faces
    from personc_assets.core.faces.ingest import ingest_file
    from personc_assets.core.realism import RealismGate
    from personc_assets.core.recipes import describe_donors, mix_factors, sample_recipes

    people = sorted(p for p in shared_faces.glob("id0*") if p.is_dir())
    faces = [ingest_file(photo, "AB"[i % 2], person.name)
             for i, person in enumerate(people) for photo in sorted(person.glob("*.jpg"))[:2]
             if "mirror" not in photo.name]
    encoder = ENCODERS.create("dlib")
    sources = np.stack([encoder.embed(detect_faces(f.aligned)[:1])[0] for f in faces])
    bb = BACKBONES.create("morphable")
    bb.fit(faces)
    factors = {f.content_hash: bb.decompose(p.latent) for f, p in zip(faces, bb.project(faces))}
    donors = describe_donors(faces, factors, labels={f.content_hash: f.label for f in faces})
    search = NoveltySearch(encoder.default_tau)
    gate = RealismGate()
    results = []
    for recipe in sample_recipes(donors, bb.factor_names, 3, seed=5):
        res = search.refine(bb, mix_factors(recipe, factors, bb.population_mean()), sources)
        image = bb.synthesize([bb.compose(res.factors)])[0]
        found = detect_faces(image)
        assert len(found) == 1
        sim = float((sources @ encoder.embed(found)[0]).max())
        results.append((res, sim, gate.judge(image).passed))
    assert all(sim < encoder.default_tau for _, sim, _ in results), [r[1] for r in results]
    assert all(res.end_similarity <= res.start_similarity for res, _, _ in results)
    assert sum(ok for _, _, ok in results) >= 2, "the moved faces must stay coherent faces"


def test_the_steps_detail_scores_are_the_realism_gates(fitted, faces):
    # why: the step keeps the gate's own detail scores above the gate's floors; measured another
    # way, a face the step calls sharp enough could still be rejected as blurred
    from personc_assets.core import realism
    from personc_assets.core.novelty import DetailFloors, _GateDetail

    lin = fitted.linear_render(fitted.compose(fitted.decompose(fitted.project(faces[:1])[0].latent)))
    import torch

    scores = _GateDetail(lin, DetailFloors(2.0, 0.4, 1.0), 0.0, "cpu").scores(torch.zeros(lin.jacobian.shape[1]))
    s = fitted.image_size
    frame = realism.face_frame(lin.landmarks, (0, 0, s, s))
    gate = realism.sharpness_scores(realism.planes(np.clip(lin.base, 0, 1) * 255.0), frame,
                                    realism.face_regions(frame, (s, s)))
    assert float(scores["sharpness"]) == pytest.approx(gate["sharpness"], rel=0.01)
    assert float(scores["mouth"]) == pytest.approx(gate["mouth_detail"], rel=0.01)
    features = ("right_eye", "left_eye", "nose", "mouth")
    assert min(float(scores[k]) for k in features) == pytest.approx(gate["detail_ratio"], rel=0.01)


def test_the_floors_term_lifts_a_soft_face_to_the_gates_detail(fitted, faces):
    # why: soft mixes (few, small, upsampled sources) were rejected after the step as blurred, and
    # the step smoothed some mouths below the gate's mouth detail; with the gate's floors the step
    # keeps moving until the face has the detail the gate asks for
    from personc_assets.core import realism
    from personc_assets.core.novelty import DetailFloors

    mix = fitted.decompose(fitted.project(faces[:1])[0].latent)
    avoid = np.random.default_rng(1).normal(size=(64, 128)).astype(np.float32)
    avoid /= np.linalg.norm(avoid, axis=1, keepdims=True)  # far away: the likeness goal holds at once

    def sharpness(factors):
        latent = fitted.compose(factors)
        return realism.measure(fitted.synthesize([latent])[0], fitted.render_landmarks(latent))["sharpness"]

    import torch

    from personc_assets.core.novelty import _GateDetail

    lin = fitted.linear_render(fitted.compose(mix))
    linear = float(_GateDetail(lin, DetailFloors(1.0, 0.1, 0.1), 0.0, "cpu").scores(torch.zeros(lin.jacobian.shape[1]))["sharpness"])
    floors = DetailFloors(sharpness=1.1 * linear, detail_ratio=0.1, mouth_detail=0.1)
    # the drawn faces have four appearance modes: no room for both the floors and the marks cap
    cfg = NoveltyConfig(steps=40, learning_rate=0.3, floor_margin=0.0, marks=0.0)
    plain = NoveltySearch(0.99, cfg).refine(fitted, mix, avoid)
    lifted = NoveltySearch(0.99, cfg, floors=floors).refine(fitted, mix, avoid)
    assert plain.steps == 0 and plain.shift == 0.0, "without floors nothing asks the step to move"
    assert lifted.reached and lifted.shift > 0
    assert sharpness(lifted.factors) >= 1.05 * sharpness(mix)  # the gate, on the render: 1.076x when written
    assert not NoveltySearch(0.99, cfg, floors=DetailFloors(50.0, 0.1, 0.1)).refine(fitted, mix, avoid).reached
    with pytest.raises(ValueError, match="floor"):
        NoveltyConfig(floor_margin=1.5)
    with pytest.raises(ValueError, match="floor_scores"):
        NoveltyConfig(floor_scores=("sharpnes",))
    assert DetailFloors.of(realism.DEFAULT_THRESHOLDS, ("sharpness",)) == DetailFloors(
        realism.DEFAULT_THRESHOLDS.min_sharpness, None, None)

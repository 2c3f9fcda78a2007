"""The stylegan2 backbone: FFHQ alignment, layer-group factors, projection, prior samples.

Runs on the tiny golden generator (32 px) so that the whole round trip
project → decompose → compose → synthesize takes a few seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from personc_assets.core.backbones.base import BACKBONES, Backbone, BackboneError
from personc_assets.core.backbones.stylegan2 import (IDENTITY_LOSSES, STYLEGAN2_FACTOR_NAMES, ProjectionSettings,
                                                     StyleGAN2Backbone, compose_w_plus, decompose_w_plus,
                                                     ffhq_align, layer_groups, mix_groups, project_w_plus)
from personc_assets.core.backbones.stylegan2.network import GeneratorConfig, build_generator
from personc_assets.core.backbones.stylegan2.projection import ffhq_quad
from personc_assets.core.encoders.base import MissingWeightsError
from personc_assets.core.registry import UnknownNameError
from personc_assets.core.types import SourceFace
from stylegan2_fixtures import one_torch_thread  # noqa: F401  (autouse fixture)
from stylegan2_fixtures import GOLDEN_DIR, GOLDEN_FILES, golden_generator, write_official_pickle

pytestmark = pytest.mark.skipif(not GOLDEN_DIR.is_dir(), reason=f"golden vectors not found at {GOLDEN_DIR}")

SHARED_FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
CROP = 256


def square_landmarks(size: int = CROP) -> np.ndarray:
    """dlib-68 points whose FFHQ quad is exactly the whole ``size`` image (eyes level, centred)."""
    s = size / 256
    lm = np.zeros((68, 2), np.float32)
    lm[:] = (128 * s, 150 * s)
    lm[36:42] = (96 * s, 121.6 * s)
    lm[42:48] = (160 * s, 121.6 * s)
    lm[48] = (96 * s, 185.6 * s)
    lm[54] = (160 * s, 185.6 * s)
    return lm


def make_backbone(steps: int = 40, **kw) -> StyleGAN2Backbone:
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])
    settings = ProjectionSettings(steps=steps, lr=0.05, loss_resolution=32)
    return StyleGAN2Backbone(g, weights_hash="golden-a", device="cpu", projection=settings, **kw)


def as_source(image32: np.ndarray, label: str = "x") -> SourceFace:
    """A SourceFace whose 256 px crop FFHQ-aligns back to ``image32``."""
    crop = np.asarray(Image.fromarray(image32).resize((CROP, CROP), Image.Resampling.BICUBIC))
    digest = hashlib.sha256(crop.tobytes()).hexdigest()
    return SourceFace(content_hash=digest, group="A", label=label, path=f"{label}.png", aligned=crop,
                      landmarks=square_landmarks())


# ---------------------------------------------------------------------------
# FFHQ alignment


def test_ffhq_quad_of_square_landmarks_is_the_whole_crop():
    """Why: pins our reading of the FFHQ recipe (crop size, centre offset, orientation)."""
    quad = ffhq_quad(square_landmarks())
    np.testing.assert_allclose(quad, [[0, 0], [0, 256], [256, 256], [256, 0]], atol=1e-4)


def test_ffhq_align_maps_landmarks_where_the_pixels_go():
    """Why: the mapped landmarks must point at the same content in the aligned image."""
    rng = np.random.default_rng(0)
    img = np.full((300, 400, 3), 90, np.uint8)
    lm = square_landmarks() * 0.8 + np.array([60, 30], np.float32)
    theta = np.deg2rad(12)                      # a tilted face
    centre = lm.mean(axis=0)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]], np.float32)
    lm = (lm - centre) @ rot.T + centre
    img += rng.integers(0, 5, img.shape, dtype=np.uint8)
    marker = np.round(lm[42:48].mean(axis=0)).astype(int)      # right eye centre
    img[marker[1] - 4:marker[1] + 5, marker[0] - 4:marker[0] + 5] = (255, 0, 0)
    out = ffhq_align(img, lm, size=128)
    assert out.image.shape == (128, 128, 3) and out.image.dtype == np.uint8
    red = np.argwhere((out.image[..., 0] > 180) & (out.image[..., 1] < 120))
    found = red.mean(axis=0)[::-1]
    expected = out.landmarks[42:48].mean(axis=0)
    assert np.abs(found - expected).max() < 1.5
    # level eyes after alignment
    assert abs(out.landmarks[36:42, 1].mean() - out.landmarks[42:48, 1].mean()) < 0.5


def test_ffhq_align_rejects_bad_input():
    """Why: wrong landmark shapes must fail with the expected shape named."""
    with pytest.raises(ValueError, match=r"\[68, 2\]"):
        ffhq_align(np.zeros((64, 64, 3), np.uint8), np.zeros((5, 2)), size=32)


@pytest.mark.shared_faces
@pytest.mark.skipif(not SHARED_FACES.is_dir(), reason=f"shared test faces not found at {SHARED_FACES}")
def test_ffhq_align_from_personc_crop_of_a_real_photo():
    """Why: sources reach the backbone as PersonC's canonical crop; FFHQ-aligning that crop must put
    the eyes level and centred as FFHQ does."""
    from personc_assets.core.faces.align import align_face
    from personc_assets.core.faces.detect import detect_faces
    from personc_assets.core.faces.loading import decode_image

    photo = sorted((SHARED_FACES / "id02").glob("*.jpg"))[0]
    pixels = decode_image(photo).pixels
    face = detect_faces(pixels)[0]
    crop, lm, _ = align_face(pixels, face.landmarks)
    out = ffhq_align(crop, lm, size=256)
    eyes = np.stack([out.landmarks[36:42].mean(axis=0), out.landmarks[42:48].mean(axis=0)])
    assert abs(eyes[0, 1] - eyes[1, 1]) < 3                     # level
    assert abs(eyes[:, 0].mean() - 128) < 8                     # centred
    assert 0.2 < (eyes[1, 0] - eyes[0, 0]) / 256 < 0.3          # FFHQ scale (|x| >= 2 eye distances)


# ---------------------------------------------------------------------------
# Layer groups and factors


def test_layer_groups_are_resolution_aware():
    """Why: the groups are data; a 1024 px FFHQ model must get StyleGAN's coarse/middle/fine split."""
    g1024 = layer_groups(GeneratorConfig(z_dim=512, c_dim=0, w_dim=512, img_resolution=1024))
    assert g1024.rule == "bands" and g1024.num_ws == 18
    assert dict(g1024.groups) == {"geometry": (0, 1, 2, 3), "local_features": (4, 5, 6, 7),
                                  "texture": tuple(range(8, 18))}
    g256 = layer_groups(GeneratorConfig(z_dim=512, c_dim=0, w_dim=512, img_resolution=256))
    assert g256.groups["texture"] == tuple(range(8, 14))
    g32 = layer_groups(GeneratorConfig(z_dim=8, c_dim=0, w_dim=8, img_resolution=32))
    assert g32.rule == "thirds" and all(g32.groups.values())
    for lg in (g1024, g256, g32):
        covered = sorted(i for idx in lg.groups.values() for i in idx)
        assert covered == list(range(lg.num_ws))                # disjoint and complete
    assert g1024.as_dict()["group_resolutions"]["geometry"] == [4, 8]


def test_factors_round_trip_and_mix_linearly():
    """Why: the pipeline mixes factors linearly and composes them back; that must be exact."""
    lg = layer_groups(GeneratorConfig(z_dim=8, c_dim=0, w_dim=8, img_resolution=64))
    rng = np.random.default_rng(1)
    lat = [{"w_plus": rng.normal(size=(lg.num_ws, 8)).astype(np.float32),
            "w_plus_mirror": rng.normal(size=(lg.num_ws, 8)).astype(np.float32)} for _ in range(2)]
    f = [decompose_w_plus(x, lg) for x in lat]
    assert set(f[0]) == set(STYLEGAN2_FACTOR_NAMES)
    assert all(v.dtype == np.float32 and v.ndim == 1 for v in f[0].values())
    back = compose_w_plus(f[0], lg)
    for k in lat[0]:
        np.testing.assert_allclose(back[k], lat[0][k], atol=1e-6)
    half = compose_w_plus({k: 0.5 * f[0][k] + 0.5 * f[1][k] for k in f[0]}, lg)
    np.testing.assert_allclose(half["w_plus"], 0.5 * (lat[0]["w_plus"] + lat[1]["w_plus"]), atol=1e-6)
    mixed = mix_groups(lat, {"geometry": 1, "local_features": 0, "texture": 0, "symmetry": 1}, lg)
    geo = list(lg.groups["geometry"])
    sym1 = (lat[1]["w_plus"] + lat[1]["w_plus_mirror"]) / 2
    anti1 = (lat[1]["w_plus"] - lat[1]["w_plus_mirror"]) / 2
    np.testing.assert_allclose(mixed["w_plus"][geo], sym1[geo] + anti1[geo], atol=1e-6)


def test_compose_rejects_wrong_factors():
    """Why: factors from another backbone or generator size must be refused with the names expected."""
    lg = layer_groups(GeneratorConfig(z_dim=8, c_dim=0, w_dim=8, img_resolution=64))
    good = decompose_w_plus({"w_plus": np.zeros((lg.num_ws, 8)), "w_plus_mirror": np.zeros((lg.num_ws, 8))}, lg)
    with pytest.raises(KeyError, match="local_features"):
        compose_w_plus({k: v for k, v in good.items() if k != "local_features"}, lg)
    with pytest.raises(ValueError, match="geometry"):
        compose_w_plus({**good, "geometry": np.zeros(3, np.float32)}, lg)
    assert compose_w_plus({**good, "_context": np.zeros(1)}, lg)["w_plus"].shape == (lg.num_ws, 8)


# ---------------------------------------------------------------------------
# Backbone


def test_backbone_follows_the_protocol():
    """Why: the pipeline only talks to the Backbone protocol."""
    bb = make_backbone()
    assert isinstance(bb, Backbone)
    assert bb.factor_names == STYLEGAN2_FACTOR_NAMES and bb.image_size == 32
    bb.fit([])                                   # pretrained: nothing to fit


def test_steps_that_run_the_generator_share_the_gpu_pool():
    """Why: two steps running the generator at once would contend for one GPU; the pool serialises them."""
    from personc_assets.defs.main import assets
    from personc_assets.defs.gpu import GPU_POOL, GPU_TAGS

    for step in (assets.projected_latents, assets.generated_candidates, assets.guard_verdicts,
                 assets.ics_reports):
        assert step.op.pool == GPU_POOL == "gpu", step.key
        assert GPU_TAGS.items() <= step.tags_by_key[step.key].items(), step.key


def test_project_decompose_compose_synthesize_round_trip():
    """Why: the core promise — a projected face survives decompose → compose → synthesize, and the
    projection actually moved toward the target."""
    bb = make_backbone(steps=60)
    (lat0, img0), = bb.sample_prior(1, seed=3, psi=1.0)
    face = as_source(img0)
    start_err = np.abs(bb.synthesize_w(bb.compose(bb.population_mean())["w_plus"][None]).astype(np.float32)
                       - ffhq_align(face.aligned, face.landmarks, size=32).image).mean() / 255
    proj, = bb.project([face])
    assert set(proj.latent) == {"w_plus", "w_plus_mirror"}
    assert proj.latent["w_plus"].shape == (bb.g.num_ws, bb.g.w_dim)
    assert proj.reconstruction_error < 0.6 * start_err
    assert 0 <= proj.extras["reconstruction_error_mirror"] < 1
    recomposed = bb.compose(bb.decompose(proj.latent))
    a, = bb.synthesize([proj.latent])
    b, = bb.synthesize([recomposed])
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    target = ffhq_align(face.aligned, face.landmarks, size=32).image
    assert abs(np.abs(a.astype(np.float32) - target).mean() / 255 - proj.reconstruction_error) < 1e-3


def test_identity_loss_hook_with_a_differentiable_stand_in():
    """Why: when a differentiable identity encoder exists, projection must follow its gradient and
    report the reconstruction's identity similarity (tested with a tiny torch stand-in)."""
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.LeakyReLU(0.2),
                                  torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 16))
    encoder.requires_grad_(False)
    bb = make_backbone()
    (_, target), = bb.sample_prior(1, seed=11, psi=1.0)
    only_id = ProjectionSettings(steps=30, lr=0.05, pixel_weight=0.0, identity_weight=1.0, loss_resolution=32)
    no_steps = dataclasses.replace(only_id, steps=0)
    before = project_w_plus(bb.g, target[None], no_steps, identity_fn=encoder)
    after = project_w_plus(bb.g, target[None], only_id, identity_fn=encoder)
    assert after.identity_similarity[0] > before.identity_similarity[0] + 0.05
    assert after.loss_history[-1] < after.loss_history[0]
    bb_id = make_backbone(steps=5, identity_fn=encoder)
    proj, = bb_id.project([as_source(target)])
    assert -1 <= proj.extras["identity_similarity"] <= 1


def test_population_mean_is_w_avg_and_symmetric():
    """Why: the recipe's mean pull uses population_mean(); it must be the generator's average face."""
    bb = make_backbone()
    mean = bb.population_mean()
    lat = bb.compose(mean)
    w_avg = bb.g.mapping.w_avg.numpy()
    np.testing.assert_allclose(lat["w_plus"], np.tile(w_avg, (bb.g.num_ws, 1)), atol=1e-6)
    assert not np.any(mean["symmetry"])


def test_sample_prior_is_seeded_and_truncated():
    """Why: synthetic sources must be reproducible, and psi=0 must collapse to the average face."""
    bb = make_backbone()
    a = bb.sample_prior(3, seed=7, psi=0.7)
    b = bb.sample_prior(3, seed=7, psi=0.7)
    assert len(a) == 3 and all(np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert a[0][1].shape == (32, 32, 3) and a[0][1].dtype == np.uint8
    assert not np.array_equal(a[0][1], a[1][1])
    flat = bb.sample_prior(2, seed=7, psi=0.0)
    np.testing.assert_allclose(flat[0][0]["w_plus"], flat[1][0]["w_plus"], atol=1e-6)
    assert not np.any(bb.decompose(a[0][0])["symmetry"])          # no mirror projection by default
    mirrored = bb.sample_prior(1, seed=7, psi=0.7, mirror_steps=3)
    assert np.any(bb.decompose(mirrored[0][0])["symmetry"])


def test_state_round_trip_checks_the_weights(tmp_path):
    """Why: a saved state must not be silently reused with different weights."""
    bb = make_backbone()
    bb.save_state(tmp_path / "state.json")
    bb.load_state(tmp_path / "state.json")
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])
    other = StyleGAN2Backbone(g, weights_hash="something-else", device="cpu")
    with pytest.raises(BackboneError, match="same weights"):
        other.load_state(tmp_path / "state.json")
    assert bb.state_hash() == "golden-a"


def test_cpu_always_runs_fp32_and_fp16_blocks_work():
    """Why: snapshots mark top blocks fp16; the CPU must run fp32, and the fp16 path must stay close."""
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])
    cfg16 = dataclasses.replace(cfg, synthesis=dataclasses.replace(cfg.synthesis, num_fp16_res=2))
    g16 = build_generator(cfg16, sd)
    bb = StyleGAN2Backbone(g16, weights_hash="x", device="cpu", precision="snapshot")
    assert bb.force_fp32
    ws = torch.randn(2, g16.num_ws, g16.w_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = g16.synthesis(ws, force_fp32=True)
        half = g16.synthesis(ws, force_fp32=False)
    assert float((full - half).abs().max()) < 3e-3 * float(full.abs().max())


def test_registry_factory_loads_a_weights_file(tmp_path, monkeypatch):
    """Why: the pipeline builds the backbone by name with options from its config."""
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])
    pkl = write_official_pickle(tmp_path / "ffhq.pkl", cfg, g)
    assert "stylegan2" in BACKBONES.names()
    bb = BACKBONES.create("stylegan2", weights=pkl, device="cpu", projection_steps=2, output_size=64)
    assert bb.image_size == 64 and bb.synthesize_w(bb.sample_w(1)).shape == (1, 64, 64, 3)
    by_dir = BACKBONES.create("stylegan2", weights_dir=tmp_path, device="cpu")
    assert by_dir.state_hash() == bb.state_hash()
    monkeypatch.delenv("PERSONC_WEIGHTS_DIR", raising=False)
    with pytest.raises(MissingWeightsError, match="nvlabs-fi-cdn.*License-NC"):
        BACKBONES.create("stylegan2", weights_dir=tmp_path / "empty", device="cpu")
    with pytest.raises(TypeError, match="known: weights"):
        BACKBONES.create("stylegan2", weights=pkl, projection_stepz=3)


def test_identity_loss_is_chosen_by_name_from_json_options(tmp_path, monkeypatch):
    """Why: run configs are JSON, so the projection's identity loss is named from a registry like
    encoders; the factory gets the weights folder and the device, and an unknown name lists the known."""
    monkeypatch.delenv("PERSONC_WEIGHTS_DIR", raising=False)
    cfg, sd, g = golden_generator(GOLDEN_FILES[0])
    pkl = write_official_pickle(tmp_path / "ffhq.pkl", cfg, g)
    asked = {}

    def tiny_identity(weights_dir: Path, device: torch.device):
        asked.update(weights_dir=weights_dir, device=device)
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.LeakyReLU(0.2),
                                  torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 16))
        return net.to(device).requires_grad_(False)

    options = json.loads(json.dumps({"weights": str(pkl), "weights_dir": str(tmp_path), "device": "cpu",
                                     "projection_steps": 2, "identity_loss": "tiny"}))
    with IDENTITY_LOSSES.temporarily("tiny", tiny_identity):
        bb = BACKBONES.create("stylegan2", **options)
        with pytest.raises(UnknownNameError, match="unknown identity loss model 'nope'; known .*: tiny"):
            BACKBONES.create("stylegan2", **{**options, "identity_loss": "nope"})
    assert asked == {"weights_dir": tmp_path, "device": torch.device("cpu")}
    (_, target), = bb.sample_prior(1, seed=11, psi=1.0)
    proj, = bb.project([as_source(target)])
    assert -1 <= proj.extras["identity_similarity"] <= 1  # only reported when the identity loss ran
    plain, = BACKBONES.create("stylegan2", **{**options, "identity_loss": None}).project([as_source(target)])
    assert "identity_similarity" not in plain.extras


class _MeanColourEncoder:
    """A stand-in reporting encoder: the (centred) mean colour around the landmarks."""

    name, version, dim, default_tau, tau_rationale = "meancolour", "test", 3, 0.5, "test stand-in"

    def embed(self, faces):
        out = []
        for f in faces:
            x0, y0, x1, y1 = f.box
            patch = f.image[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1].reshape(-1, 3).astype(np.float32)
            v = patch.mean(axis=0) - 100.0
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def test_reporting_encoder_similarity_is_recorded():
    """Why: projections record how well the reconstruction keeps the source's identity, using any
    (non-differentiable) encoder with the source's landmarks mapped into the FFHQ frame."""
    bb = make_backbone(steps=10, identity_encoder=_MeanColourEncoder())
    (_, img), = bb.sample_prior(1, seed=2, psi=1.0)
    proj, = bb.project([as_source(img)])
    assert -1.0 <= proj.extras["identity_similarity_meancolour"] <= 1.0

"""Attribution maps: occlusion sensitivity (black box) and gradients through captum.

Tiny torch models stand in for encoders so the core behaviour is tested in a
second; the dlib paths (chip geometry, timing on a real face) run on
../shared/faces when present.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from personc_assets.core.explain.attribution import (
    AttributionMap, landmark_roi, occlusion_map, patch_starts, save_overlay_png, gradient_map, smooth_map,
    warp_crop_map,
)

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"


class RegionNet(torch.nn.Module):
    """Stand-in encoder whose embedding depends only on the top-left 32x32 quarter of a 64x64 input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 5, padding=2)
        self.fc = torch.nn.Linear(8 * 4 * 4, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3, 64, 64] -> [N, 16]
        x = torch.tanh(self.conv(x[:, :, :32, :32]))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def to_input(images_nhwc: torch.Tensor) -> torch.Tensor:
    return (images_nhwc.permute(0, 3, 1, 2).float() - 128.0) / 64.0


def make_embedder(net: torch.nn.Module):
    def embed(images):
        with torch.no_grad():
            e = net(to_input(torch.from_numpy(np.stack(images))))
        return torch.nn.functional.normalize(e, dim=1).numpy()

    return embed


def make_image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)


def test_occlusion_matches_captum_reference():
    """Our batched occlusion equals captum.attr.Occlusion (same windows, same per-pixel averaging)."""
    from captum.attr import Occlusion

    net, img = RegionNet(), make_image()
    embed = make_embedder(net)
    targets = embed([np.clip(img.astype(int) + 40, 0, 255).astype(np.uint8), img[::-1].copy()])
    ours = occlusion_map(img, embed, targets, ["t0", "t1"], patch=16, stride=8, batch_size=5)

    t = torch.from_numpy(targets)

    def forward(x):  # [N, 3, H, W] raw pixels -> [N, T] cosines
        e = torch.nn.functional.normalize(net(to_input(x.permute(0, 2, 3, 1))), dim=1)
        return e @ t.T

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    for ti in range(2):
        ref = Occlusion(forward).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                           baselines=128.0, target=ti, perturbations_per_eval=8)
        np.testing.assert_allclose(ours.maps[ti], ref[0, 0].numpy(), atol=1e-5)


def test_occlusion_finds_the_region_the_encoder_uses():
    """Only the top-left quarter drives the stand-in encoder: all sensitivity must land there."""
    net, img = RegionNet(), make_image()
    embed = make_embedder(net)
    target = embed([img])  # the image itself: any occlusion lowers similarity
    amap = occlusion_map(img, embed, target, ["self"], patch=16, stride=16)
    m = amap.maps[0]
    assert amap.evaluations == 1 + 16
    assert np.all(m[:32, :32] > 0) and np.all(m[32:, :] == 0) and np.all(m[:, 32:] == 0)
    assert amap.top_region("self", cell=32) == (0, 0, 32, 32)


def test_roi_limits_patches_and_leaves_the_rest_unevaluated():
    """Patches outside the region of interest are not embedded (cost) and show as NaN (honesty)."""
    net, img = RegionNet(), make_image()
    calls = []
    inner = make_embedder(net)
    embed = lambda imgs: (calls.append(len(imgs)), inner(imgs))[1]
    amap = occlusion_map(img, embed, inner([img]), ["self"], patch=8, stride=8, roi=(8, 8, 40, 40), batch_size=4)
    assert sum(calls) == 1 + 16 and max(calls) <= 4
    assert np.isnan(amap.maps[0][:8]).all() and np.isfinite(amap.maps[0][8:40, 8:40]).all()
    with pytest.raises(ValueError, match="inside the 64x64 image"):
        occlusion_map(img, embed, inner([img]), ["self"], roi=(0, 0, 80, 10))


def test_unembeddable_occlusions_are_left_out_not_counted_as_drops():
    """If the encoder fails on an occluded image (no face), that patch is skipped, not scored as a drop."""
    net, img = RegionNet(), make_image()
    inner = make_embedder(net)

    def embed(images):
        out = inner(images)
        for i, im in enumerate(images):
            if (im[:16, :16] == 128).all():  # the top-left patch "hides the face"
                out[i] = np.nan
        return out

    amap = occlusion_map(img, embed, inner([img]), ["self"], patch=16, stride=16)
    assert amap.params["failed"] == 1 and np.isnan(amap.maps[0][:16, :16]).all()


def test_patch_starts_cover_the_axis():
    """Every pixel is covered, the last patch may be cut (captum's convention)."""
    assert patch_starts(64, 16, 8) == [0, 8, 16, 24, 32, 40, 48]
    assert patch_starts(70, 32, 32) == [0, 32, 64]
    assert patch_starts(10, 32, 16) == [0]


def test_integrated_gradients_are_complete():
    """IG's completeness axiom: attributions sum to f(image) - f(grey baseline) (checks the captum wiring)."""
    net, img = RegionNet(), make_image()
    embed = make_embedder(net)
    target = embed([img[::-1].copy()])
    amap = gradient_map(net, to_input, img, target, ["t"], method="integrated_gradients", n_steps=64)
    grey = np.full_like(img, 128)
    expected = float((embed([img]) @ target.T)[0, 0] - (embed([grey]) @ target.T)[0, 0])
    assert amap.maps.shape == (1, 64, 64)
    assert float(amap.maps.sum()) == pytest.approx(expected, abs=0.02 * max(abs(expected), 0.05))
    assert np.abs(amap.maps[0][32:, 32:]).max() < 1e-6  # the net never sees that corner
    with pytest.raises(ValueError, match="method must be one of"):
        gradient_map(net, to_input, img, target, ["t"], method="deeplift")


def test_crop_maps_warp_back_to_image_pixels():
    """A map in crop pixels lands at the right place in the image and keeps its total."""
    crop_map = np.zeros((50, 50), np.float32)
    crop_map[10:20, 30:40] = 1.0
    m = np.array([[0.5, 0, 5], [0, 0.5, 10]], np.float64)  # image -> crop: half size, offset (5, 10)
    out = warp_crop_map(crop_map, m, (200, 200))
    ys, xs = np.nonzero(np.nan_to_num(out) > 0.05)
    assert 48 <= xs.min() and xs.max() <= 72 and 0 <= ys.min() and ys.max() <= 22
    assert float(np.nansum(out)) == pytest.approx(crop_map.sum(), rel=0.05)
    assert np.isnan(out[199, 199])  # outside the crop


def test_overlay_png_is_written_atomically_with_colour_bar(tmp_path):
    """The PNG overlay exists, is wider than tall (colour bar), and no temporary file stays behind."""
    img = make_image()
    maps = np.full((1, 64, 64), np.nan, np.float32)
    maps[0, 10:30, 10:30] = np.linspace(-1, 1, 400).reshape(20, 20)
    amap = AttributionMap("occlusion", ("A-07",), maps, np.array([0.8], np.float32), 5, 0.1)
    path = save_overlay_png(tmp_path / "o.png", img, amap, "A-07")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > im.height
    assert not list(tmp_path.glob(".*tmp"))
    assert np.isnan(smooth_map(maps[0], 2.0)[0, 0]) and np.isfinite(smooth_map(maps[0], 2.0)[20, 20])


def _real_face():
    from personc_assets.core.faces.align import align_face
    from personc_assets.core.faces.detect import detect_faces
    from personc_assets.core.faces.loading import decode_image

    out = []
    for person in ("id03", "id05"):
        path = sorted((FACES / person).glob("*.jpg"))[0]
        img = decode_image(path).pixels
        aligned = align_face(img, detect_faces(img)[0].landmarks)[0]
        out.append((aligned, detect_faces(aligned)[0]))
    return out


@pytest.mark.shared_faces
@pytest.mark.skipif(not FACES.is_dir(), reason=f"test photos not found at {FACES}")
def test_dlib_chip_matrix_matches_dlib_geometry():
    """Gradient maps are mapped back with our chip matrix: it must cut the same chip as dlib."""
    import cv2

    from personc_assets.core.encoders.common import dlib_chip
    from personc_assets.core.explain.attribution import dlib_chip_matrix

    for aligned, face in _real_face():
        m = dlib_chip_matrix(face)
        ours = cv2.warpAffine(aligned, m, (150, 150), flags=cv2.INTER_LINEAR).astype(np.float32)
        theirs = dlib_chip(face).astype(np.float32)
        blur = lambda x: cv2.GaussianBlur(x, (0, 0), 2)
        assert np.abs(blur(ours) - blur(theirs)).mean() < 3.0


@pytest.mark.slow
@pytest.mark.shared_faces
@pytest.mark.skipif(not FACES.is_dir(), reason=f"test photos not found at {FACES}")
def test_dlib_occlusion_and_gradient_maps_on_a_real_face(tmp_path):
    """End to end with dlib: occlusion map (C++ encoder, black box) and integrated gradients (torch dlib)."""
    from personc_assets.core.encoders import ENCODERS
    from personc_assets.core.explain.attribution import dlib_gradient_map, face_occlusion_map

    (aligned, face), (other, other_face) = _real_face()
    enc = ENCODERS.create("dlib")
    targets = enc.embed([face, other_face])
    t0 = time.perf_counter()
    occ = face_occlusion_map(aligned, face, enc, targets, ["self", "other"], patch=48)
    t_occ = time.perf_counter() - t0
    assert occ.base_similarity[0] > 0.99
    assert np.nanmax(occ.maps[0]) > 0  # hiding part of the face lowers similarity to itself
    save_overlay_png(tmp_path / "occ.png", aligned, occ, "self")
    msg = f"dlib occlusion: {occ.evaluations} embeds in {t_occ:.1f} s"
    try:
        from personc_assets.core.encoders.dlib import make_dlib_encoder
    except ImportError:
        print(msg + "; torch dlib encoder not available")
        return
    tenc = make_dlib_encoder("torch")
    grad = dlib_gradient_map(tenc, face, targets, ["self", "other"], n_steps=8)
    assert grad.maps.shape == (2, 256, 256)
    assert np.isfinite(grad.maps[0][128, 128]) and np.isnan(grad.maps[0][0, 0])  # outside the chip
    save_overlay_png(tmp_path / "grad.png", aligned, grad, "self")
    print(msg + f"; integrated gradients (8 steps, 2 targets) {grad.seconds:.1f} s")

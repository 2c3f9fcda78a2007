"""MagFace encoder: a tiny iResNet saved in the released checkpoint layout.

The stand-in is a real ``torch.save`` file shaped like MagFace's release
(``{"state_dict": ...}``, backbone under ``features.module.``, a classifier
``fc.weight`` of another shape) and goes through the real loading path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from personc_assets.core.encoders import ENCODERS, MissingWeightsError
from personc_assets.core.encoders.common import arcface_crop
from personc_assets.core.encoders.magface import (
    IRESNET_ARCHS,
    CheckpointError,
    IResNet,
    IResNetConfig,
    MagFaceEncoder,
)
from personc_assets.core.faces.align import five_points
from personc_assets.core.types import FaceObservation

TINY = IResNetConfig(layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), embedding_dim=32)
N_CLASSES = 100


def tiny_backbone(seed: int = 0) -> IResNet:
    """A tiny iResNet with random weights *and* random BatchNorm statistics (so eval mode matters)."""
    torch.manual_seed(seed)
    net = IResNet(TINY)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def save_released_layout(path: Path, net: IResNet, prefix: str = "features.module.",
                         classifier: bool = True, drop: str | None = None,
                         extra: dict | None = None) -> Path:
    """torch.save ``net`` the way MagFace released its checkpoints."""
    state = {prefix + k: v.clone() for k, v in net.state_dict().items() if k != drop}
    if classifier:  # MagLinear weight [embedding_dim, n_classes]: collides with the backbone's fc
        state["fc.weight"] = torch.randn(TINY.embedding_dim, N_CLASSES)
    state.update(extra or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 25, "arch": "iresnet100", "state_dict": state}, path)
    return path


def synthetic_face() -> FaceObservation:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:200, :200]
    img = np.stack([128 + 70 * np.sin(xx / 6.0), 128 + 50 * np.cos(yy / 9.0),
                    np.full_like(xx, 90, dtype=float)], axis=-1)
    img = np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)
    pts = np.array([[80, 90], [120, 90], [100, 110], [85, 130], [115, 130]], np.float32)
    lm = np.tile(pts[2], (68, 1))
    lm[36:42], lm[42:48], lm[30], lm[48], lm[54] = pts[0], pts[1], pts[2], pts[3], pts[4]
    return FaceObservation(img, lm, (60, 60, 140, 140), 1.0)


def reference_raw(net: IResNet, face: FaceObservation, order: str) -> np.ndarray:
    """The original network on the ArcFace crop in ``order`` ('bgr' or 'rgb'), scaled to [0, 1]."""
    crop = arcface_crop(face.image, five_points(face.landmarks), 112)
    x = crop[..., ::-1] if order == "bgr" else crop
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].float() / 255.0
    with torch.no_grad():
        return net(t)[0].numpy()


@pytest.fixture(scope="module")
def net() -> IResNet:
    return tiny_backbone()


@pytest.fixture(scope="module")
def released(tmp_path_factory, net) -> Path:
    return save_released_layout(tmp_path_factory.mktemp("w") / "magface_iresnet100.pth", net)


def test_released_layout_loads_and_embeds_bgr_in_0_1(released, net):
    """Prefix, classifier collision and BGR/[0, 1] input together decide whether MagFace works at all."""
    enc = MagFaceEncoder(released, TINY, device="cpu")
    face = synthetic_face()
    unit, magnitude = enc.embed_with_quality([face, face])
    raw = reference_raw(net, face, "bgr")
    assert unit.shape == (2, 32) and magnitude.shape == (2,)
    assert np.allclose(unit[0], raw / np.linalg.norm(raw), atol=1e-5)
    assert np.isclose(magnitude[0], np.linalg.norm(raw), rtol=1e-5)
    assert np.allclose(np.linalg.norm(enc.embed([face]), axis=1), 1.0, atol=1e-6)
    rgb = reference_raw(net, face, "rgb")
    assert float(unit[0] @ (rgb / np.linalg.norm(rgb))) < 0.999  # channel order is observable


def test_module_features_prefix_and_missing_bn_counters_load(tmp_path, net):
    """DataParallel checkpoints use module.features. and old ones lack num_batches_tracked."""
    path = save_released_layout(tmp_path / "dp.pth", net, prefix="module.features.",
                                drop="bn1.num_batches_tracked")
    enc = MagFaceEncoder(path, TINY, device="cpu")
    face = synthetic_face()
    raw = reference_raw(net, face, "bgr")
    assert np.allclose(enc.embed([face])[0], raw / np.linalg.norm(raw), atol=1e-5)


def test_factory_finds_weights_and_takes_an_architecture(released):
    """The registry path (weights_dir + arch) is what runs use; a tiny arch proves depth is configurable."""
    enc = ENCODERS.create("magface", weights_dir=released.parent, arch=TINY)
    assert enc.name == "magface" and enc.dim == 32 and enc.version.startswith("magface-")
    with pytest.raises(ValueError, match="unknown MagFace arch 'resnet9'.*iresnet100"):
        ENCODERS.create("magface", weights_dir=released.parent, arch="resnet9")


def test_missing_weights_say_which_file_goes_where(tmp_path):
    """An absent checkpoint must name the file to put in weights/; nothing downloads."""
    with pytest.raises(MissingWeightsError, match=r"magface_iresnet100\.pth.*magface_epoch_00025") as info:
        ENCODERS.create("magface", weights_dir=tmp_path)
    assert info.value.expected == tmp_path / "magface_iresnet100.pth"


@pytest.mark.parametrize("case, message", [
    ("missing", r"1 missing \(layer2\.0\.conv1\.weight\)"),
    ("unexpected", r"1 unexpected \(head\.bias\)"),
    ("deeper", r"missing \(layer3\.1\."),
    ("wider", r"wrong shape \(.*checkpoint .* vs model"),
])
def test_mismatched_checkpoints_are_refused_with_the_names(tmp_path, net, case, message):
    """Strict loading: a partial or foreign checkpoint must never give silently random embeddings."""
    config = TINY
    kwargs: dict = {}
    if case == "missing":
        kwargs["drop"] = "layer2.0.conv1.weight"
    elif case == "unexpected":
        kwargs["extra"] = {"head.bias": torch.zeros(3)}
    elif case == "deeper":
        config = IResNetConfig(layers=(1, 1, 2, 1), widths=TINY.widths, embedding_dim=32)
    else:
        config = IResNetConfig(layers=TINY.layers, widths=(8, 8, 16, 24), embedding_dim=32)
    path = save_released_layout(tmp_path / "bad.pth", net, **kwargs)
    with pytest.raises(CheckpointError, match=message):
        MagFaceEncoder(path, config, device="cpu")


def test_pickled_code_is_refused_without_running(tmp_path):
    """weights_only unpickling is the defence against checkpoints that run code when loaded."""
    marker = tmp_path / "ran"
    torch.save({"state_dict": {"x": _RunsOnLoad(str(marker))}}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"refused by torch.load\(weights_only=True\).*state_dict"):
        MagFaceEncoder(tmp_path / "evil.pth", TINY, device="cpu")
    assert not marker.exists()


def test_non_checkpoint_files_are_refused(tmp_path):
    """A truncated download or a wrong file must fail with a reason, not a stack of pickle internals."""
    (tmp_path / "junk.pth").write_bytes(b"definitely not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        MagFaceEncoder(tmp_path / "junk.pth", TINY, device="cpu")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        MagFaceEncoder(tmp_path / "list.pth", TINY, device="cpu")


def test_iresnet100_layout_matches_the_release():
    """The default arch must have MagFace iResNet-100's block counts and 512x(512*7*7) fc."""
    cfg = IRESNET_ARCHS["iresnet100"]
    assert cfg.layers == (3, 13, 30, 3) and cfg.final_side == 7
    with torch.device("meta"):  # layout only, no 260 MB of weights
        state = IResNet(cfg).state_dict()
    assert tuple(state["fc.weight"].shape) == (512, 512 * 49)
    assert "layer3.29.conv2.weight" in state and "layer3.30.conv2.weight" not in state
    assert tuple(state["layer1.0.downsample.0.weight"].shape) == (64, 64, 1, 1)


class _RunsOnLoad:
    """Unpickling this would create a file (a stand-in for arbitrary code)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))

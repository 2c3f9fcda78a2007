"""ArcFace encoder: tiny stand-in ONNX models loaded through insightface's model zoo.

The stand-ins have the real signatures (``input.1`` [N, 3, 112, 112] → one
[N, 512] output; an SCRFD detector with nine outputs and keypoints), are
written as single self-contained ``.onnx`` files, and go through
``insightface.model_zoo.get_model`` exactly like buffalo_l's files would.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("insightface")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from personc_assets.core.encoders import ENCODERS, MissingWeightsError  # noqa: E402
from personc_assets.core.encoders.arcface import ArcFaceEncoder, find_arcface_pack, onnx_role  # noqa: E402
from personc_assets.core.encoders.common import arcface_crop, template_for  # noqa: E402
from personc_assets.core.faces.align import five_points  # noqa: E402
from personc_assets.core.types import FaceObservation  # noqa: E402

OPSET = [helper.make_opsetid("", 17)]
IR_VERSION = 8  # readable by every onnxruntime we support


# --------------------------------------------------------------------------- stand-in models


def make_arcface_onnx(path: Path, *, internal_norm: bool = False, size: int = 112,
                      dim: int = 512, seed: int = 0) -> Path:
    """A linear 'ArcFace': Conv 8x8/8 → Flatten → MatMul, input ``input.1``, output ``683``.

    ``internal_norm`` prepends mxnet-style ``Sub``/``Mul`` nodes doing
    ``(x - 127.5) / 127.5`` inside the graph (insightface then feeds raw pixels).
    """
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.1, (8, 3, 8, 8)).astype(np.float32), "conv_w"),
             numpy_helper.from_array(rng.normal(0, 0.05, (8 * (size // 8) ** 2, dim)).astype(np.float32),
                                     "fc_w")]
    nodes, x = [], "input.1"
    if internal_norm:
        inits += [numpy_helper.from_array(np.array(127.5, np.float32), "mean"),
                  numpy_helper.from_array(np.array(1 / 127.5, np.float32), "scale")]
        nodes += [helper.make_node("Sub", [x, "mean"], ["centred"], name="Sub_0"),
                  helper.make_node("Mul", ["centred", "scale"], ["scaled"], name="Mul_1")]
        x = "scaled"
    nodes += [helper.make_node("Conv", [x, "conv_w"], ["patches"], name="conv0",
                               kernel_shape=[8, 8], strides=[8, 8]),
              helper.make_node("Flatten", ["patches"], ["flat"], name="flatten0", axis=1),
              helper.make_node("MatMul", ["flat", "fc_w"], ["683"], name="fc0")]
    graph = helper.make_graph(
        nodes, "arcface_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, size, size])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", dim])], inits)
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_scrfd_onnx(path: Path, kps_det: np.ndarray, size: int = 128, score: float = 0.9) -> Path:
    """An SCRFD-shaped detector: fixed [1, 3, size, size] input, nine outputs
    (scores, box distances, keypoint offsets for strides 8/16/32, two anchors),
    reporting one face whose keypoints decode to ``kps_det`` [5, 2] (input pixels)."""
    kps_det = np.asarray(kps_det, np.float32)
    centre = np.round(kps_det.mean(axis=0) / 8) * 8
    gx, gy = (centre / 8).astype(int)
    anchor = (gy * (size // 8) + gx) * 2
    lo, hi = kps_det.min(axis=0) - 10, kps_det.max(axis=0) + 10
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    nodes = [helper.make_node("ReduceMean", ["input.1"], ["mean"], keepdims=0),
             helper.make_node("Mul", ["mean", "zero"], ["z"])]  # outputs depend on the input
    outputs = {}
    for stride in (8, 16, 32):
        n = (size // stride) ** 2 * 2
        scores, boxes, kps = (np.zeros((n, k), np.float32) for k in (1, 4, 10))
        if stride == 8:
            scores[anchor] = score
            boxes[anchor] = np.concatenate([(centre - lo) / 8, (hi - centre) / 8])
            kps[anchor] = ((kps_det - centre) / 8).ravel()
        for kind, value in (("score", scores), ("bbox", boxes), ("kps", kps)):
            outputs[f"{kind}_{stride}"] = value
    order = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in (8, 16, 32)]
    for name in order:
        inits.append(numpy_helper.from_array(outputs[name], f"{name}_const"))
        nodes.append(helper.make_node("Add", ["z", f"{name}_const"], [name]))
    graph = helper.make_graph(
        nodes, "scrfd_stand_in",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(outputs[n].shape)) for n in order],
        inits)
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------- synthetic face

EYES_NOSE_MOUTH = np.array([[80, 90], [120, 90], [100, 110], [85, 130], [115, 130]], np.float32)
BOX = (60, 60, 140, 140)


def synthetic_face(shift: tuple[float, float] = (0.0, 0.0)) -> FaceObservation:
    """A 200 px textured image with dlib-68 landmarks whose five points are EYES_NOSE_MOUTH + shift."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:200, :200]
    base = np.stack([128 + 60 * np.sin(xx / 9.0), 128 + 60 * np.cos(yy / 7.0),
                     128 + 40 * np.sin((xx + yy) / 11.0)], axis=-1)
    image = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
    pts = EYES_NOSE_MOUTH + np.asarray(shift, np.float32)
    lm = np.tile(pts[2], (68, 1))
    lm[36:42], lm[42:48], lm[30], lm[48], lm[54] = pts[0], pts[1], pts[2], pts[3], pts[4]
    return FaceObservation(image, lm, BOX, 1.0)


def reference_embedding(model_path: Path, crop_rgb: np.ndarray, order: str = "rgb") -> np.ndarray:
    """The stand-in evaluated by ONNX's own reference runtime on ``(x - 127.5) / 127.5``."""
    from onnx.reference import ReferenceEvaluator

    x = crop_rgb if order == "rgb" else crop_rgb[..., ::-1]
    blob = ((x.astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    out = ReferenceEvaluator(str(model_path)).run(None, {"input.1": blob})[0][0]
    return out / np.linalg.norm(out)


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory) -> Path:
    return make_arcface_onnx(tmp_path_factory.mktemp("weights") / "w600k_r50.onnx")


# --------------------------------------------------------------------------- tests


def test_stand_in_is_a_single_self_contained_file_routed_as_arcface(arcface_file):
    """The stand-in must exercise insightface's real router, not a test double."""
    from insightface.model_zoo import get_model
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    assert sorted(p.name for p in arcface_file.parent.iterdir()) == ["w600k_r50.onnx"]  # no .onnx.data
    model = get_model(str(arcface_file))
    assert isinstance(model, ArcFaceONNX)
    assert (model.input_mean, model.input_std, model.input_size) == (127.5, 127.5, (112, 112))
    assert onnx_role(arcface_file) == "recognition"


def test_embedding_is_the_network_on_rgb_in_minus1_1(arcface_file):
    """Pixel order and scaling are the most common silent ArcFace bug: check them against ONNX's reference runtime."""
    enc = ArcFaceEncoder(arcface_file)
    face = synthetic_face()
    emb = enc.embed([face])
    assert emb.shape == (1, 512) and emb.dtype == np.float32
    crop, source = enc.crop(face)
    assert source == "dlib68" and crop.shape == (112, 112, 3)
    rgb_ref = reference_embedding(arcface_file, crop, "rgb")
    bgr_ref = reference_embedding(arcface_file, crop, "bgr")
    assert np.allclose(emb[0], rgb_ref, atol=1e-5)
    assert float(emb[0] @ bgr_ref) < 0.999  # the check above can tell the channel orders apart


def test_graph_with_its_own_normalisation_gets_raw_pixels(tmp_path, arcface_file):
    """mxnet-era models normalise inside the graph; insightface detects them and must feed raw RGB."""
    inner = make_arcface_onnx(tmp_path / "mx.onnx", internal_norm=True)
    face = synthetic_face()
    a = ArcFaceEncoder(arcface_file).embed([face])
    b = ArcFaceEncoder(inner).embed([face])
    assert np.allclose(a, b, atol=1e-5)


def test_crop_matches_insightface_norm_crop_without_its_deprecated_estimate():
    """Our alignment must equal insightface's (the models were trained on it) yet raise no skimage deprecation."""
    from insightface.utils import face_align

    face = synthetic_face()
    pts = five_points(face.landmarks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = arcface_crop(face.image, pts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = face_align.norm_crop(face.image, landmark=pts.astype(np.float32), image_size=112)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    assert np.allclose(template_for(224), template_for(112) * 2)
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        template_for(100)


def test_pack_with_detector_aligns_on_scrfd_keypoints(tmp_path):
    """When the pack holds insightface's detector, its keypoints (not dlib's) must drive the alignment."""
    pack = tmp_path / "weights" / "buffalo_l"
    make_arcface_onnx(pack / "w600k_r50.onnx")
    # the window around BOX starts at (20, 20) and is 160 px wide: det_scale = 128 / 160
    scrfd_points = EYES_NOSE_MOUTH + np.array([4.0, -3.0], np.float32)
    make_scrfd_onnx(pack / "det_10g.onnx", (scrfd_points - 20) * 0.8)
    assert find_arcface_pack(tmp_path / "weights").detector == pack / "det_10g.onnx"
    enc = ENCODERS.create("arcface", weights_dir=tmp_path / "weights")
    assert enc.has_detector and "+scrfd-" in enc.version
    points, source = enc.five_points(synthetic_face())
    assert source == "scrfd"
    assert np.allclose(points, scrfd_points, atol=0.05)
    # a dlib face far from every SCRFD face falls back to its own landmarks
    far = synthetic_face(shift=(30.0, 30.0))
    points, source = enc.five_points(far)
    assert source == "dlib68" and np.allclose(points, five_points(far.landmarks))
    assert enc.embed([synthetic_face(), far]).shape == (2, 512)


def test_pack_without_detector_uses_dlib_landmarks(tmp_path):
    """A pack holding only the recognition model must still work, aligned on dlib's points."""
    make_arcface_onnx(tmp_path / "buffalo_l" / "w600k_r50.onnx")
    enc = ENCODERS.create("arcface", weights_dir=tmp_path)
    assert not enc.has_detector
    assert enc.five_points(synthetic_face())[1] == "dlib68"


def test_missing_weights_say_which_file_goes_where(tmp_path):
    """An absent model must name the file and the folder, and nothing may download."""
    with pytest.raises(MissingWeightsError, match=r"w600k_r50\.onnx.*buffalo_l") as info:
        ENCODERS.create("arcface", weights_dir=tmp_path)
    assert info.value.expected == tmp_path / "w600k_r50.onnx"
    with pytest.raises(MissingWeightsError, match="glintr100.onnx"):
        ENCODERS.create("arcface", weights_dir=tmp_path, model_file="glintr100.onnx")


def test_non_arcface_onnx_is_refused(tmp_path):
    """A model insightface would not route to ArcFace (64 px input) must fail with a clear reason."""
    small = make_arcface_onnx(tmp_path / "tiny.onnx", size=64)
    with pytest.raises(ValueError, match="not an ArcFace-shaped recognition model"):
        ArcFaceEncoder(small)
    with pytest.raises(MissingWeightsError, match="no ArcFace-shaped recognition model"):
        find_arcface_pack(tmp_path, model_file=".")

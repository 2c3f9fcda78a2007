"""Guard logic, including every fail-closed path, with stand-in encoders."""

import math

import numpy as np
import pytest

from personc_assets.core.encoders.base import l2_normalise
from personc_assets.core.guard import PASS, REJECT, Guard, GuardMember
from personc_assets.core.index import EmbeddingIndex
from personc_assets.core.types import FaceObservation

DIM = 8
SOURCES = l2_normalise(np.eye(DIM, dtype=np.float32)[:4])  # four orthogonal sources


class TableEncoder:
    """Returns the vector stored in the image's first pixel row (a controllable stand-in)."""

    name, version, dim, default_tau, tau_rationale = "table", "t1", DIM, 0.5, "test"

    def embed(self, faces):
        return np.stack([f.image[0, :DIM, 0].astype(np.float32) / 100.0 for f in faces])


class RaisingEncoder(TableEncoder):
    name = "raising"

    def embed(self, faces):
        raise RuntimeError("model crashed")


class NanEncoder(TableEncoder):
    name = "nan"

    def embed(self, faces):
        return np.full((len(faces), DIM), np.nan, np.float32)


class WrongSizeEncoder(TableEncoder):
    name = "wrong"

    def embed(self, faces):
        return np.ones((len(faces), DIM + 1), np.float32) / math.sqrt(DIM + 1)


def image_for(vec):
    """An image whose first row encodes ``vec`` (unit vector) for TableEncoder."""
    img = np.zeros((16, 16, 3), np.uint8)
    img[0, :DIM, 0] = np.round(np.asarray(vec) * 100).astype(np.uint8)
    return img


def one_face(image):
    return [FaceObservation(image, np.zeros((68, 2), np.float32), (0, 0, 16, 16), 1.0)]


def index_for(encoder):
    return EmbeddingIndex.build(encoder.name, encoder.version, [f"s{i}" for i in range(4)], SOURCES)


def guard_with(*encoders, detector=one_face, tau=0.5):
    return Guard([GuardMember(e, index_for(e), tau) for e in encoders], detector=detector)


CLOSE_TO_S0 = np.array([0.6, 0.0, 0.0, 0.0, 0.8, 0.0, 0.0, 0.0])  # cos 0.6 to s0
UNLIKE_ALL = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.8])  # orthogonal to all sources
EXACTLY_075_TO_S0 = np.array([0.75, 0.0, 0.0, 0.0, 0.66, 0.0, 0.0, 0.0])  # cos exactly 0.75 to s0, norm 0.999


def test_pass_below_tau_and_reject_at_tau():
    # why: the core rule — reject when max similarity reaches tau, pass below
    g = guard_with(TableEncoder())
    unlike, close = g.check([("ok", image_for(UNLIKE_ALL)), ("close", image_for(CLOSE_TO_S0))])
    assert unlike.verdict == PASS and unlike.per_encoder[0].max_similarity == pytest.approx(0.0, abs=1e-6)
    assert close.verdict == REJECT and close.per_encoder[0].nearest_source == "s0"


def test_similarity_exactly_equal_to_tau_is_rejected():
    # why: "reaches tau" means >=; 0.75 is exact in float32 and float64 (0.6 is not: float32(0.6) > 0.6,
    # so a case built on 0.6 also passes a guard that only rejects above tau)
    at_tau = guard_with(TableEncoder(), tau=0.75).check([("eq", image_for(EXACTLY_075_TO_S0))])[0]
    assert at_tau.per_encoder[0].max_similarity == 0.75 == at_tau.per_encoder[0].tau, "the case must be exact"
    assert at_tau.verdict == REJECT and "reaches tau" in at_tau.reason


@pytest.mark.parametrize("encoder,expected", [
    (RaisingEncoder(), "encoder error"), (NanEncoder(), "invalid embedding"), (WrongSizeEncoder(), "shape")])
def test_encoder_faults_reject(encoder, expected):
    # why: a broken encoder must never be read as "no similarity found"
    v = Guard([GuardMember(encoder, index_for(TableEncoder()), 0.5)], detector=one_face).check(
        [("c", image_for(UNLIKE_ALL))])[0]
    assert v.verdict == REJECT and expected in v.reason


def test_no_face_and_several_faces_reject():
    # why: a candidate with no detectable face cannot be checked, so it cannot pass
    none = guard_with(TableEncoder(), detector=lambda img: []).check([("c", image_for(UNLIKE_ALL))])[0]
    assert none.verdict == REJECT and "no face" in none.reason
    two = guard_with(TableEncoder(), detector=lambda img: one_face(img) * 2).check([("c", image_for(UNLIKE_ALL))])[0]
    assert two.verdict == REJECT and "2 faces" in two.reason


def test_detector_crash_rejects():
    # why: detection errors are part of the fail-closed contract
    def boom(img):
        raise RuntimeError("detector broke")
    v = guard_with(TableEncoder(), detector=boom).check([("c", image_for(UNLIKE_ALL))])[0]
    assert v.verdict == REJECT and "detection error" in v.reason


def test_missing_and_stale_index_reject():
    # why: without a current index there is nothing to compare against
    enc = TableEncoder()
    missing = Guard([GuardMember(enc, None, 0.5, index_error="file gone")], detector=one_face)
    assert missing.check([("c", image_for(UNLIKE_ALL))])[0].verdict == REJECT
    stale_index = EmbeddingIndex.build(enc.name, "old-version", [f"s{i}" for i in range(4)], SOURCES)
    stale = Guard([GuardMember(enc, stale_index, 0.5)], detector=one_face).check([("c", image_for(UNLIKE_ALL))])[0]
    assert stale.verdict == REJECT and "stale" in stale.reason


def test_any_gating_encoder_rejects_and_a_witness_does_not_gate():
    # why: the ensemble rejects when ANY gating member rejects; witness members are recorded only
    table = TableEncoder()
    ensemble = Guard([GuardMember(table, index_for(table), 0.5),
                      GuardMember(RaisingEncoder(), index_for(RaisingEncoder()), 0.5)], detector=one_face)
    assert ensemble.check([("c", image_for(UNLIKE_ALL))])[0].verdict == REJECT
    witnessed = Guard([GuardMember(table, index_for(table), 0.5),
                       GuardMember(RaisingEncoder(), index_for(RaisingEncoder()), 0.5, gating=False)],
                      detector=one_face).check([("c", image_for(UNLIKE_ALL))])[0]
    assert witnessed.verdict == PASS and witnessed.per_encoder[1].verdict == REJECT


def test_released_faces_must_differ_from_each_other():
    # why: two releases of the same new person would be one identity shared twice
    g = guard_with(TableEncoder())
    first, twin = g.check([("a", image_for(UNLIKE_ALL)), ("b", image_for(UNLIKE_ALL))])
    assert g.admit(first).verdict == PASS
    second = g.admit(twin)
    assert second.verdict == REJECT and "already released" in second.reason


def test_guard_needs_a_gating_encoder():
    with pytest.raises(ValueError, match="gating"):
        Guard([GuardMember(TableEncoder(), None, 0.5, gating=False)])


def test_a_face_within_the_margin_below_tau_is_rejected():
    # why: the judged transforms sample a continuum; a release at 0.8997 against tau 0.90 reached
    # 0.9004 at a 5% rescale, which lies between the judged original and 10%
    at = Guard([GuardMember(TableEncoder(), index_for(TableEncoder()), 0.76)], detector=one_face, margin=0.02)
    near, clear = at.check([("near", image_for(EXACTLY_075_TO_S0)), ("clear", image_for(UNLIKE_ALL))])
    assert near.per_encoder[0].max_similarity == 0.75 < near.per_encoder[0].tau
    assert near.verdict == REJECT and "within the margin" in near.reason
    assert clear.verdict == PASS
    without = Guard([GuardMember(TableEncoder(), index_for(TableEncoder()), 0.76)], detector=one_face)
    assert without.check([("near", image_for(EXACTLY_075_TO_S0))])[0].verdict == PASS
    with pytest.raises(ValueError, match="margin"):
        Guard([GuardMember(TableEncoder(), index_for(TableEncoder()), 0.76)], margin=-0.1)

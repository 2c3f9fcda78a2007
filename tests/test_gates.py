"""The guard's gates and benign transforms, with stand-in encoders (see test_guard)."""

from __future__ import annotations

import numpy as np

from personc_assets.core import gates
from personc_assets.core.guard import PASS, REJECT, GateVerdict, Guard, GuardMember
from personc_assets.core.realism import DEFAULT_THRESHOLDS
from personc_assets.core.transforms import BenignTransform
from personc_assets.core.types import FaceObservation, SourceFace
from test_guard import CLOSE_TO_S0, UNLIKE_ALL, TableEncoder, image_for, index_for, one_face


class FixedGate:
    def __init__(self, name: str, passed: bool):
        self.name, self._passed = name, passed

    def judge(self, faces):
        return [GateVerdict(self.name, self._passed, 0.0 if self._passed else 2.0, 1.0, "s0",
                            "fine" if self._passed else "reused region") for _ in faces]


class RaisingGate:
    name = "broken"

    def judge(self, faces):
        raise RuntimeError("detector crashed")


def _guard(*gate_list, transforms=()):
    enc = TableEncoder()
    return Guard([GuardMember(enc, index_for(enc), 0.5)], detector=one_face, gates=gate_list,
                 transforms=transforms)


def test_a_failing_gate_rejects_a_face_unlike_every_source():
    # why: a face-swapped copy of a source photo is nobody by identity; the reuse gate must still stop it
    v = _guard(FixedGate("reuse", False)).check([("c", image_for(UNLIKE_ALL))])[0]
    assert v.verdict == REJECT and "reuse: reused region" in v.reason
    assert [g.gate for g in v.gates] == ["reuse"] and v.per_encoder[0].verdict == PASS
    assert _guard(FixedGate("reuse", True)).check([("c", image_for(UNLIKE_ALL))])[0].verdict == PASS


def test_a_gate_that_raises_rejects_fail_closed():
    # why: a crashed realism or reuse check must never count as "checked and fine"
    v = _guard(RaisingGate()).check([("c", image_for(UNLIKE_ALL))])[0]
    assert v.verdict == REJECT and "gate error: RuntimeError" in v.reason


def _to_close(image: np.ndarray) -> np.ndarray:
    return image_for(CLOSE_TO_S0)  # a change of the image that lands it near a source


def _fails(image: np.ndarray) -> np.ndarray:
    raise ValueError("cannot transform")


def test_the_worst_benign_transform_decides(monkeypatch):
    # why: a face that is only new in one exact rendering is found again after a mirror or a JPEG
    monkeypatch.setattr("personc_assets.core.transforms.landmarks_in_box",
                        lambda image, box: np.zeros((68, 2), np.float32))
    guard = _guard(transforms=(BenignTransform("harmless", lambda im: im.copy()),
                               BenignTransform("re-encode", _to_close)))
    v = guard.check([("c", image_for(UNLIKE_ALL))])[0]
    ev = v.per_encoder[0]
    assert v.verdict == REJECT and ev.worst_transform == "re-encode"
    assert abs(ev.max_similarity - 0.6) < 1e-6 and "under re-encode" in ev.reason
    plain = _guard(transforms=(BenignTransform("harmless", lambda im: im.copy()),)).check(
        [("c", image_for(UNLIKE_ALL))])[0]
    assert plain.verdict == PASS and plain.per_encoder[0].worst_transform in ("original", "harmless")
    broken = _guard(transforms=(BenignTransform("broken", _fails),)).check([("c", image_for(UNLIKE_ALL))])[0]
    assert broken.verdict == REJECT and "could not be judged" in broken.reason


def _source(seed: int) -> SourceFace:
    image = np.full((256, 256, 3), 128, np.uint8)
    return SourceFace(f"{seed:064x}", "A", f"p{seed}", f"p{seed}.png", image, np.zeros((68, 2), np.float32))


def test_realism_limits_widen_to_the_sources_only_for_how_photos_were_taken(monkeypatch):
    # why: a soft, warm-lit source set must not make its own faces "incoherent", but its real glasses
    # or light patches must not license ghosted rims or colour blobs in renders
    base = DEFAULT_THRESHOLDS
    scores = {"sharpness": base.min_sharpness - 1.0, "eye_rim": base.max_eye_rim + 5.0,
              "colour_blob": base.max_colour_blob + 4.0, "lr_colour": base.max_lr_colour + 3.0}
    monkeypatch.setattr(gates, "measure", lambda image: dict(scores))
    widened = gates.thresholds_for_sources([_source(1), _source(2)])
    assert widened.min_sharpness == scores["sharpness"]
    assert widened.max_lr_colour == scores["lr_colour"]
    assert widened.max_eye_rim == base.max_eye_rim and widened.max_colour_blob == base.max_colour_blob
    assert widened.max_sharpness == base.max_sharpness  # the sources were not sharper: unchanged


def test_a_witness_encoder_that_failed_is_unverified_not_clear():
    # why: `or 0.0` used to count a crashed witness encoder as "no leak" for that release
    from personc_assets.core.pipeline.judging import ReleasedFace, witness_rates

    def released(similarity: dict) -> ReleasedFace:
        return ReleasedFace("pc", "c", "/out/released/pc.png", 0, 0, "p", "r", (), {}, similarity,
                            dict.fromkeys(similarity), {"dlib": 0.9, "arcface": 0.35})

    leakage, unverified = witness_rates([released({"dlib": 0.8, "arcface": None}),
                                         released({"dlib": 0.7, "arcface": 0.5})], ["arcface"])
    assert unverified == {"arcface": 1} and leakage == {"arcface": 0.5}


def test_faces_released_before_are_remembered():
    # why: releases were de-duplicated within one run only; a later run could release the same face again
    guard = _guard()
    earlier = image_for(UNLIKE_ALL)
    assert guard.remember([("pc-old", earlier)]) == []
    again = guard.admit(guard.check([("c", earlier)])[0])
    assert again.verdict == REJECT and "already released" in again.reason
    other = guard.admit(guard.check([("d", image_for(np.array([0, 0, 0, 0, 0, 1.0, 0, 0])))])[0])
    assert other.verdict == PASS
    # retries steer away from this guard's own releases only (a rerun must not depend on what other
    # runs released meanwhile); the faces it was told to remember are refused, not steered from
    assert np.allclose(guard.admitted_embeddings("table"), [[0, 0, 0, 0, 0, 1.0, 0, 0]])
    assert _guard().admitted_embeddings("table") is None


def test_a_release_file_appears_only_after_its_row_is_committed(tmp_path):
    # why: a crash between writing a released PNG and committing its row left unrecorded PNGs in
    # released/; staged files are published after the commit, and recovery sorts out the rest
    from personc_assets.core.lineage.store import LineageStore
    from personc_assets.core.pipeline.config import Workspace
    from personc_assets.core.pipeline.judging import publish_staged, recover_staged, staged_path

    ws = Workspace(tmp_path / "out")
    store = LineageStore.open(ws.db_path)
    committed, crashed = ws.released / "pc-a.png", ws.released / "pc-b.png"
    for final in (committed, crashed):
        staged_path(ws, final).parent.mkdir(parents=True, exist_ok=True)
        staged_path(ws, final).write_bytes(b"png")
    assert not committed.exists() and not crashed.exists()  # nothing public before the commit
    with store.transaction() as tx:
        tx.upsert("releases", [{"release_id": "pc-a", "candidate_id": "ca", "file": str(committed),
                                "status": "released"}])
    recover_staged(ws, store)  # as the next run does after a crash
    assert committed.read_bytes() == b"png", "a committed release is published"
    assert not crashed.exists() and not staged_path(ws, crashed).exists(), "an unrecorded one is dropped"
    staged_path(ws, crashed).write_bytes(b"png2")
    publish_staged(ws, [str(crashed)])
    assert crashed.read_bytes() == b"png2"


def test_realism_limits_are_measured_once_per_source_set(monkeypatch, tmp_path):
    # why: measuring every source took seconds each time a guard was built (generation, recheck)
    from personc_assets.core.pipeline import judging
    from personc_assets.core.pipeline.config import Workspace

    class Sources:
        def __init__(self, source_set_hash: str) -> None:
            self.source_set_hash = source_set_hash

        def iter_faces(self):
            return iter([[_source(1), _source(2)]])

    measured = []
    monkeypatch.setattr(gates, "measure", lambda image: measured.append(1) or {"sharpness": 1.0, "lr_colour": 30.5})
    ws = Workspace(tmp_path)
    first = judging.realism_thresholds(ws, Sources("a" * 64))
    assert len(measured) == 2 and first.min_sharpness == 1.0 and first.max_lr_colour == 30.5
    assert judging.realism_thresholds(ws, Sources("a" * 64)) == first and len(measured) == 2
    judging.realism_thresholds(ws, Sources("b" * 64))  # other sources: measured again
    assert len(measured) == 4


def test_a_release_id_and_watermark_name_the_face_not_the_code_version():
    # why: the guard judges the watermarked pixels and the watermark carries the release id; an id
    # derived from the candidate id (which names the code version) gave each commit other verdicts
    # near tau and other retries for the same seed, so releases could not be compared across commits
    from personc_assets.core.pipeline.judging import _watermark_all
    from personc_assets.core.recipes import Recipe
    from personc_assets.core.release import release_id_for
    from personc_assets.core.types import Candidate

    rng = np.random.default_rng(0)
    face = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    other = face.copy()
    other[128, 128, 0] ^= 1
    recipe = Recipe.__new__(Recipe)  # the watermark never reads the recipe
    before, _ = _watermark_all([Candidate("c-under-one-commit", recipe, 0, face)])
    after, _ = _watermark_all([Candidate("c-under-the-next", recipe, 0, face.copy())])
    assert np.array_equal(before["c-under-one-commit"], after["c-under-the-next"])
    assert release_id_for(face) == release_id_for(face.copy()) != release_id_for(other)
    assert release_id_for(face).startswith("pc-") and len(release_id_for(face)) == 15


def test_a_mirrored_blur_is_judged_as_the_blurred_mirror_image(monkeypatch):
    # why: a mirrored photo blurred at 1.5 px took a release from 0.889 under the mirror to 0.9003,
    # at tau; neither change alone came as close, so the guard judges the pair
    import cv2
    import pytest

    from personc_assets.core.transforms import BENIGN_TRANSFORMS, blur, mirrored, rotate

    monkeypatch.setattr("personc_assets.core.transforms.landmarks_in_box",
                        lambda image, box: np.zeros((68, 2), np.float32))
    image = np.random.default_rng(1).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    face = FaceObservation(image, np.zeros((68, 2), np.float32), (10, 20, 29, 39), 1.0)
    both = mirrored(blur(1.0))
    seen = both.apply(face)
    assert np.array_equal(seen.image, cv2.GaussianBlur(np.ascontiguousarray(image[:, ::-1]), (0, 0), 1.0))
    assert seen.box == (50, 20, 69, 39)  # the box mirrored with the pixels: x -> 79 - x
    assert "mirror, blur 1.0" in [t.name for t in BENIGN_TRANSFORMS]
    with pytest.raises(ValueError, match="photometric"):
        mirrored(rotate(3.0))

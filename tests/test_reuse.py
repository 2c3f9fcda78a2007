"""The photo-reuse check: edited copies of a source photo are rejected, other photos pass.

Synthetic scenes test the machinery everywhere; the calibration claims
(docs/reuse_guard.md) are tested on ../shared/faces.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from personc_assets.core import reuse
from personc_assets.core.reuse import REUSE_THRESHOLDS, ReuseIndex, ReuseThresholds
from reuse_fixtures import (EDITS, MIRRORED_PAIR, average_face, crop_centre, edited_copies, jpeg,
                            labelled_photos, mirror, synthetic_face)


def scene(seed: int, size: tuple[int, int] = (384, 512)) -> np.ndarray:
    """A textured stand-in photo ``[H, W, 3]``: random discs, boxes and lines over a colour ramp."""
    rng = np.random.default_rng(seed)
    h, w = size
    ramp = np.linspace(rng.integers(40, 200, 3), rng.integers(40, 200, 3), w)
    image = np.ascontiguousarray(np.broadcast_to(ramp, (h, w, 3))).astype(np.uint8)
    for _ in range(60):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(4, 40))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), r, colour, -1)
        else:
            cv2.rectangle(image, (x, y), (x + r, y + 2 * r), colour, -1)
        cv2.line(image, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, 2)
    return cv2.GaussianBlur(image, (3, 3), 0)


@pytest.fixture(scope="module")
def scenes() -> ReuseIndex:
    return ReuseIndex.build([(f"scene{i}", scene(i)) for i in range(3)])


def test_an_edited_copy_is_rejected_and_named(scenes):
    copy = jpeg(crop_centre(scene(1)), 60)  # cropped and re-encoded, as a reposted copy would be
    m = scenes.check(copy)
    assert m.reused and m.nearest == "scene1" and m.score >= 1
    assert m.inliers >= REUSE_THRESHOLDS.min_inliers
    assert m.reason.startswith("reuses source 'scene1'")


def test_a_different_image_passes(scenes):
    m = scenes.check(scene(7))
    assert not m.reused and m.score < 1
    assert m.inliers < REUSE_THRESHOLDS.min_inliers
    assert m.reason.startswith("no reuse; nearest source")


def test_a_copy_with_its_middle_replaced_is_rejected(scenes):
    # only the periphery is reused: the pipeline's failure mode (a new face in a source's frame)
    copy = scene(0).copy()
    copy[96:288, 128:384] = scene(9)[96:288, 128:384]
    m = scenes.check(copy)
    assert m.reused and m.nearest == "scene0"


def test_a_mirrored_copy_is_found_on_the_mirrored_side(scenes):
    m = scenes.check(mirror(scene(2)))
    assert m.reused and m.nearest == "scene2" and m.mirrored and "mirrored" in m.reason
    assert not scenes.check(scene(2)).mirrored


def test_rank_lists_every_source_strongest_first(scenes):
    ranked = scenes.rank(scene(1))
    assert ranked[0].nearest == "scene1" and ranked[0] == scenes.check(scene(1))
    assert sorted(m.nearest for m in ranked) == ["scene0", "scene1", "scene2"]
    assert [m.score for m in ranked] == sorted((m.score for m in ranked), reverse=True)
    assert [m.reused for m in ranked] == [True, False, False]
    assert all((m.score >= 1) == m.reused for m in ranked)


def test_check_many_keeps_the_order(scenes):
    out = scenes.check_many([scene(7), scene(0)])
    assert [m.reused for m in out] == [False, True] and out[1].nearest == "scene0"


def test_a_plain_synthetic_face_is_not_a_copy_of_anything(scenes):
    # a smooth image has few keypoints and a near-flat hash: it must not match by chance
    m = scenes.check(synthetic_face())
    assert not m.reused and m.inliers == 0 and m.tiles == 0


def test_plain_images_are_no_evidence_of_anything(caplog):
    # no keypoints and a hash of noise: a blank frame must not "reuse" a blank source
    grey, white = np.full((256, 256, 3), 128, np.uint8), np.full((300, 200, 3), 250, np.uint8)
    index = ReuseIndex.build([("grey", grey), ("scene0", scene(0))])
    assert "hashes only" not in caplog.text
    m = index.check(white)
    assert not m.reused and m.inliers == 0 and m.tiles == 0 and m.score == 0
    blank = ReuseIndex.build([("grey", grey)])
    assert "no SIFT keypoints in any of 1 source photos" in caplog.text
    assert not blank.check(white).reused
    assert blank.check(scene(3)).reason.startswith("no reuse; nearest source 'grey'")


def test_saved_and_loaded_indexes_answer_alike(scenes, tmp_path):
    path = tmp_path / "reuse.npz"
    scenes.save(path)
    loaded = ReuseIndex.load(path)
    assert loaded.source_ids == scenes.source_ids == ["scene0", "scene1", "scene2"]
    for image in (scene(1), mirror(scene(2)), scene(7)):
        assert loaded.rank(image) == scenes.rank(image)


def test_two_builds_answer_alike(scenes):
    # the kd-trees are seeded: a verdict near a threshold must not depend on what ran before
    # (unseeded, this probe's inliers differ between two builds: 229 vs 231)
    again = ReuseIndex.build([(f"scene{i}", scene(i)) for i in range(3)])
    probe = jpeg(crop_centre(scene(1), 0.5), 30)
    assert again.rank(probe) == scenes.rank(probe)


def _resaved(tmp_path: Path, arrays: dict, **changes) -> Path:
    path = tmp_path / "changed.npz"
    np.savez(path, **{k: v for k, v in {**arrays, **changes}.items() if v is not None})
    return path


def test_load_refuses_a_stale_damaged_or_pickled_index(scenes, tmp_path):
    path = tmp_path / "reuse.npz"
    scenes.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    n = len(arrays["kp_entry"])
    cases = [  # (changes, message): each names the problem and says to rebuild
        (dict(extraction=arrays["extraction"] + 1), "built with extraction settings .* rebuild"),
        (dict(desc=None), r"missing \['desc'\]"),
        (dict(desc=arrays["desc"].astype(np.float32)), "desc is float32, not uint8"),
        (dict(kp_entry=arrays["kp_entry"][:-1]), re.escape(f"inconsistent (kp_entry ({n - 1},) != ({n},))")),
        (dict(source_ids=np.array(["a", None], dtype=object)), "allow_pickle"),  # never unpickled
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            ReuseIndex.load(_resaved(tmp_path, arrays, **changes))


@pytest.mark.parametrize("image, error, message", [
    (np.zeros((256, 256, 3), np.float32), TypeError, "candidate must be a uint8"),
    (np.zeros((256, 256), np.uint8), ValueError, r"candidate must be shaped \[H, W, 3\]"),
    (np.zeros((256, 256, 4), np.uint8), ValueError, r"candidate must be shaped \[H, W, 3\]"),
    (np.zeros((40, 256, 3), np.uint8), ValueError, "256x40 px; .* at least 64 px"),
])
def test_a_bad_candidate_raises_and_says_why(scenes, image, error, message):
    # the guard fails closed on an exception: a bad input must never read as "not reused"
    with pytest.raises(error, match=message):
        scenes.check(image)


def test_build_refuses_no_sources_and_bad_ids():
    with pytest.raises(ValueError, match="no source photos"):
        ReuseIndex.build([])
    with pytest.raises(ValueError, match=r"photos\[1\] has id ''"):
        ReuseIndex.build([("a", scene(0)), ("", scene(1))])
    with pytest.raises(ValueError, match="source photo 'a' .* at least 64 px"):
        ReuseIndex.build([("a", np.zeros((32, 32, 3), np.uint8))])


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="min_inliers=2"):
        ReuseThresholds(min_inliers=2)
    with pytest.raises(ValueError, match="max_hash_distance=32"):
        ReuseThresholds(max_hash_distance=32)
    with pytest.raises(ValueError, match="min_tiles=0"):
        ReuseThresholds(min_tiles=0)


def test_an_internal_error_propagates(scenes, monkeypatch):
    # no broad except anywhere: the caller sees the error and rejects (fails closed)
    def broken(gray):
        raise RuntimeError("SIFT failed")

    monkeypatch.setattr(reuse, "_sift", broken)
    with pytest.raises(RuntimeError, match="SIFT failed"):
        scenes.check(scene(1))


# ---------------------------------------------------------------- calibration claims, ../shared/faces

@pytest.fixture(scope="module")
def faces(shared_faces):
    photos = labelled_photos(shared_faces)
    index = ReuseIndex.build([(p.name, image) for p in photos for image in (p.photo, p.crop)])
    return photos, index


@pytest.mark.slow
@pytest.mark.shared_faces
def test_every_edited_copy_of_every_photo_is_rejected(faces):
    photos, index = faces
    missed, checked = [], 0
    for i, p in enumerate(photos):
        for label, image in edited_copies(photos, i):
            own = next(m for m in index.rank(image) if m.nearest == p.name)
            checked += 1
            if not own.reused:
                missed.append(f"{label}: {own.reason}")
    assert checked == len(photos) * len(EDITS) * 2 == 39 * 14
    assert not missed, f"{len(missed)}/{checked} edited copies passed:\n" + "\n".join(missed)


@pytest.mark.slow
@pytest.mark.shared_faces
def test_different_photos_pass_and_the_mirrored_copy_does_not(faces):
    photos, index = faces
    flagged, mirrored, pairs = [], [], 0
    for p in photos:
        for kind, image in (("photo", p.photo), ("crop", p.crop)):
            for m in index.rank(image):
                if m.nearest == p.name:
                    assert m.reused, f"{p.name} {kind} is not found as its own source: {m.reason}"
                elif {p.name, m.nearest} == MIRRORED_PAIR:  # the folder's one true reuse (README)
                    mirrored.append(m)
                else:
                    pairs += 1
                    if m.reused:
                        flagged.append(f"{p.name} {kind}: {m.reason}")
    assert pairs == 2 * 39 * 38 - 4
    assert not flagged, "different photos flagged as reuse:\n" + "\n".join(flagged)
    assert len(mirrored) == 4 and all(m.reused and m.mirrored for m in mirrored)


@pytest.mark.shared_faces
def test_a_plain_face_and_an_average_of_six_people_pass(faces):
    photos, index = faces
    for name, image in (("synthetic face", synthetic_face()), ("average of 6", average_face(photos))):
        m = index.check(image)
        assert not m.reused, f"{name}: {m.reason}"

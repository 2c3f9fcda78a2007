"""Detection on a small copy must find what full-resolution detection finds."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from personc_assets.core.faces.align import (ALIGNED_SIZE, CANONICAL_TEMPLATE, five_points,
                                             similarity_to_template)
from personc_assets.core.faces.detect import detect_faces
from personc_assets.core.faces.loading import decode_image
from personc_assets.core.faces.pyramid import BOX_SIDE, full_resolution_box, pyramid_shrink

FACES = Path(__file__).resolve().parents[1].parent / "shared" / "faces"
needs_faces = pytest.mark.skipif(not FACES.is_dir(),
                                 reason=f"{FACES} absent (test photos live in ../shared/faces)")
#: landmarks may move at most this much, in pixels of the 256 px aligned crop
TOLERANCE_CROP_PX = 1.0


def _iou(a, b) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


@lru_cache(maxsize=1)
def _photos() -> tuple[tuple[str, np.ndarray, tuple], ...]:
    """(name, pixels, full-resolution faces) of every photo in ../shared/faces."""
    out = []
    for path in sorted(FACES.rglob("*.jpg")):
        pixels = decode_image(path).pixels
        out.append((path.name, pixels, tuple(detect_faces(pixels, max_side=max(pixels.shape)))))
    return tuple(out)


def _worst_error(detector) -> tuple[float, list[str]]:
    """Largest landmark shift (aligned-crop px) against full resolution, and lost faces."""
    worst, lost = 0.0, []
    for name, pixels, full in _photos():
        found = detector(pixels)
        for ref in full:
            match = max(found, key=lambda f: _iou(f.box, ref.box), default=None)
            if match is None or _iou(match.box, ref.box) < 0.5:
                lost.append(f"{name} {ref.box}")
                continue
            matrix = similarity_to_template(five_points(ref.landmarks), CANONICAL_TEMPLATE * ALIGNED_SIZE)
            zoom = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))  # crop px per source px
            shift = np.linalg.norm(match.landmarks - ref.landmarks, axis=1).max() * zoom
            worst = max(worst, float(shift))
    return worst, lost


@needs_faces
def test_pyramid_detection_matches_full_resolution_on_shared_faces():
    # why: ingest detects on a small copy; it must lose no face and keep landmarks within 1 px
    assert sum(max(p.shape[:2]) > 1024 for _, p, _ in _photos()) >= 20  # the test has teeth
    worst, lost = _worst_error(detect_faces)
    print(f"pyramid detection: worst landmark shift {worst:.3f} crop px, lost {lost}")
    assert not lost, f"faces lost: {lost}"
    assert worst <= TOLERANCE_CROP_PX


@needs_faces
def test_skipping_the_levels_below_a_face_size_keeps_the_larger_faces():
    # why: ICS skips the finest pyramid levels on its coalition renders (faces the size of the
    # released one); every face at least that large must keep its box and score
    from personc_assets.core.faces.pyramid import levels_below

    checked = 0
    for name, pixels, full in _photos():
        if not full or max(pixels.shape[:2]) > 1024:
            continue
        side = min(min(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in full)
        if levels_below(0.6 * side) == 0:
            continue
        quick = detect_faces(pixels, max_side=max(pixels.shape[:2]), min_face=0.6 * side)
        assert [(f.box, f.detector_score) for f in quick] == [(f.box, f.detector_score) for f in full], name
        checked += 1
    assert checked >= 3, f"the test needs photos whose faces allow skipping levels, found {checked}"


def test_boxes_map_up_through_dlibs_pyramid():
    # why: a hit found k shrink steps down must land on the box full resolution reports
    import dlib

    pyr = dlib.pyramid_down(6)
    for level, steps in ((0, 3), (2, 5), (7, 8)):
        base = dlib.rectangle(40, 31, 40 + BOX_SIDE - 1, 31 + BOX_SIDE - 1)
        box, exact = full_resolution_box(pyr.rect_up(base, level), steps)
        up = pyr.rect_up(base, level + steps)
        assert exact and box == (up.left(), up.top(), up.right(), up.bottom())
    _, exact = full_resolution_box(dlib.rectangle(-13, 266, 83, 352), 2)  # clipped border box
    assert not exact


def test_pyramid_shrink_is_minimal_and_checks_its_argument():
    # why: one step too many loses small faces; one too few costs time
    image = np.zeros((1300, 700, 3), np.uint8)
    small, steps = pyramid_shrink(image, 1024)
    assert max(small.shape[:2]) <= 1024 and steps == 2  # 1300 -> 1083 -> 903
    assert pyramid_shrink(image, 2000)[1] == 0
    with pytest.raises(ValueError, match="at least the detector window"):
        pyramid_shrink(image, 50)

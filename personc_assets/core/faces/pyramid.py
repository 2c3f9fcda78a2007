"""dlib's detection pyramid: detect on a small copy, get the full-resolution detector's boxes.

dlib's HOG detector scans an image pyramid in which every level is the
previous one shrunk by dlib's ``pyramid_down(6)`` (5/6 per step), and maps a
hit at level ``l`` back with ``rect_up(rect, l)``. Shrinking the photo with
that same ``pyramid_down(6)`` ``k`` times therefore hands the detector exactly
the full-resolution pyramid from level ``k`` on: the same HOG features, the
same scores. Each hit's level ``j`` in the small pyramid is recovered from its
box (a detection is ``BOX_SIDE`` px square at its own level), and the box is
mapped up ``j + k`` levels with dlib's own ``rect_up``: the very rectangle a
full-resolution run reports. Landmarks are then fitted at full resolution in
that box, so they are identical too.

What this gives up: faces smaller than about ``BOX_SIDE * (6/5)**k`` source
pixels (they only show at levels below ``k``) — the same faces a plain resize
to ``max_side`` loses. A plain ``cv2`` resize moved the boxes, and the
landmarks with them, by up to ~5 px of the 256 px aligned crop on
``../shared/faces``; ``detect.detect_faces`` shrinks with this pyramid.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


#: dlib's frontal face detector: pyramid_down(6), 80 px window, 8 px HOG cells.
PYRAMID_RATE = 6
_WINDOW = 80
_CELL = 8
#: Side of a detection box at the pyramid level it was found on: a window of
#: ``_WINDOW // _CELL`` cells spans ``(cells - 1) * cell + 1`` pixels.
BOX_SIDE = (_WINDOW // _CELL - 1) * _CELL + 1
_MAX_LEVELS = 64

@lru_cache(maxsize=1)
def _pyramid():
    import dlib

    return dlib.pyramid_down(PYRAMID_RATE)


def pyramid_shrink(image: np.ndarray, max_side: int, min_steps: int = 0) -> tuple[np.ndarray, int]:
    """Apply dlib's ``pyramid_down(6)`` until the longest side is ``<= max_side``, at least
    ``min_steps`` times (while the image still holds a detector window).

    Returns the shrunk image ``[h, w, 3]`` and the number of steps ``k``.
    """
    if max_side < _WINDOW:
        raise ValueError(f"max_side must be at least the detector window ({_WINDOW} px), got {max_side}")
    pyr = _pyramid()
    small, steps = image, 0

    def window_left_after_a_step() -> bool:
        return min(small.shape[:2]) * (PYRAMID_RATE - 1) // PYRAMID_RATE >= _WINDOW

    while max(small.shape[:2]) > max_side or (steps < min_steps and window_left_after_a_step()):
        small = np.asarray(pyr(small))
        steps += 1
    return small, steps


def levels_below(min_face: float) -> int:
    """How many of the finest pyramid levels only find faces smaller than ``min_face`` px: a face
    shows first at the level where it is ``BOX_SIDE`` px, so it is still found after skipping them."""
    steps = 0
    while BOX_SIDE * (PYRAMID_RATE / (PYRAMID_RATE - 1)) ** (steps + 1) <= min_face:
        steps += 1
    return steps


def full_resolution_box(rect, steps: int) -> tuple[tuple[int, int, int, int], bool]:
    """Map a detection ``rect`` of the ``steps``-times shrunk image to the full image.

    Returns ``(left, top, right, bottom)`` and whether the mapping is exact
    (the hit's own pyramid level was identified). When it is not (a box
    clipped at the image border), the best size match is used.
    """
    import dlib

    pyr = _pyramid()
    best: tuple[int, object, int] | None = None
    for level in range(_MAX_LEVELS):
        down = pyr.rect_down(dlib.drectangle(rect), level)
        base = dlib.rectangle(*(int(round(v)) for v in (down.left(), down.top(),
                                                          down.right(), down.bottom())))
        if pyr.rect_up(base, level) != rect:
            continue
        misfit = abs(base.width() - BOX_SIDE) + abs(base.height() - BOX_SIDE)
        if best is None or misfit < best[0]:
            best = (misfit, base, level)
        if misfit == 0:
            break
    if best is None:  # cannot happen for dlib's own rects; be explicit anyway
        raise ValueError(f"detection {rect} does not map onto any pyramid level")
    misfit, base, level = best
    up = pyr.rect_up(base, level + steps)
    return (up.left(), up.top(), up.right(), up.bottom()), misfit == 0


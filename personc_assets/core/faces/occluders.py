"""What covers a face: a fringe or a hat over the forehead, glasses over the eyes, a beard
over the lower face.

An appearance model learns whatever its training textures hold; a fringe or
glasses rims in one donor's texture become a ghost in every face mixed from
it (glasses are carried by no factor whole, hair by none at all). A beard is
split between the texture and the mouth factor: mixed with another donor's
lips it leaves a pale ring round the mouth, and its modes darken the lower
face of clean-shaven mixes. Faces with such occluders still give shape
factors and protect their person; they are left out of the appearance model.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict

import numpy as np

from ..types import check_image, check_landmarks
from .marks import skin_marks

log = logging.getLogger(__name__)

#: Share of the forehead band much darker than the cheeks above which hair covers it.
#: Measured: fringe or hat 0.80-0.91 (demo astronaut, Grace Hopper), bare foreheads
#: 0.00-0.14 on ../shared/faces and the demo's group-photo faces.
MAX_FOREHEAD_HAIR = 0.4
#: How much darker than the cheeks (Lab L*, 0..255 scale) a forehead pixel must be to count as hair.
HAIR_DARKER = 35.0
#: Beard shade (``marks.skin_marks``: upper lip and chin darker than the cheeks, relative) above
#: which a beard covers the lower face, half way between the measured groups: on ../shared/faces
#: the bearded person's five photos 0.49-0.62, everyone else -0.25-0.16 (stubble and shading
#: included); the demo photos -0.06-0.28 (the highest a turned, side-lit face).
MAX_BEARD = 0.38


def forehead_hair(image: np.ndarray, landmarks: np.ndarray) -> float:
    """Share ``[0, 1]`` of the band just above the brows that is much darker than the cheeks,
    for an RGB face ``[H, W, 3]`` with dlib-68 ``landmarks [68, 2]``."""
    import cv2

    img, lm = check_image(image), check_landmarks(landmarks).astype(np.float64)
    lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB).astype(np.float32)
    iod = float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))
    h, w = img.shape[:2]

    def box(x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        xs, ys = np.clip([x0, x1], 0, w).astype(int), np.clip([y0, y1], 0, h).astype(int)
        return lab[ys[0]:ys[1], xs[0]:xs[1], 0].reshape(-1)

    brow = lm[17:27, 1].min()
    band = box(lm[19, 0], lm[24, 0], brow - 0.45 * iod, brow - 0.1 * iod)
    cheeks = np.concatenate([box(lm[3, 0] + 0.1 * iod, lm[31, 0] - 0.1 * iod, lm[29, 1], lm[33, 1]),
                             box(lm[35, 0] + 0.1 * iod, lm[13, 0] - 0.1 * iod, lm[29, 1], lm[33, 1])])
    if band.size == 0 or cheeks.size == 0:
        return 1.0  # no forehead to see: treat as covered
    return float(np.mean(band < np.median(cheeks) - HAIR_DARKER))


#: Faces whose occluders this process has measured (digest of pixels and landmarks -> names): the
#: backbone's fit and the recipe sampler's donor description ask about the same faces in one run.
_MEASURED: OrderedDict[str, tuple[str, ...]] = OrderedDict()
_MEASURED_MAX = 4096
_measured_lock = threading.Lock()


def _digest(image: np.ndarray, landmarks: np.ndarray) -> str:
    img = np.ascontiguousarray(image)
    h = hashlib.blake2b(digest_size=16)
    h.update(str(img.shape).encode())
    h.update(img.tobytes())
    h.update(np.ascontiguousarray(landmarks, np.float32).tobytes())
    return h.hexdigest()


def occluders(image: np.ndarray, landmarks: np.ndarray) -> tuple[str, ...]:
    """Names of what covers the face: ``"forehead hair"``, ``"beard"``, ``"glasses"`` (empty when bare).

    Measured once per process for the same pixels and landmarks (``_MEASURED``)."""
    key = _digest(check_image(image), check_landmarks(landmarks))
    with _measured_lock:
        if key in _MEASURED:
            _MEASURED.move_to_end(key)
            return _MEASURED[key]
    found = _measure_occluders(image, landmarks)
    with _measured_lock:
        _MEASURED[key] = found
        while len(_MEASURED) > _MEASURED_MAX:
            _MEASURED.popitem(last=False)
    return found


def _measure_occluders(image: np.ndarray, landmarks: np.ndarray) -> tuple[str, ...]:
    from ..realism import DEFAULT_THRESHOLDS, RealismError, measure

    found = []
    if forehead_hair(image, landmarks) > MAX_FOREHEAD_HAIR:
        found.append("forehead hair")
    if skin_marks(check_image(image), check_landmarks(landmarks))[1] > MAX_BEARD:
        found.append("beard")
    try:
        if measure(np.ascontiguousarray(image))["eye_rim"] > DEFAULT_THRESHOLDS.max_eye_rim:
            found.append("glasses")
    except RealismError as exc:  # unmeasurable: the rim check cannot clear it
        log.info("glasses check not possible (%s); treated as covered", exc)
        found.append("glasses")
    return tuple(found)

"""The realism gate: reject candidates that are not one coherent face.

Runs before identity is judged. A candidate is a canonical-frame portrait
``[256, 256, 3]`` (RGB ``uint8``, eyes level, see ``faces.align``). Every
criterion looks at the face itself — the region the 68 landmarks span — so a
plain backdrop or missing hair costs nothing. Each criterion is measured as a
named score; the verdict compares the scores with ``RealismThresholds`` and
lists every criterion that failed. Anything that goes wrong while measuring
(no face, a landmark fit outside the image, an exception) is a REJECT with
the reason: the gate fails closed.

Criteria (lengths in inter-ocular distances, IOD; colours in CIE Lab):

- ``faces``: exactly one face found by dlib's HOG detector.
- ``landmark_error``: the 68 landmarks re-fitted on the candidate against the
  shape it was rendered from (only when the caller knows that shape).
- ``template_error``: eye centres, nose tip and mouth corners of the re-fit
  against the canonical template (the face sits where the frame says).
- ``eye_model_disagreement``: eye corners from dlib's independent 5-point
  model against the 68-point fit (OpenCV 5 no longer ships Haar cascades).
- ``eye_contrast`` / ``mouth_contrast``: a dark iris in each eye, lip colour
  or a mouth gap in the mouth, found photometrically where the landmarks say.
- ``eye_echo`` / ``mouth_echo`` / ``nose_echo``: a peak of the power
  cepstrum at a shift of a few pixels — the signature of a feature overlaid
  on a shifted copy of itself (doubled eyes, a doubled mouth or nose); for
  the eyes in lightness and in chroma.
- ``feature_copy``: an eye or the mouth found again where skin should be.
- ``eye_rim``: a thin dark ring round both eyes (a ghosted glasses rim).
- ``sharpness``, ``detail_ratio``, ``mouth_detail``: band-pass energy of the
  face, and of its least detailed feature and of the mouth relative to it
  (a smeared or melted feature).
- ``colour_patch``: a patch of skin whose hue differs from its surroundings.
- ``colour_blob``: a compact blob in the central skin whose chroma neither
  the skin around it, nor its lightness, nor the other face half explains.
- ``seam``: a long, straight, abrupt colour step across the skin.
- ``lr_colour`` / ``lr_shape``: the two cheeks of one colour; the shape close
  enough to its mirror image.

``docs/realism_gate.md`` says how the defaults were calibrated and what they
catch.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from typing import Iterable, Sequence

import numpy as np

from .faces.align import CANONICAL_TEMPLATE, five_points
from .types import check_image, check_landmarks

log = logging.getLogger(__name__)

# dlib 68-point groups. "Right" is the subject's right (image left).
JAW = np.arange(0, 17)
RIGHT_BROW = np.arange(17, 22)
LEFT_BROW = np.arange(22, 27)
NOSE = np.arange(27, 36)
RIGHT_EYE = np.arange(36, 42)
LEFT_EYE = np.arange(42, 48)
MOUTH_OUTER = np.arange(48, 60)
MOUTH_INNER = np.arange(60, 68)
#: Smallest candidate side the gate judges, in pixels (the canonical frame is 256).
MIN_SIZE = 128
#: How far above the brows the judged face reaches, in IOD (the forehead).
FOREHEAD_IOD = 0.5
#: Shifts (px) at which a doubled eye is looked for in the cepstrum.
ECHO_MIN_PX, ECHO_MAX_PX = 2.5, 9.0
#: Shifts (px) searched for a doubled mouth and nose: shorter ones are the lips' and nose's own
#: parallel edges.
MOUTH_ECHO_PX, NOSE_ECHO_PX = (4.0, 11.0), (6.0, 14.0)
#: Half-width and half-height (IOD) of each eye's echo patch, round the eye centre.
EYE_BOX_IOD = (0.45, 0.28)
#: How far (IOD) the mouth's echo patch reaches past the mouth's corners and lips, sideways and up/down.
MOUTH_BOX_IOD = (0.12, 0.25)
#: Half-width and half-height (IOD) of the nose's echo patch.
NOSE_BOX_IOD = (0.45, 0.35)
#: 68-point indices of (right outer, right inner, left inner, left outer) eye corners.
EYE_CORNERS_68 = np.array([36, 39, 42, 45])


@dataclass(frozen=True)
class RealismThresholds:
    """Limits of every criterion; a score outside its limit rejects the candidate.

    ``max_*`` fields are upper limits, ``min_*`` lower limits. Lengths are in
    inter-ocular distances (IOD), colours in CIE Lab units. The defaults come
    from ``calibrate`` on the real faces of ``../shared/faces`` (as
    photographed and on a plain backdrop); ``docs/realism_gate.md`` gives the
    figures.
    """

    max_landmark_error: float = 0.06          # re-fit vs rendered shape, mean over 68 points, IOD
    max_template_error: float = 0.276         # eyes, nose tip, mouth corners vs canonical template, IOD
    max_eye_model_disagreement: float = 0.179  # dlib 5-point vs 68-point eye corners, IOD
    min_eye_contrast: float = 6.92            # cheek L* minus the darkest tenth of the weaker eye
    min_mouth_contrast: float = 9.24          # lip a* over the cheeks', or mouth-gap darkness in L*
    max_eye_echo: float = 21.0                # cepstral echo of an eye at 2.5-9 px (z-units, L* + chroma, x + y)
    max_mouth_echo: float = 6.31              # cepstral echo of the mouth's x-gradient at 4-11 px
    max_nose_echo: float = 5.71               # cepstral echo of the nose's x-gradient at 6-14 px
    max_feature_copy: float = 0.792           # NCC of an eye or the mouth found again in the skin
    max_eye_rim: float = 3.36                 # ridge strength of a ring round both eyes, L*
    min_sharpness: float = 2.43               # band-pass RMS of the inner face, L*
    max_sharpness: float = 5.09
    min_detail_ratio: float = 0.430           # least detailed feature's band-pass RMS / the face's
    min_mouth_detail: float = 1.18            # the mouth's band-pass RMS / the face's
    max_colour_patch: float = 7.97            # local a*b* anomaly of the skin (hue-weighted)
    max_colour_blob: float = 7.58             # blob of chroma that L* does not explain, central skin, a*b*
    max_seam: float = 7.25                    # long straight hard colour step in the skin
    max_lr_colour: float = 15.5               # chroma difference of the two cheeks, a*b*
    max_lr_shape: float = 0.424               # landmarks vs their mirror image, IOD

    def check(self) -> "RealismThresholds":
        """Return ``self`` after checking every limit is a finite number."""
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"realism threshold {f.name} must be a finite number, got {value!r}")
        if self.min_sharpness >= self.max_sharpness:
            raise ValueError(f"min_sharpness ({self.min_sharpness}) must be below "
                             f"max_sharpness ({self.max_sharpness})")
        return self


DEFAULT_THRESHOLDS = RealismThresholds()

#: Which score each threshold limits, and how: ("max", score) or ("min", score).
LIMITS: dict[str, tuple[str, str]] = {
    f.name: (f.name[:3], f.name[4:]) for f in fields(RealismThresholds)
}


@dataclass(frozen=True)
class RealismVerdict:
    """The gate's decision on one candidate.

    ``reasons`` names each failed criterion with its score and limit (empty
    when ``passed``); ``scores`` holds every score that could be measured.
    """

    passed: bool
    reasons: tuple[str, ...]
    scores: dict[str, float]


class RealismError(ValueError):
    """A candidate that cannot be measured (the gate turns it into a REJECT)."""

    def __init__(self, criterion: str, message: str):
        super().__init__(f"{criterion}: {message}")
        self.criterion = criterion


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class FaceFrame:
    """The re-fitted face: landmarks ``[68, 2]``, eye centres ``[2, 2]`` and IOD in pixels."""

    landmarks: np.ndarray
    eyes: np.ndarray
    iod: float
    box: tuple[int, int, int, int]


def face_frame(landmarks: np.ndarray, box: tuple[int, int, int, int]) -> FaceFrame:
    """Eye centres and inter-ocular distance of dlib-68 ``landmarks`` ``[68, 2]``."""
    lm = check_landmarks(landmarks)
    eyes = np.stack([lm[RIGHT_EYE].mean(axis=0), lm[LEFT_EYE].mean(axis=0)])
    iod = float(np.linalg.norm(eyes[1] - eyes[0]))
    if iod < 8.0:
        raise RealismError("landmarks", f"eyes only {iod:.1f} px apart; no usable face")
    return FaceFrame(lm, eyes, iod, box)


def polygon_mask(shape: tuple[int, int], points: np.ndarray, dilate_px: float = 0.0) -> np.ndarray:
    """Boolean mask ``[H, W]`` of the convex hull of ``points`` ``[N, 2]``, optionally grown."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1)
    k = int(round(dilate_px))
    if k > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1)))
    elif k < 0:
        mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (-2 * k + 1, -2 * k + 1)))
    return mask.astype(bool)


def box_around(centre: np.ndarray, half_w: float, half_h: float,
               shape: tuple[int, int]) -> tuple[slice, slice]:
    """Row and column slices of a box centred on ``centre`` (x, y), clipped to ``shape``."""
    h, w = shape
    x0, x1 = int(round(centre[0] - half_w)), int(round(centre[0] + half_w))
    y0, y1 = int(round(centre[1] - half_h)), int(round(centre[1] + half_h))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 6 or y1 - y0 < 6:
        raise RealismError("landmarks", f"feature box at ({centre[0]:.0f}, {centre[1]:.0f}) "
                           "is under 6 px inside the image (landmarks off the image or collapsed)")
    return slice(y0, y1), slice(x0, x1)


@dataclass(frozen=True)
class Regions:
    """Masks ``[H, W]`` of the face's parts, derived from the landmarks."""

    inner: np.ndarray   # jaw + brows (raised by FOREHEAD_IOD) hull, pulled in from the outline
    skin: np.ndarray    # inner face without eyes, brows, nostrils and mouth
    core_skin: np.ndarray  # skin away from the outline, hairline and smile lines: where seams are sought
    right_cheek: np.ndarray
    left_cheek: np.ndarray


def face_regions(frame: FaceFrame, shape: tuple[int, int]) -> Regions:
    """Inner face, skin and cheek masks of ``frame`` in an image of ``shape``."""
    lm, iod = frame.landmarks, frame.iod
    up = (frame.eyes[1] - frame.eyes[0]) / iod
    up = np.array([up[1], -up[0]]) * FOREHEAD_IOD * iod  # perpendicular to the eye line, upwards
    brows = lm[np.r_[RIGHT_BROW, LEFT_BROW]] + up
    inner = polygon_mask(shape, np.concatenate([lm[JAW], brows]), -0.08 * iod)
    features = (polygon_mask(shape, lm[RIGHT_EYE], 0.12 * iod) | polygon_mask(shape, lm[LEFT_EYE], 0.12 * iod)
                | polygon_mask(shape, lm[RIGHT_BROW], 0.08 * iod) | polygon_mask(shape, lm[LEFT_BROW], 0.08 * iod)
                | polygon_mask(shape, lm[31:36], 0.06 * iod) | polygon_mask(shape, lm[MOUTH_OUTER], 0.08 * iod))
    skin = inner & ~features
    core = polygon_mask(shape, np.concatenate([lm[JAW], lm[np.r_[RIGHT_BROW, LEFT_BROW]] + 0.5 * up]),
                        -0.18 * iod) & ~features & ~nasolabial_folds(lm, iod, shape)
    mouth_y = lm[[48, 54], 1].mean()
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    cheeks = []
    for eye in frame.eyes:
        cy = 0.5 * (eye[1] + mouth_y)
        disc = (xx - eye[0]) ** 2 + (yy - cy) ** 2 <= (0.2 * iod) ** 2
        cheeks.append(disc & skin)
    return Regions(inner, skin, core, cheeks[0], cheeks[1])


def nasolabial_folds(lm: np.ndarray, iod: float, shape: tuple[int, int]) -> np.ndarray:
    """Mask ``[H, W]`` of the bands from the nose wings past the mouth corners, where creases are normal."""
    import cv2

    mask = np.zeros(shape, np.uint8)
    for wing, corner in ((31, 48), (35, 54)):
        a, b = lm[wing], lm[corner]
        end = b + 0.3 * (b - a)
        cv2.line(mask, tuple(int(v) for v in np.round(a)), tuple(int(v) for v in np.round(end)), 1,
                 max(1, int(round(0.2 * iod))))
    return mask.astype(bool)


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Planes:
    """The candidate in CIE Lab ``[H, W, 3]`` (L* 0-100, a*, b*) and its band-pass L* ``[H, W]``."""

    lab: np.ndarray
    band: np.ndarray


def planes(image: np.ndarray) -> Planes:
    """Lab planes and a difference-of-Gaussians band-pass of L* (sigma 0.8 - 2.5 px)."""
    import cv2

    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    L = lab[..., 0]
    band = cv2.GaussianBlur(L, (0, 0), 0.8) - cv2.GaussianBlur(L, (0, 0), 2.5)
    return Planes(lab, band)


def rms(values: np.ndarray) -> float:
    """Root mean square of ``values`` (0 for an empty array)."""
    return float(np.sqrt(np.mean(np.square(values)))) if values.size else 0.0


# --------------------------------------------------------------------------- detection


_five_point_lock = threading.Lock()


@lru_cache(maxsize=1)
def _five_point_predictor():
    import dlib

    from .faces.detect import dlib_model_path

    return dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))


def five_point_eye_corners(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Eye corners ``[4, 2]`` (right outer, right inner, left inner, left outer) from dlib's 5-point model."""
    import dlib

    with _five_point_lock:  # dlib objects are not documented as thread-safe
        shape = _five_point_predictor()(image, dlib.rectangle(*box))
    pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)
    # dlib's 5-point order: left eye outer, left inner, right outer, right inner, nose
    return pts[[2, 3, 1, 0]]


def detection_scores(image: np.ndarray, expected: np.ndarray | None) -> tuple[FaceFrame, dict[str, float]]:
    """Find the one face, re-fit its landmarks and score them.

    ``expected`` are the landmarks ``[68, 2]`` the candidate was rendered from,
    or None. Raises ``RealismError`` when there is not exactly one face.
    """
    from .faces.detect import detect_faces

    found = detect_faces(image)
    scores = {"faces": float(len(found))}
    if len(found) != 1:
        raise RealismError("faces", f"{len(found)} faces found; exactly one is required")
    frame = face_frame(found[0].landmarks, found[0].box)
    scores["detector_score"] = float(found[0].detector_score)
    size = image.shape[1]
    template = CANONICAL_TEMPLATE * size
    scores["template_error"] = float(np.linalg.norm(five_points(frame.landmarks) - template, axis=1).mean()
                                     / frame.iod)
    if expected is not None:
        exp = check_landmarks(expected, "expected_landmarks")
        scores["landmark_error"] = float(np.linalg.norm(frame.landmarks - exp, axis=1).mean()
                                         / face_frame(exp, frame.box).iod)
    corners5 = five_point_eye_corners(image, frame.box)
    scores["eye_model_disagreement"] = float(
        np.linalg.norm(corners5 - frame.landmarks[EYE_CORNERS_68], axis=1).mean() / frame.iod)
    return frame, scores


# --------------------------------------------------------------------------- features present


def eye_contrast(p: Planes, frame: FaceFrame, regions: Regions) -> float:
    """Weaker eye's contrast: skin L* around it minus the darkest 10% of L* inside it."""
    L = p.lab[..., 0]
    out = []
    for idx, cheek in ((RIGHT_EYE, regions.right_cheek), (LEFT_EYE, regions.left_cheek)):
        inside = L[polygon_mask(L.shape, frame.landmarks[idx])]
        skin = L[cheek] if cheek.any() else L[regions.skin]
        if inside.size < 4 or skin.size < 4:
            raise RealismError("eye_contrast", "eye or cheek region is empty")
        out.append(float(np.median(skin) - np.percentile(inside, 10)))
    return min(out)


def mouth_contrast(p: Planes, frame: FaceFrame, regions: Regions) -> float:
    """The mouth's stronger signal: lip a* above the cheeks', or the mouth gap's L* below the lips'."""
    lm, lab = frame.landmarks, p.lab
    outer = polygon_mask(lab.shape[:2], lm[MOUTH_OUTER])
    inner = polygon_mask(lab.shape[:2], lm[MOUTH_INNER], 1.0)
    lips = outer & ~inner
    cheeks = regions.right_cheek | regions.left_cheek
    if lips.sum() < 4 or cheeks.sum() < 4:
        raise RealismError("mouth_contrast", "lip or cheek region is empty")
    redness = float(np.median(lab[..., 1][lips]) - np.median(lab[..., 1][cheeks]))
    # the mouth line: darkest row of a thin strip between the corners
    (x0, _), (x1, _) = lm[48], lm[54]
    y = lm[MOUTH_INNER, 1].mean()
    strip = lab[..., 0][box_around(np.array([(x0 + x1) / 2, y]), 0.3 * abs(x1 - x0), 0.12 * frame.iod, lab.shape[:2])]
    gap = float(np.median(lab[..., 0][lips]) - strip.mean(axis=1).min())
    return max(redness, gap)


# --------------------------------------------------------------------------- ghosting


def hann2d(h: int, w: int) -> np.ndarray:
    """Separable Hann window ``[h, w]`` without zero edges."""
    return np.outer(np.hanning(h + 2)[1:-1], np.hanning(w + 2)[1:-1]).astype(np.float32)


def power_cepstrum(patch: np.ndarray) -> np.ndarray:
    """Centred power cepstrum ``[2h, 2w]`` of a windowed patch ``[h, w]``.

    An image overlaid on a copy of itself shifted by ``d`` multiplies its
    spectrum by ``|1 + k exp(-i w.d)|^2``; the logarithm turns that into a
    term that peaks at quefrency ``d``, whatever the image's own spectrum.
    """
    h, w = patch.shape
    x = (patch - patch.mean()) * hann2d(h, w)
    power = np.abs(np.fft.rfft2(x, s=(2 * h, 2 * w))) ** 2
    floor = 1e-3 * float(power.mean()) + 1e-12
    return np.fft.fftshift(np.fft.irfft2(np.log(power + floor), s=(2 * h, 2 * w)))


def echo_peak(cepstrum: np.ndarray, r_min: float = ECHO_MIN_PX, r_max: float = ECHO_MAX_PX) -> float:
    """Height of the cepstrum's highest point at ``r_min`` - ``r_max`` px, in robust z-units of its surround."""
    h, w = cepstrum.shape[0] // 2, cepstrum.shape[1] // 2
    yy, xx = np.mgrid[-h:h, -w:w]
    rr = np.hypot(yy, xx)
    ring = (rr >= r_min) & (rr <= r_max)
    surround = (rr >= r_min) & (rr <= r_max + 5)
    values = cepstrum[surround]
    spread = float(values.std()) + 1e-9
    return float((cepstrum[ring].max() - np.median(values)) / spread)


def echo_score(gx: np.ndarray, gy: np.ndarray, rows: slice, cols: slice) -> float:
    """Echo of the x- and y-gradient patches (sum of their ``echo_peak``): a doubled feature."""
    return echo_peak(power_cepstrum(gx[rows, cols])) + echo_peak(power_cepstrum(gy[rows, cols]))


def gradients(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x and y Sobel gradients ``[H, W]`` of L* lightly smoothed (sigma 0.7 px)."""
    import cv2

    smooth = cv2.GaussianBlur(L, (0, 0), 0.7)
    return (cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3))


def eye_boxes(frame: FaceFrame, shape: tuple[int, int]) -> list[tuple[slice, slice]]:
    """Patches round the two eyes (``EYE_BOX_IOD``)."""
    half_w, half_h = EYE_BOX_IOD
    return [box_around(c, half_w * frame.iod, half_h * frame.iod, shape) for c in frame.eyes]


def echo_scores(p: Planes, frame: FaceFrame) -> dict[str, float]:
    """Echoes of the eyes (the stronger eye), the mouth and the nose.

    The eyes use both gradients (``echo_score``) of L* and of chroma
    (|a*b*|): a doubled eye doubles its colour edges (iris against sclera
    and skin) as well as its lightness edges, while the lids and creases that
    echo naturally in L* carry little chroma. The mouth and the nose are
    lines parallel to each other (lips, the sides of the nose), which echo
    naturally across them; only their x-gradient (corners, teeth, nostrils)
    is used, over longer shifts (``MOUTH_ECHO_PX``, ``NOSE_ECHO_PX``). Each
    patch reaches past its feature (``*_BOX_IOD``) so that a copy of it
    shifted by the longest of those shifts still lies mostly inside.
    """
    L = p.lab[..., 0]
    gx, gy = gradients(L)
    cx, cy = gradients(np.hypot(p.lab[..., 1], p.lab[..., 2]))
    lm, iod = frame.landmarks, frame.iod
    eyes = max(echo_score(gx, gy, rows, cols) + echo_score(cx, cy, rows, cols)
               for rows, cols in eye_boxes(frame, L.shape))
    mouth = lm[MOUTH_OUTER]
    rows, cols = box_around(mouth.mean(axis=0), 0.5 * float(np.ptp(mouth[:, 0])) + MOUTH_BOX_IOD[0] * iod,
                            0.5 * float(np.ptp(mouth[:, 1])) + MOUTH_BOX_IOD[1] * iod, L.shape)
    mouth_echo = echo_peak(power_cepstrum(gx[rows, cols]), *MOUTH_ECHO_PX)
    nose_centre = lm[[27, 30, 31, 35]].mean(axis=0) + np.array([0.0, 0.1 * iod])
    rows, cols = box_around(nose_centre, NOSE_BOX_IOD[0] * iod, NOSE_BOX_IOD[1] * iod, L.shape)
    nose_echo = echo_peak(power_cepstrum(gx[rows, cols]), *NOSE_ECHO_PX)
    return {"eye_echo": eyes, "mouth_echo": mouth_echo, "nose_echo": nose_echo}


# --------------------------------------------------------------------------- copied features


def feature_copy(L: np.ndarray, frame: FaceFrame, regions: Regions) -> float:
    """Best match of an eye or the mouth anywhere else in the face (normalised cross-correlation).

    Each eye's and the mouth's patch is searched over the judged face at
    positions centred in the skin (where no feature belongs), away from the
    feature itself and its mirror partner. A feature that appears twice
    matches its copy closely. -1 when nothing could be searched.
    """
    lm, iod = frame.landmarks, frame.iod
    mouth = lm[MOUTH_OUTER]
    feats = [(c, 0.28 * iod, 0.16 * iod, [c, frame.eyes[1 - i]]) for i, c in enumerate(frame.eyes)]
    mouth_c = mouth.mean(axis=0)
    feats.append((mouth_c, 0.4 * float(np.ptp(mouth[:, 0])), 0.4 * float(np.ptp(mouth[:, 1])), [mouth_c]))
    return max(best_match_elsewhere(L, regions, *f) for f in feats)


def best_match_elsewhere(L: np.ndarray, regions: Regions, centre: np.ndarray, half_w: float, half_h: float,
                         exclude: list[np.ndarray]) -> float:
    """Highest NCC of the patch at ``centre`` with any placement centred in the skin, off ``exclude``.

    ``L`` is ``[H, W]``; placements whose centre lies within the patch's own
    half-size ellipse around any point of ``exclude`` (the feature, its
    partner) do not count. -1 when no placement is left.
    """
    import cv2

    rows, cols = box_around(centre, half_w, half_h, L.shape)
    tpl = L[rows, cols]
    th, tw = tpl.shape
    ys, xs = np.nonzero(regions.inner)
    y0, y1 = max(ys.min() - th // 2, 0), min(ys.max() + th // 2 + 1, L.shape[0])
    x0, x1 = max(xs.min() - tw // 2, 0), min(xs.max() + tw // 2 + 1, L.shape[1])
    area = L[y0:y1, x0:x1]
    if th >= area.shape[0] or tw >= area.shape[1] or tpl.std() < 1e-3:
        return -1.0
    ncc = cv2.matchTemplate(area, tpl, cv2.TM_CCOEFF_NORMED)
    # each placement's top-left corner -> its centre in image coordinates
    cy = np.arange(ncc.shape[0])[:, None] + y0 + th / 2
    cx = np.arange(ncc.shape[1])[None, :] + x0 + tw / 2
    keep = regions.skin[np.clip(np.round(cy).astype(int), 0, L.shape[0] - 1).repeat(ncc.shape[1], 1),
                        np.clip(np.round(cx).astype(int), 0, L.shape[1] - 1).repeat(ncc.shape[0], 0)]
    for c in exclude:
        keep &= ((cx - c[0]) / half_w) ** 2 + ((cy - c[1]) / half_h) ** 2 > 1.0
    return float(ncc[keep].max()) if keep.any() else -1.0


# --------------------------------------------------------------------------- rims


def ring_ridge(L: np.ndarray, centre: np.ndarray, iod: float) -> float:
    """Strength of the strongest thin dark ring around an eye, in L* units.

    L* is sampled on a polar grid around the eye (radii 0.3 - 0.75 IOD
    horizontally, 0.62 of that vertically); a thin dark line shows as a ridge
    ``(L(r - 2) + L(r + 2)) / 2 - L(r)``. The best path once round the eye
    (radius moving at most 1 px per angle step) is found by dynamic
    programming; the score is the 30th percentile of the ridge along it, so
    the ring must go most of the way round.
    """
    import cv2

    n_ang = 48
    radii = np.arange(0.30 * iod, 0.75 * iod, 1.0, dtype=np.float32)
    angles = np.linspace(0, 2 * np.pi, n_ang, endpoint=False, dtype=np.float32)
    ext = np.arange(radii[0] - 2, radii[-1] + 2.5, 1.0, dtype=np.float32)  # 2 px beyond each end
    map_x = (centre[0] + np.cos(angles)[:, None] * ext[None, :]).astype(np.float32)
    map_y = (centre[1] + 0.62 * np.sin(angles)[:, None] * ext[None, :]).astype(np.float32)
    polar = cv2.remap(L, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    n = len(radii)
    ridge = 0.5 * (polar[:, 0:n] + polar[:, 4:n + 4]) - polar[:, 2:n + 2]
    return _best_closed_path(ridge)


def _best_closed_path(ridge: np.ndarray) -> float:
    """30th percentile of ``ridge`` ``[angles, radii]`` along its best smooth path once round (ends free)."""
    n_ang, n_rad = ridge.shape
    score = ridge[0].astype(np.float64)
    back = np.zeros((n_ang, n_rad), np.int64)
    idx = np.arange(n_rad)
    neg = np.array([-np.inf])
    for a in range(1, n_ang):
        down = np.concatenate([neg, score[:-1]])   # came from radius r - 1
        up = np.concatenate([score[1:], neg])      # came from radius r + 1
        best = np.maximum(np.maximum(down, score), up)
        back[a] = np.where(best == score, idx, np.where(best == down, idx - 1, idx + 1))
        score = best + ridge[a]
    path = np.empty(n_ang, np.int64)
    path[-1] = int(np.argmax(score))
    for a in range(n_ang - 1, 0, -1):
        path[a - 1] = back[a, path[a]]
    return float(np.percentile(ridge[np.arange(n_ang), path], 30))


def rim_score(p: Planes, frame: FaceFrame) -> float:
    """Weaker ring of the two eyes (``ring_ridge``): glasses frame both."""
    L = p.lab[..., 0]
    return min(ring_ridge(L, c, frame.iod) for c in frame.eyes)


# --------------------------------------------------------------------------- texture and colour


def feature_masks(frame: FaceFrame, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Masks ``[H, W]`` of the features whose detail ``sharpness_scores`` weighs against the face's."""
    lm, iod = frame.landmarks, frame.iod
    return {
        "right_eye": polygon_mask(shape, lm[RIGHT_EYE], 0.1 * iod),
        "left_eye": polygon_mask(shape, lm[LEFT_EYE], 0.1 * iod),
        "nose": polygon_mask(shape, lm[NOSE], 0.04 * iod),
        "mouth": polygon_mask(shape, lm[MOUTH_OUTER], 0.06 * iod),
    }


def sharpness_scores(p: Planes, frame: FaceFrame, regions: Regions) -> dict[str, float]:
    """Band-pass RMS of the inner face and the weakest feature's share of it."""
    band = p.band
    face = rms(band[regions.inner])
    ratios = {name: rms(band[m]) / max(face, 1e-6) for name, m in feature_masks(frame, band.shape).items()}
    return {"sharpness": face, "detail_ratio": float(min(ratios.values())), "mouth_detail": ratios["mouth"]}


def local_mean(values: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-filter mean ``[H, W, C]`` of ``values`` ``[H, W, C]`` over ``mask`` ``[H, W]``, and its support ``[H, W]``."""
    import cv2

    k = max(3, size | 1)
    m = mask.astype(np.float32)
    support = cv2.boxFilter(m, -1, (k, k))
    summed = np.stack([cv2.boxFilter(values[..., i] * m, -1, (k, k)) for i in range(values.shape[-1])], -1)
    return summed / np.maximum(support, 1e-6)[..., None], support


#: Weight of a chroma change along the skin's own hue (saturation) against one across it (hue).
RADIAL_WEIGHT = 0.3


def colour_scores(p: Planes, frame: FaceFrame, regions: Regions) -> dict[str, float]:
    """Largest local hue anomaly of the skin, and the cheeks' chroma difference.

    The anomaly compares the skin's mean a*b* in a window of 0.35 IOD with
    the mean in a wide one (1.2 IOD) around it. The part of the
    difference along the face's own skin hue (its median a*b*) is weighted by
    ``RADIAL_WEIGHT``: shading, blush and beard shadow change how saturated
    skin is, a foreign patch changes its hue.
    """
    ab = p.lab[..., 1:]
    skin = regions.skin
    if skin.sum() < 50:
        raise RealismError("colour", "skin region is too small to measure")
    median = np.median(ab[skin], axis=0)
    norm = float(np.linalg.norm(median))
    if norm < 1e-3:
        raise RealismError("colour", "the skin has no hue (a grey image?)")
    across = np.array([-median[1], median[0]]) / norm
    near, support = local_mean(ab, skin, int(round(0.35 * frame.iod)))
    wide, _ = local_mean(ab, skin, int(round(1.2 * frame.iod)))
    full = (support > 0.8) & skin
    if not full.any():
        raise RealismError("colour", "no skin window is large enough to measure")
    diff = near - wide
    along = median / norm
    patch = float(np.hypot(diff @ across, RADIAL_WEIGHT * (diff @ along))[full].max())
    if regions.right_cheek.sum() < 10 or regions.left_cheek.sum() < 10:
        raise RealismError("lr_colour", "a cheek region is empty")
    right = np.median(ab[regions.right_cheek], axis=0)
    left = np.median(ab[regions.left_cheek], axis=0)
    return {"colour_patch": patch, "lr_colour": float(np.linalg.norm(right - left))}


#: Gaussian scale (IOD) of the smooth skin model ``colour_blob`` compares each pixel with.
BLOB_MODEL_IOD = 0.45
#: Gaussian scale (IOD) over which ``colour_blob`` averages what the skin model leaves.
BLOB_IOD = 0.12
#: ``colour_blob`` centres lie this far (IOD) inside the judged face's outline and outside
#: the eyes' outlines: hair, backdrop and eye make-up meet the skin there.
BLOB_OUTLINE_IOD, BLOB_EYE_IOD = 0.2, 0.3
#: Rounds of the robust skin model, and the Cauchy weight's scale in robust (MAD) units.
BLOB_ROUNDS, BLOB_CAUCHY = 3, 2.5
#: Half-width (IOD) of the band round the face's midline where a blob has no mirror image to differ from.
MIRROR_FREE_IOD = 0.15
#: 68-point indices on the face's midline: nose bridge and tip, lip centres, chin.
MIDLINE_68 = np.array([27, 28, 29, 30, 33, 51, 57, 8])


def colour_blob(p: Planes, frame: FaceFrame, regions: Regions) -> float:
    """Strongest compact blob of skin colour that lightness does not explain, in a*b* units
    (the largest value of ``colour_blob_map`` at a centre it allows)."""
    strength, centres = colour_blob_map(p, frame, regions)
    if not centres.any():
        raise RealismError("colour_blob", "no central skin is left to search")
    return float(strength[centres].max())


def colour_blob_map(p: Planes, frame: FaceFrame, regions: Regions) -> tuple[np.ndarray, np.ndarray]:
    """Blob strength ``[H/2, W/2]`` (a*b* units) and the mask ``[H/2, W/2]`` of centres judged.

    Measured at half resolution: the chroma that neither the skin around a
    pixel nor its lightness explains (``unexplained_chroma``) is averaged over
    blobs (Gaussian, sigma ``BLOB_IOD``) and compared with the blob at its
    mirror position (``unmirrored``). Centres are judged in the central skin
    only (``BLOB_OUTLINE_IOD``, ``BLOB_EYE_IOD``).
    """
    import cv2

    h, w = p.lab.shape[:2]
    size = (w // 2, h // 2)
    lab = cv2.resize(p.lab, size, interpolation=cv2.INTER_AREA)
    skin = cv2.resize(regions.skin.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.99
    if skin.sum() < 50:
        raise RealismError("colour_blob", "skin region is too small to measure")
    iod = 0.5 * frame.iod
    chroma = unexplained_chroma(lab, skin, iod)
    s = skin.astype(np.float32)
    support = cv2.GaussianBlur(s, (0, 0), BLOB_IOD * iod)
    blob = cv2.GaussianBlur(chroma * s[..., None], (0, 0), BLOB_IOD * iod) / np.maximum(support, 1e-6)[..., None]
    inner = cv2.resize(regions.inner.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    centres = skin & (support > 0.5) & shrink(inner, BLOB_OUTLINE_IOD * iod)
    for idx in (RIGHT_EYE, LEFT_EYE):
        centres &= ~polygon_mask(centres.shape, 0.5 * frame.landmarks[idx], BLOB_EYE_IOD * iod)
    return unmirrored(blob, support, 0.5 * frame.landmarks, iod), centres


def unexplained_chroma(lab: np.ndarray, skin: np.ndarray, iod: float) -> np.ndarray:
    """Chroma residual ``[H, W, 2]`` (along, across the skin's hue) of ``lab`` ``[H, W, 3]`` over ``skin`` ``[H, W]``.

    Each pixel is written as L*, chroma along the skin's own hue (its median
    a*b*) and chroma across it, and compared with a smooth skin model: the
    Gaussian-weighted mean (sigma ``BLOB_MODEL_IOD``) of the skin around it.
    The model is fitted robustly: in each of ``BLOB_ROUNDS`` rounds a pixel
    far from it counts less (Cauchy weight at ``BLOB_CAUCHY`` robust scales,
    the scale being 1.48 x the median residual), so a patch does not pull the
    model towards itself. Shading, highlights and hair change lightness and
    saturation together: the part of the along-hue residual that the L*
    residual predicts (one slope per face, weighted least squares) is removed.
    """
    import cv2

    ab = lab[..., 1:]
    median = np.median(ab[skin], axis=0)
    norm = float(np.linalg.norm(median))
    if norm < 1e-3:
        raise RealismError("colour_blob", "the skin has no hue (a grey image?)")
    along = median / norm
    across = np.array([-along[1], along[0]])
    lhc = np.stack([lab[..., 0], ab @ along, ab @ across], axis=-1).astype(np.float32)  # L*, along, across
    weight = skin.astype(np.float32)
    for _ in range(BLOB_ROUNDS):
        summed = smooth_field(np.concatenate([lhc * weight[..., None], weight[..., None]], axis=-1),
                              BLOB_MODEL_IOD * iod)
        res = lhc - summed[..., :3] / np.maximum(summed[..., 3:], 1e-6)
        w_skin, dl = weight[skin], res[..., 0][skin]
        slope = float((w_skin * dl * res[..., 1][skin]).sum() / max(float((w_skin * dl * dl).sum()), 1e-6))
        chroma = np.stack([res[..., 1] - slope * res[..., 0], res[..., 2]], axis=-1)
        size = np.hypot(chroma[..., 0], chroma[..., 1])
        scale = 1.4826 * float(np.median(size[skin])) + 1e-3
        weight = skin / (1.0 + (size / (BLOB_CAUCHY * scale)) ** 2)
    return chroma


def unmirrored(blob: np.ndarray, support: np.ndarray, landmarks: np.ndarray, iod: float) -> np.ndarray:
    """Strength ``[H, W]`` of blob vectors ``[H, W, 2]`` that their mirror image does not share.

    A colour found at the same place on both face halves is anatomy, make-up
    or light (reddish nose wings, a shadow from the side), not a patch: off
    the midline a blob's strength is at most its difference from the blob at
    its mirror position, where that position is skin (``support`` ``[H, W]``
    over 0.5). The midline is the vertical through the nose, lips and chin
    (``landmarks`` ``[68, 2]`` in this image's pixels; the canonical frame is
    upright); within ``MIRROR_FREE_IOD`` of it a blob is its own mirror
    image, so the skin model alone judges, and the mirror test blends in over
    the next ``MIRROR_FREE_IOD``.
    """
    import cv2

    h, w = support.shape
    mid = float(landmarks[MIDLINE_68, 0].mean())
    xx, yy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    mx = 2 * mid - xx
    partner = cv2.remap(blob.astype(np.float32), mx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    partner_skin = cv2.remap(support, mx, yy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT) > 0.5
    free = MIRROR_FREE_IOD * iod
    mix = np.clip((np.abs(xx - mid) - free) / free, 0.0, 1.0) * partner_skin
    own = np.hypot(blob[..., 0], blob[..., 1])
    diff = np.hypot(blob[..., 0] - partner[..., 0], blob[..., 1] - partner[..., 1])
    return np.minimum(own, (1.0 - mix) * own + mix * diff)


def smooth_field(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` px) of ``values`` ``[H, W, C]``, computed at half resolution.

    For wide blurs of slowly varying fields (a skin model): a quarter of the pixels and half
    the kernel, and the result differs from the full-resolution blur by far less than the
    field varies.
    """
    import cv2

    h, w = values.shape[:2]
    small = cv2.resize(values, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    blurred = cv2.GaussianBlur(small, (0, 0), 0.5 * sigma)
    return cv2.resize(blurred, (w, h), interpolation=cv2.INTER_LINEAR).reshape(values.shape)


def shrink(mask: np.ndarray, px: float) -> np.ndarray:
    """``mask`` ``[H, W]`` eroded by a disc of radius ``px`` (boolean)."""
    import cv2

    k = 2 * max(1, int(round(px))) + 1
    return cv2.erode(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))).astype(bool)


#: Shortest straight step counted as a seam, in IOD (pasted regions span the face).
SEAM_MIN_IOD = 0.8
#: Lab weights of the seam's colour step: shading changes L*, a seam changes colour.
SEAM_WEIGHTS = np.array([0.5, 1.0, 1.0], np.float32)


def seam_score(p: Planes, frame: FaceFrame, regions: Regions) -> float:
    """Strongest long, straight, hard colour step across the skin.

    Edges of the smoothed colour image in the skin are searched for straight
    segments of at least ``SEAM_MIN_IOD`` (probabilistic Hough, gaps of up to
    0.3 IOD bridged where a feature interrupts the skin). Along each segment
    that lies mostly in the skin, the colour step across it is measured 1 px
    and 4 px either side (median over its length, so only a step that holds
    along the whole line counts). A pasted region's edge is as abrupt at 1 px
    as at 4 px; shading and the side of the nose change slowly, so the score
    ``step_1px * min(1, step_1px / step_4px)`` keeps the first and shrinks
    the second.
    """
    import cv2

    lab = cv2.GaussianBlur(p.lab, (0, 0), 1.0)
    gy = cv2.Sobel(lab, cv2.CV_32F, 0, 1, ksize=3) * SEAM_WEIGHTS
    gx = cv2.Sobel(lab, cv2.CV_32F, 1, 0, ksize=3) * SEAM_WEIGHTS
    mag = np.sqrt((gx ** 2 + gy ** 2).sum(axis=-1)) / 8.0
    skin = regions.core_skin
    edges = ((mag > 1.5) & skin).astype(np.uint8) * 255
    lines = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=int(0.2 * frame.iod),
                            minLineLength=SEAM_MIN_IOD * frame.iod, maxLineGap=int(0.3 * frame.iod))
    if lines is None:
        return 0.0
    sharp = cv2.GaussianBlur(p.lab, (0, 0), 0.5)
    return max((hard_step(sharp, seg, skin) for seg in np.asarray(lines).reshape(-1, 4)), default=0.0)


def hard_step(lab: np.ndarray, seg: np.ndarray, skin: np.ndarray) -> float:
    """``step_1px * min(1, step_1px / step_4px)`` across segment ``seg`` (x0, y0, x1, y1) of ``lab`` ``[H, W, 3]``.

    Each step is the norm of the median (along the segment) weighted Lab
    difference between the two sides. 0 when less than 70% of the segment
    lies in ``skin``.
    """
    import cv2

    x0, y0, x1, y1 = seg.astype(np.float32)
    length = math.hypot(x1 - x0, y1 - y0)
    if length < 1:
        return 0.0
    nx, ny = -(y1 - y0) / length, (x1 - x0) / length
    t = np.linspace(0.05, 0.95, max(4, int(length)), dtype=np.float32)
    px, py = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    h, w = lab.shape[:2]
    if skin[np.clip(np.round(py).astype(int), 0, h - 1), np.clip(np.round(px).astype(int), 0, w - 1)].mean() < 0.7:
        return 0.0

    # samples 1 px and 4 px either side: rows (+1, -1, +4, -4) x positions
    offsets = np.array([1.0, -1.0, 4.0, -4.0], np.float32)[:, None]
    xs = np.clip(px[None, :] + offsets * nx, 0, w - 1).astype(np.float32)
    ys = np.clip(py[None, :] + offsets * ny, 0, h - 1).astype(np.float32)
    samples = cv2.remap(lab, xs, ys, cv2.INTER_LINEAR) * SEAM_WEIGHTS  # [4, N, 3]
    near = float(np.linalg.norm(np.median(samples[0] - samples[1], axis=0)))
    far = float(np.linalg.norm(np.median(samples[2] - samples[3], axis=0)))
    return near * min(1.0, near / max(far, 1.0))


def lr_shape(frame: FaceFrame) -> float:
    """Mirror asymmetry of the landmarks: mean distance, in IOD, between the shape and its mirror image."""
    lm = frame.landmarks
    mid = frame.eyes.mean(axis=0)
    axis = (frame.eyes[1] - frame.eyes[0]) / frame.iod  # unit vector along the eye line
    normal = np.array([-axis[1], axis[0]])
    local = np.stack([(lm - mid) @ axis, (lm - mid) @ normal], axis=1)
    mirrored = local[MIRROR_68] * np.array([-1.0, 1.0])
    # compare the shape with its mirror after removing a shift (head turn moves the midline)
    diff = local - mirrored
    diff -= diff.mean(axis=0)
    return float(np.linalg.norm(diff, axis=1).mean() / frame.iod)


def _mirror_68() -> np.ndarray:
    """Index permutation that maps each dlib-68 point to its left-right mirror partner."""
    perm = np.arange(68)
    pairs = [(0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9),
             (17, 26), (18, 25), (19, 24), (20, 23), (21, 22),
             (31, 35), (32, 34),
             (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
             (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


MIRROR_68 = _mirror_68()


# --------------------------------------------------------------------------- the gate


def measure(image: np.ndarray, expected_landmarks: np.ndarray | None = None) -> dict[str, float]:
    """Every realism score of ``image`` ``[H, W, 3]``; raises ``RealismError`` when it cannot be measured."""
    check_image(image, "candidate")
    h, w = image.shape[:2]
    if h != w or h < MIN_SIZE:
        raise RealismError("input", f"candidate is {w}x{h} px; the gate judges square canonical-frame "
                           f"crops of at least {MIN_SIZE} px (see faces.align)")
    frame, scores = detection_scores(image, expected_landmarks)
    shape = image.shape[:2]
    regions = face_regions(frame, shape)
    p = planes(image)
    scores["eye_contrast"] = eye_contrast(p, frame, regions)
    scores["mouth_contrast"] = mouth_contrast(p, frame, regions)
    L = p.lab[..., 0]
    scores.update(echo_scores(p, frame))
    scores["feature_copy"] = feature_copy(L, frame, regions)
    scores["eye_rim"] = rim_score(p, frame)
    scores.update(sharpness_scores(p, frame, regions))
    scores.update(colour_scores(p, frame, regions))
    scores["colour_blob"] = colour_blob(p, frame, regions)
    scores["seam"] = seam_score(p, frame, regions)
    scores["lr_shape"] = lr_shape(frame)
    return scores


def failed_limits(scores: dict[str, float], thresholds: RealismThresholds) -> list[str]:
    """Reasons for every score outside its limit (a score that is missing is not judged)."""
    reasons = []
    for name, (kind, score) in LIMITS.items():
        if score not in scores:
            continue
        value, limit = scores[score], getattr(thresholds, name)
        if not math.isfinite(value):
            reasons.append(f"{score}: not a finite number ({value})")
        elif kind == "max" and value > limit:
            reasons.append(f"{score}: {value:.3g} above {limit:.3g}")
        elif kind == "min" and value < limit:
            reasons.append(f"{score}: {value:.3g} below {limit:.3g}")
    return reasons


class RealismGate:
    """Judge candidates against ``RealismThresholds``; fail closed on any error."""

    def __init__(self, thresholds: RealismThresholds = DEFAULT_THRESHOLDS):
        self.thresholds = thresholds.check()

    def judge(self, image: np.ndarray, expected_landmarks: np.ndarray | None = None) -> RealismVerdict:
        """Verdict on one candidate ``[H, W, 3]``; ``expected_landmarks`` ``[68, 2]`` if the render's shape is known."""
        try:
            scores = measure(image, expected_landmarks)
        except RealismError as exc:
            return RealismVerdict(False, (str(exc),), {})
        except Exception as exc:  # fail closed: an unmeasurable candidate is not released
            log.warning("realism gate could not measure a candidate: %s: %s", type(exc).__name__, exc)
            return RealismVerdict(False, (f"error: {type(exc).__name__}: {exc}",), {})
        reasons = failed_limits(scores, self.thresholds)
        return RealismVerdict(not reasons, tuple(reasons), scores)

    def judge_many(self, images: Iterable[np.ndarray],
                   expected_landmarks: Sequence[np.ndarray | None] | None = None) -> list[RealismVerdict]:
        """``judge`` each image; ``expected_landmarks``, when given, pairs one (or None) with each image."""
        images = list(images)
        if expected_landmarks is not None and len(expected_landmarks) != len(images):
            raise ValueError(f"expected_landmarks has {len(expected_landmarks)} entries for "
                             f"{len(images)} images; give one (or None) per image")
        shapes = expected_landmarks if expected_landmarks is not None else [None] * len(images)
        return [self.judge(img, lm) for img, lm in zip(images, shapes)]


#: ``calibrate``'s headroom beyond the most extreme real face, as a share of its distance from the median.
DEFAULT_MARGIN = 0.25
#: Geometric criteria that catch gross failures (a broken fit, a warped face) rather than a particular
#: defect: real faces vary more in them (pose, expression) than defects need, so they get more headroom.
GROSS_CRITERIA = frozenset({"template_error", "eye_model_disagreement", "lr_shape"})
GROSS_MARGIN = 2.0


def limits_from_scores(scores: Sequence[dict[str, float]], margin: float = DEFAULT_MARGIN,
                       base: RealismThresholds = DEFAULT_THRESHOLDS,
                       gross_margin: float = GROSS_MARGIN) -> RealismThresholds:
    """Thresholds that let every face of ``scores`` pass, with headroom.

    A ``max_*`` limit becomes ``max + m * (max - median)`` over the faces, a
    ``min_*`` limit ``min - m * (median - min)``, with ``m = gross_margin``
    for ``GROSS_CRITERIA`` and ``margin`` for the rest. A score that no face
    has (``landmark_error`` without expected landmarks) keeps its limit from
    ``base``.
    """
    if not scores:
        raise ValueError("calibration needs the scores of at least one real face")
    for what, value in (("margin", margin), ("gross_margin", gross_margin)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} must be a non-negative number, got {value}")
    updates = {}
    for name, (kind, score) in LIMITS.items():
        values = np.array([s[score] for s in scores if score in s], dtype=np.float64)
        if values.size == 0:
            continue
        median = float(np.median(values))
        m = gross_margin if score in GROSS_CRITERIA else margin
        if kind == "max":
            updates[name] = float(values.max() + m * (values.max() - median))
        else:
            updates[name] = float(values.min() - m * (median - values.min()))
    return replace(base, **updates).check()


def calibrate(real_images: Sequence[np.ndarray],
              expected_landmarks: Sequence[np.ndarray | None] | None = None,
              margin: float = DEFAULT_MARGIN) -> RealismThresholds:
    """Thresholds under which every one of ``real_images`` ``[H, W, 3]`` passes (see ``limits_from_scores``).

    Raises ``ValueError`` naming the image when a real face cannot be
    measured: such a face does not belong in a calibration set.
    """
    images = list(real_images)
    shapes = list(expected_landmarks) if expected_landmarks is not None else [None] * len(images)
    if len(shapes) != len(images):
        raise ValueError(f"expected_landmarks has {len(shapes)} entries for {len(images)} images")
    scores = []
    for i, (image, lm) in enumerate(zip(images, shapes)):
        try:
            scores.append(measure(image, lm))
        except RealismError as exc:
            raise ValueError(f"real image {i} cannot be measured ({exc}); remove it from the "
                             "calibration set") from exc
    log.info("realism thresholds calibrated on %d real faces (margin %.2f)", len(scores), margin)
    return limits_from_scores(scores, margin)

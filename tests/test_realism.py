"""The realism gate on labelled sets built here: real faces pass, broken renders are rejected.

REAL: every face in ../shared/faces aligned to the canonical 256 px frame, as
photographed and with the periphery replaced by a plain grey backdrop through
a feathered face oval (what new renders look like). BROKEN: the same crops
with one defect each, made by operators that mimic today's failures (doubled
eyes, ghosted glasses rims, melted mouths, seams, extra features, colour
patches). Everything is seeded, so the sets are the same on every run.

Set PERSONC_REALISM_SHEET=1 to rewrite docs/realism_contact_sheet.png.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest

from personc_assets.core import realism
from personc_assets.core.realism import (
    DEFAULT_THRESHOLDS, LIMITS, RealismGate, RealismThresholds, RealismVerdict, calibrate, colour_blob,
    echo_peak, echo_score, face_frame, face_regions, gradients, limits_from_scores, planes, power_cepstrum,
    ring_ridge)

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- labelled sets


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``image`` ``[256, 256, 3]``, its true landmarks ``[68, 2]``."""

    name: str
    person: str
    kind: str          # "real", "backdrop" or a defect name
    image: np.ndarray
    landmarks: np.ndarray


def source_crops(faces_dir: Path) -> list[Sample]:
    """Every single-face photo in ``faces_dir`` as ingest makes it a source: the canonical 256 px crop."""
    from personc_assets.core.faces.ingest import ingest_file

    out = []
    for path in sorted(faces_dir.glob("id*/*.jpg")):
        face = ingest_file(path, "A", path.parent.name)
        out.append(Sample(path.stem, path.parent.name, "real", face.aligned, face.landmarks))
    return out


def group_crops(faces_dir: Path) -> list[Sample]:
    """Each face of the group photos (ingest refuses these photos; the faces are small and upsampled)."""
    from personc_assets.core.faces.align import align_face
    from personc_assets.core.faces.detect import detect_faces
    from personc_assets.core.faces.ingest import MIN_FACE_PX
    from personc_assets.core.faces.loading import decode_image

    out = []
    for path in sorted(faces_dir.glob("_multi/*.jpg")):
        pixels = decode_image(path).pixels
        for k, obs in enumerate(detect_faces(pixels)):
            if obs.box[2] - obs.box[0] >= MIN_FACE_PX:
                aligned, lm, _ = align_face(pixels, obs.landmarks)
                out.append(Sample(f"{path.stem}_{k}", f"{path.stem}_{k}", "group", aligned, lm))
    return out


def face_oval(landmarks: np.ndarray, size: int = 256, feather: float = 6.0) -> np.ndarray:
    """Feathered alpha ``[size, size]`` of an oval around the face: jaw to above the brows."""
    lm = landmarks
    eyes = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
    iod = float(np.linalg.norm(eyes[1] - eyes[0]))
    top = lm[17:27, 1].min() - 0.6 * iod
    bottom = lm[8, 1] + 0.1 * iod
    half_w = 0.56 * (lm[16, 0] - lm[0, 0]) + 0.1 * iod
    left, right = (lm[0, 0] + lm[16, 0]) / 2 - half_w, (lm[0, 0] + lm[16, 0]) / 2 + half_w
    mask = np.zeros((size, size), np.float32)
    centre = (int(round((left + right) / 2)), int(round((top + bottom) / 2)))
    axes = (int(round((right - left) / 2)), int(round((bottom - top) / 2)))
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), feather)


def grey_backdrop(sample: Sample, rng: np.random.Generator) -> Sample:
    """The face on a plain, softly lit grey backdrop, feathered in through the face oval."""
    h, w = sample.image.shape[:2]
    level = rng.uniform(110, 190)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = level + rng.uniform(-20, 20) * (xx / w - 0.5) + rng.uniform(-15, 15) * (yy / h - 0.5)
    backdrop = np.repeat(light[..., None], 3, axis=2) * np.array([1.0, 1.0, rng.uniform(0.97, 1.03)])
    alpha = face_oval(sample.landmarks, h)[..., None]
    out = alpha * sample.image.astype(np.float32) + (1 - alpha) * backdrop
    return replace(sample, kind="backdrop", image=np.clip(out + 0.5, 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- defect operators


def _iod(lm: np.ndarray) -> tuple[np.ndarray, float]:
    eyes = np.stack([lm[36:42].mean(0), lm[42:48].mean(0)])
    return eyes, float(np.linalg.norm(eyes[1] - eyes[0]))


def _soft_ellipse(shape: tuple[int, int], centre, axes, feather: float) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    cv2.ellipse(mask, (int(round(centre[0])), int(round(centre[1]))),
                (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))), 0, 0, 360, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), feather) if feather > 0 else mask


def _blend(image: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None] if alpha.ndim == 2 else alpha
    out = (1 - a) * image.astype(np.float32) + a * other.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _shifted(image: np.ndarray, dx: float, dy: float) -> np.ndarray:
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(image, m, image.shape[1::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _random_shift(rng: np.random.Generator, lo: float, hi: float) -> tuple[float, float]:
    r, t = rng.uniform(lo, hi), rng.uniform(0, 2 * np.pi)
    return r * np.cos(t), r * np.sin(t)


def doubled_eyes(s: Sample, rng: np.random.Generator, others: list[Sample]) -> np.ndarray:
    """One or both eyes overlaid on a copy shifted 3-8 px at 40-60% alpha."""
    eyes, iod = _iod(s.landmarks)
    which = [eyes[0], eyes[1]] if rng.random() < 0.6 else [eyes[rng.integers(2)]]
    out = s.image
    for centre in which:
        dx, dy = _random_shift(rng, 3, 8)
        alpha = rng.uniform(0.4, 0.6) * _soft_ellipse(out.shape[:2], centre, (0.42 * iod, 0.27 * iod), 3)
        out = _blend(out, _shifted(out, dx, dy), alpha)
    return out


def ghost_glasses(s: Sample, rng: np.random.Generator, others: list[Sample]) -> np.ndarray:
    """Thin dark rims (2-3 px) round both eyes and a bridge, at 30-50% alpha."""
    eyes, iod = _iod(s.landmarks)
    ink = np.zeros(s.image.shape[:2], np.float32)
    ax, ay = rng.uniform(0.42, 0.55) * iod, rng.uniform(0.28, 0.38) * iod
    thick = int(rng.integers(2, 4))
    for centre in eyes:
        c = centre + rng.uniform(-2, 2, 2) + np.array([0, rng.uniform(0, 0.08) * iod])
        cv2.ellipse(ink, (int(c[0]), int(c[1])), (int(ax), int(ay)), 0, 0, 360, 1.0, thick, cv2.LINE_AA)
    y = int(eyes[:, 1].mean() - 0.05 * iod)
    cv2.line(ink, (int(eyes[0, 0] + ax), y), (int(eyes[1, 0] - ax), y), 1.0, thick, cv2.LINE_AA)
    colour = np.full(s.image.shape, rng.uniform(10, 60), np.float32)
    return _blend(s.image, colour, rng.uniform(0.3, 0.5) * np.clip(ink, 0, 1))


def melted_mouth(s: Sample, rng: np.random.Generator, others: list[Sample]) -> np.ndarray:
    """The mouth stretched vertically and blurred, blurred hard, or blended with a shifted copy."""
    lm, (_, iod) = s.landmarks, _iod(s.landmarks)
    centre = lm[48:60].mean(0)
    half_w = 0.5 * np.ptp(lm[48:60, 0]) + 0.12 * iod
    half_h = 0.5 * np.ptp(lm[48:60, 1]) + 0.15 * iod
    mask = _soft_ellipse(s.image.shape[:2], centre, (half_w, half_h), 3)
    variant = rng.integers(3)
    if variant == 0:
        k = rng.uniform(1.3, 1.8)
        m = np.float32([[1, 0, 0], [0, k, centre[1] * (1 - k)]])
        warped = cv2.warpAffine(s.image, m, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        melted = cv2.GaussianBlur(warped, (0, 0), rng.uniform(1.5, 3))
        mask = _soft_ellipse(s.image.shape[:2], centre, (half_w, half_h * k), 3)
    elif variant == 1:
        melted = cv2.GaussianBlur(s.image, (0, 0), rng.uniform(3, 6))
    else:
        dx, dy = rng.uniform(-3, 3), rng.choice([-1, 1]) * rng.uniform(4, 10)
        melted = _blend(s.image, _shifted(s.image, dx, dy), np.full(s.image.shape[:2], rng.uniform(0.4, 0.6)))
    return _blend(s.image, melted, mask)


def seam(s: Sample, rng: np.random.Generator, others: list[Sample]) -> np.ndarray:
    """A face half or a feature region pasted with a hard edge from another person, colours mismatched."""
    donor = others[int(rng.integers(len(others)))]
    lm, (eyes, iod) = s.landmarks, _iod(s.landmarks)
    gain = np.array([rng.uniform(0.8, 1.25) for _ in range(3)], np.float32)
    pasted = np.clip(donor.image.astype(np.float32) * gain, 0, 255)
    mask = np.zeros(s.image.shape[:2], np.float32)
    variant = rng.integers(3)
    if variant == 0:  # half face, split at the nose line
        x = int(round(lm[27:31, 0].mean()))
        if rng.random() < 0.5:
            mask[:, x:] = 1
        else:
            mask[:, :x] = 1
    elif variant == 1:  # eye band
        y0, y1 = eyes[:, 1].mean() - 0.35 * iod, eyes[:, 1].mean() + 0.3 * iod
        mask[int(y0):int(y1), int(lm[0, 0]):int(lm[16, 0])] = 1
    else:  # nose-and-mouth box
        x0, x1 = lm[48, 0] - 0.2 * iod, lm[54, 0] + 0.2 * iod
        y0, y1 = lm[29, 1], lm[57, 1] + 0.15 * iod
        mask[int(y0):int(y1), int(x0):int(x1)] = 1
    return _blend(s.image, pasted, mask)


def extra_feature(s: Sample, rng: np.random.Generator, others: list[Sample]) -> np.ndarray:
    """A doubled nose (shifted copy at half alpha) or a copied eye or mouth where none belongs."""
    lm, (eyes, iod) = s.landmarks, _iod(s.landmarks)
    variant = rng.integers(3)
    if variant == 0:  # doubled nose
        centre = lm[27:36].mean(0)
        dx, dy = rng.choice([-1, 1]) * rng.uniform(6, 12), rng.uniform(-4, 4)
        alpha = rng.uniform(0.4, 0.6) * _soft_ellipse(s.image.shape[:2], centre, (0.3 * iod, 0.5 * iod), 3)
        return _blend(s.image, _shifted(s.image, dx, dy), alpha)
    if variant == 1:  # an eye copied onto the forehead or a cheek
        src = eyes[rng.integers(2)]
        dst = (np.array([eyes[:, 0].mean(), eyes[:, 1].mean() - 0.6 * iod]) if rng.random() < 0.5
               else np.array([src[0], src[1] + 0.6 * iod]))
        axes = (0.32 * iod, 0.2 * iod)
    else:  # the mouth copied onto the chin or forehead
        src = lm[48:60].mean(0)
        dst = (np.array([src[0], src[1] + 0.45 * iod]) if rng.random() < 0.5
               else np.array([eyes[:, 0].mean(), eyes[:, 1].mean() - 0.65 * iod]))
        axes = (0.5 * np.ptp(lm[48:60, 0]) + 0.05 * iod, 0.5 * np.ptp(lm[48:60, 1]) + 0.05 * iod)
    moved = _shifted(s.image, *(dst - src))
    alpha = rng.uniform(0.7, 1.0) * _soft_ellipse(s.image.shape[:2], dst, axes, 2)
    return _blend(s.image, moved, alpha)


def colour_patch(s: Sample, rng: np.random.Generator, others: list[Sample]) -> np.ndarray:
    """A feathered blob of wrong colour (a hue shift of 25-50 RGB levels) on a cheek, the forehead, nose or chin."""
    lm, (eyes, iod) = s.landmarks, _iod(s.landmarks)
    spots = [np.array([eyes[0, 0], (eyes[0, 1] + lm[48, 1]) / 2]),
             np.array([eyes[1, 0], (eyes[1, 1] + lm[54, 1]) / 2]),
             np.array([eyes[:, 0].mean(), eyes[:, 1].mean() - 0.55 * iod]),
             lm[30].astype(np.float64), np.array([lm[8, 0], (lm[57, 1] + lm[8, 1]) / 2])]
    centre = spots[int(rng.integers(len(spots)))] + rng.uniform(-3, 3, 2)
    r = rng.uniform(0.18, 0.32) * iod
    mask = _soft_ellipse(s.image.shape[:2], centre, (r, r * rng.uniform(0.6, 1.0)), 2.5)
    hue = rng.uniform(0, 2 * np.pi)  # a colour, not a brightness change: orthogonal to grey
    tint = np.cos(hue) * np.array([2, -1, -1]) / np.sqrt(6) + np.sin(hue) * np.array([0, 1, -1]) / np.sqrt(2)
    tint = tint * rng.uniform(25, 50)
    out = s.image.astype(np.float32) + mask[..., None] * tint
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


DEFECTS: dict[str, Callable[[Sample, np.random.Generator, list[Sample]], np.ndarray]] = {
    "doubled_eyes": doubled_eyes,
    "ghost_glasses": ghost_glasses,
    "melted_mouth": melted_mouth,
    "seam": seam,
    "extra_feature": extra_feature,
    "colour_patch": colour_patch,
}


def broken_set(real: list[Sample], seed: int = 0) -> list[Sample]:
    """Every defect applied once to every real crop (donors for seams: other people only)."""
    out = []
    for d, (name, op) in enumerate(DEFECTS.items()):
        for i, s in enumerate(real):
            rng = np.random.default_rng([seed, d, i])
            others = [o for o in real if o.person != s.person]
            out.append(replace(s, kind=name, image=op(s, rng, others)))
    return out


def backdrop_set(real: list[Sample], seed: int = 0) -> list[Sample]:
    """Each crop on its own plain grey backdrop (``grey_backdrop``)."""
    return [grey_backdrop(s, np.random.default_rng([seed, 99, i])) for i, s in enumerate(real)]


# --------------------------------------------------------------------------- units (no photos needed)


def _texture(seed: int, size: int = 40) -> np.ndarray:
    """A smooth random texture ``[size, size]`` (float32, 0-100) standing in for a feature patch."""
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.uniform(0, 100, (size, size)).astype(np.float32), (0, 0), 1.2)


def test_thresholds_name_the_bad_value():
    # why: a NaN limit would silently pass everything (every comparison with NaN is False)
    with pytest.raises(ValueError, match="max_seam"):
        RealismThresholds(max_seam=float("nan")).check()
    with pytest.raises(ValueError, match="min_sharpness"):
        RealismThresholds(min_sharpness=9.0, max_sharpness=3.0).check()
    with pytest.raises(ValueError, match="max_eye_rim"):
        RealismGate(RealismThresholds(max_eye_rim=float("inf")))


def test_every_threshold_limits_a_named_score():
    # why: a field whose name does not start with max_/min_ would never be applied
    assert set(LIMITS) == {f for f in RealismThresholds.__dataclass_fields__}
    assert {kind for kind, _ in LIMITS.values()} == {"max", "min"}
    assert LIMITS["max_eye_echo"] == ("max", "eye_echo")


def test_blank_image_is_rejected_with_the_reason():
    # why: no face is the first thing the gate must refuse, and say so
    verdict = RealismGate().judge(np.full((256, 256, 3), 128, np.uint8))
    assert not verdict.passed
    assert verdict.reasons == ("faces: 0 faces found; exactly one is required",)


@pytest.mark.parametrize("image, words", [
    (np.zeros((256, 256, 3), np.float32), "uint8"),
    (np.zeros((256, 200, 3), np.uint8), "200x256 px"),
    (np.zeros((64, 64, 3), np.uint8), "at least 128 px"),
    ("not an image", "uint8"),
])
def test_bad_input_is_a_reject_not_an_exception(image, words):
    # why: the gate fails closed; a caller's mistake must not let a candidate through or crash the run
    verdict = RealismGate().judge(image)
    assert not verdict.passed and words in verdict.reasons[0]


def test_an_internal_error_is_a_reject(monkeypatch):
    # why: an exception inside any criterion must reject (fail closed) and name what broke
    def broken(*_args):
        raise RuntimeError("cepstrum exploded")

    monkeypatch.setattr(realism, "echo_scores", broken)
    monkeypatch.setattr(realism, "detection_scores", lambda image, expected: (
        realism.face_frame(_canonical_landmarks(), (60, 60, 200, 220)), {"faces": 1.0}))
    verdict = RealismGate().judge(np.full((256, 256, 3), 128, np.uint8))
    assert not verdict.passed
    assert verdict.reasons == ("error: RuntimeError: cepstrum exploded",)


def _canonical_landmarks() -> np.ndarray:
    """A plausible dlib-68 shape ``[68, 2]`` in the 256 px canonical frame (a mean face)."""
    from personc_assets.core.faces.align import CANONICAL_TEMPLATE

    t = CANONICAL_TEMPLATE * 256  # right eye, left eye, nose tip, mouth corners
    lm = np.zeros((68, 2), np.float32)
    jaw_t = np.linspace(np.pi, 0, 17)
    lm[0:17] = np.stack([128 + 62 * np.cos(jaw_t), 118 + 85 * np.sin(jaw_t)], 1)
    lm[17:22] = np.stack([np.linspace(72, 118, 5), np.full(5, 92.0)], 1)
    lm[22:27] = np.stack([np.linspace(138, 184, 5), np.full(5, 92.0)], 1)
    lm[27:31] = np.stack([np.full(4, 128.0), np.linspace(110, t[2, 1], 4)], 1)
    lm[31:36] = np.stack([np.linspace(116, 140, 5), np.full(5, t[2, 1] + 6)], 1)
    for k, eye in ((36, t[0]), (42, t[1])):
        ang = np.linspace(np.pi, -np.pi, 6, endpoint=False)
        lm[k:k + 6] = eye + np.stack([14 * np.cos(ang), 5 * np.sin(ang)], 1)
    ang = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    mouth_c = (t[3] + t[4]) / 2
    lm[48:60] = mouth_c + np.stack([(t[4, 0] - t[3, 0]) / 2 * np.cos(ang), 9 * np.sin(ang)], 1)
    lm[60:68] = mouth_c + np.stack([14 * np.cos(ang[::1][:8]), 2 * np.sin(ang[:8])], 1)
    return lm


def test_judge_many_pairs_one_shape_with_each_image():
    # why: a length mismatch would judge candidates against another candidate's shape
    gate = RealismGate()
    blank = np.full((256, 256, 3), 128, np.uint8)
    with pytest.raises(ValueError, match="one \\(or None\\) per image"):
        gate.judge_many([blank, blank], [None])
    verdicts = gate.judge_many([blank, blank], [None, _canonical_landmarks()])
    assert [v.passed for v in verdicts] == [False, False]


def test_cepstral_echo_finds_a_doubled_patch():
    # why: the doubled-eye criterion rests on this: a patch overlaid on itself shifted 3-8 px echoes
    whole = (slice(0, 40), slice(0, 40))
    for shift in (3, 5, 8):
        plain = _texture(shift)
        doubled = 0.5 * plain + 0.5 * np.roll(plain, (1, shift), axis=(0, 1))
        echoes = [echo_score(*gradients(x), *whole) for x in (plain, doubled)]
        assert echoes[1] > echoes[0] + 3.0, (shift, echoes)
        assert echo_peak(power_cepstrum(doubled)) > echo_peak(power_cepstrum(plain)), shift


def _skin_face(seed: int = 0) -> tuple[np.ndarray, realism.FaceFrame, realism.Regions]:
    """Smooth skin in Lab ``[256, 256, 3]`` (lit from one side, faint noise), the mean face's frame and regions."""
    lm = _canonical_landmarks()
    frame = face_frame(lm, (60, 60, 200, 220))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    lab = np.zeros((256, 256, 3), np.float32)
    lab[..., 0] = 65 + 10 * (xx / 256 - 0.5) - 8 * (yy / 256 - 0.5)
    lab[..., 1], lab[..., 2] = 14.0, 18.0
    lab += cv2.GaussianBlur(rng.normal(0, 2, (256, 256, 3)).astype(np.float32), (0, 0), 1.0)
    return lab, frame, face_regions(frame, (256, 256))


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB) * 255 + 0.5, 0, 255).astype(np.uint8)


def _disc(centre: tuple[int, int], radius: int = 12) -> np.ndarray:
    mask = np.zeros((256, 256), np.float32)
    cv2.circle(mask, centre, radius, 1.0, -1)
    return cv2.GaussianBlur(mask, (0, 0), 2.5)


def test_eye_echo_sees_a_doubling_carried_by_colour():
    # why: an iris against the sclera is a colour edge as much as a lightness edge; the eye echo
    # reads chroma too, so a doubled eye whose lightness barely changes is still caught
    lab, frame, _ = _skin_face()
    rows, cols = realism.eye_boxes(frame, (256, 256))[0]
    h, w = rows.stop - rows.start, cols.stop - cols.start
    iris = cv2.resize(_texture(3), (w, h)) - 50.0   # a colour texture round the eye, L* untouched
    doubled = 0.5 * iris + 0.5 * np.roll(iris, (1, 5), axis=(0, 1))
    echoes = []
    for texture in (iris, doubled):
        out = lab.copy()
        out[rows, cols, 1] += 0.4 * texture
        out[rows, cols, 2] += 0.4 * texture
        echoes.append(realism.echo_scores(planes(_lab_to_rgb(out)), frame)["eye_echo"])
    assert echoes[1] > echoes[0] + 3.0, echoes


def test_colour_blob_sees_a_patch_that_lightness_and_the_other_half_do_not_explain():
    # why: the patches colour_patch misses are skin-hued (more or less saturated) at unchanged lightness;
    # shadows change lightness with chroma, and make-up or light on both cheeks is not a patch
    lab, frame, regions = _skin_face()
    lm = frame.landmarks
    cheek = (int(frame.eyes[0][0]), int((frame.eyes[0][1] + lm[48, 1]) / 2))
    mirror = (int(round(2 * lm[realism.MIDLINE_68, 0].mean() - cheek[0])), cheek[1])
    nose = (int(lm[30, 0]), int(lm[30, 1]))
    along = np.array([14.0, 18.0]) / np.hypot(14.0, 18.0)  # the skin's own hue

    def tinted(mask: np.ndarray) -> np.ndarray:
        out = lab.copy()
        out[..., 1:] += 12.0 * mask[..., None] * along
        return _lab_to_rgb(out)

    def blob(image: np.ndarray) -> float:
        return colour_blob(planes(image), frame, regions)

    shadow = _lab_to_rgb(lab).astype(np.float32) * (1 - 0.25 * _disc(cheek)[..., None])
    plain, patch = blob(_lab_to_rgb(lab)), blob(tinted(_disc(cheek)))
    assert plain < 1.0 and patch > 6.0, (plain, patch)
    assert blob(tinted(_disc(nose))) > 6.0                       # on the midline, no mirror image to excuse it
    assert blob(tinted(_disc(cheek) + _disc(mirror))) < 0.3 * patch  # the same on both cheeks
    assert blob(np.clip(shadow + 0.5, 0, 255).astype(np.uint8)) < 0.3 * patch


def test_ring_ridge_sees_a_faint_ring_and_not_a_plain_eye():
    # why: the ghosted-rim criterion must respond to a thin ring at 30% contrast, not to smooth skin or a dot
    face = np.full((128, 128), 60.0, np.float32)
    cv2.circle(face, (64, 64), 4, 20.0, -1)  # a pupil
    ringed = face.copy()
    cv2.ellipse(ringed, (64, 64), (26, 16), 0, 0, 360, 60.0 - 0.3 * 50, 2, cv2.LINE_AA)
    iod = 56.0
    assert ring_ridge(face, np.array([64.0, 64.0]), iod) < 0.5
    assert ring_ridge(ringed, np.array([64.0, 64.0]), iod) > 4.0


def test_limits_from_scores_let_every_calibration_face_pass():
    # why: calibrate's contract is that its own real faces pass, with headroom beyond the extremes
    rng = np.random.default_rng(0)
    scores = [{score: float(rng.uniform(1, 2)) for _, score in LIMITS.values()} for _ in range(20)]
    th = limits_from_scores(scores, margin=0.25)
    assert all(not realism.failed_limits(s, th) for s in scores)
    seam = np.array([s["seam"] for s in scores])
    assert th.max_seam == pytest.approx(seam.max() + 0.25 * (seam.max() - np.median(seam)))
    with pytest.raises(ValueError, match="at least one real face"):
        limits_from_scores([])
    with pytest.raises(ValueError, match="margin"):
        limits_from_scores(scores, margin=-1.0)


def test_calibrate_names_a_face_it_cannot_measure():
    # why: a calibration set with a non-face would silently loosen nothing and hide the mistake
    with pytest.raises(ValueError, match="real image 0 cannot be measured"):
        calibrate([np.full((256, 256, 3), 128, np.uint8)])


# --------------------------------------------------------------------------- labelled sets (../shared/faces)

#: Rejection floors per defect, a little under the rates measured when the defaults were set
#: (docs/realism_gate.md): a drop below them is a regression of the criterion that catches it.
DEFECT_FLOORS = {
    "doubled_eyes": 0.90,
    "ghost_glasses": 0.88,
    "melted_mouth": 0.95,
    "seam": 0.95,
    "extra_feature": 0.90,
    "colour_patch": 0.92,
}
#: The criterion that should catch most of each defect (its reason names it).
DEFECT_CRITERIA = {
    "doubled_eyes": {"eye_echo"},
    "ghost_glasses": {"eye_rim"},
    "melted_mouth": {"mouth_detail", "mouth_contrast", "mouth_echo", "detail_ratio"},
    "seam": {"seam", "colour_patch", "lr_colour", "landmark_error"},
    "extra_feature": {"feature_copy", "nose_echo"},
    "colour_patch": {"colour_patch", "colour_blob", "lr_colour"},
}


@dataclass(frozen=True)
class Judged:
    sample: Sample
    verdict: RealismVerdict
    cpu_s: float


def judge_all(gate: RealismGate, samples: list[Sample]) -> list[Judged]:
    """Every sample judged against its true landmarks, with the CPU time it took."""
    out = []
    for s in samples:
        t0 = time.process_time()
        verdict = gate.judge(s.image, s.landmarks if s.landmarks.any() else None)
        out.append(Judged(s, verdict, time.process_time() - t0))
    return out


@pytest.fixture(scope="module")
def judged(shared_faces) -> dict[str, list[Judged]]:
    """REAL, REAL on a backdrop, faces from group photos, and each defect, judged by the default gate."""
    real = source_crops(shared_faces)
    groups = group_crops(shared_faces)
    gate = RealismGate()
    gate.judge(real[0].image)  # load the dlib models outside the timings
    by_kind: dict[str, list[Judged]] = {}
    samples = real + backdrop_set(real) + groups + broken_set(real)
    for j in judge_all(gate, samples):
        by_kind.setdefault(j.sample.kind, []).append(j)
    if os.environ.get("PERSONC_REALISM_SHEET"):
        by_kind["todays_renders"] = judge_all(gate, todays_renders(shared_faces))
        write_contact_sheet(by_kind, ROOT / "docs" / "realism_contact_sheet.png")
    for kind, items in by_kind.items():
        reasons = collections.Counter(r.split(":")[0] for j in items for r in j.verdict.reasons)
        log.info("%-15s pass %3d/%3d  CPU median %.0f ms  reasons %s", kind, sum(j.verdict.passed for j in items),
                 len(items), 1000 * np.median([j.cpu_s for j in items]), dict(reasons.most_common()))
    return by_kind


def todays_renders(faces_dir: Path, count: int = 24) -> list[Sample]:
    """Candidates of the embedded morphable backbone as it stands, mixed from the single-face photos.

    Only for the contact sheet (opt-in): the backbone is being rewritten, so
    its renders are shown, not labelled. Empty, with a log line, when the
    backbone cannot render.
    """
    try:
        from personc_assets.core.backbones import BACKBONES
        from personc_assets.core.faces.ingest import ingest_file
        from personc_assets.core.recipes import describe_donors, mix_factors, sample_recipes

        faces = [ingest_file(p, "A" if int(p.parent.name[2:]) % 2 else "B", p.parent.name)
                 for p in sorted(faces_dir.glob("id*/*_0*.jpg"))]
        backbone = BACKBONES.create("morphable")
        backbone.fit(faces)
        factors = {f.content_hash: backbone.decompose(p.latent) for f, p in zip(faces, backbone.project(faces))}
        recipes = sample_recipes(describe_donors(faces, factors), backbone.factor_names, count, seed=0)
        images = backbone.synthesize([backbone.compose(mix_factors(r, factors, backbone.population_mean()))
                                      for r in recipes])
    except Exception as exc:  # the sheet is a report; a backbone mid-rewrite must not stop it
        log.warning("no renders of today's backbone for the contact sheet: %s", exc)
        return []
    blank = np.zeros((68, 2), np.float32)
    return [Sample(f"render_{k}", f"render_{k}", "todays_renders", img, blank) for k, img in enumerate(images)]


def pass_rate(items: list[Judged]) -> float:
    return sum(j.verdict.passed for j in items) / len(items)


def _failures(items: list[Judged]) -> list[str]:
    return [f"{j.sample.name}: {'; '.join(j.verdict.reasons)}" for j in items if not j.verdict.passed]


@pytest.mark.shared_faces
@pytest.mark.parametrize("kind", ["real", "backdrop"])
def test_real_faces_pass(judged, kind):
    # why: a gate that rejects real photographs (or a face on a plain backdrop, as new renders are) is wrong
    items = judged[kind]
    assert len(items) >= 30, f"only {len(items)} {kind} faces"
    assert pass_rate(items) >= 0.99, _failures(items)


@pytest.mark.shared_faces
@pytest.mark.parametrize("defect", list(DEFECTS))
def test_broken_renders_are_rejected(judged, defect):
    # why: each of today's failure modes must be caught at the rate measured when the defaults were set
    items = judged[defect]
    rejected = 1 - pass_rate(items)
    missed = [j.sample.name for j in items if j.verdict.passed]
    assert rejected >= DEFECT_FLOORS[defect], f"{defect}: {rejected:.0%} rejected; missed {missed}"


@pytest.mark.shared_faces
def test_rejections_name_the_criterion_made_for_the_defect(judged):
    # why: a defect rejected for an unrelated reason is luck, not a criterion that works
    for defect, expected in DEFECT_CRITERIA.items():
        rejected = [j for j in judged[defect] if not j.verdict.passed]
        named = [j for j in rejected if {r.split(":")[0] for r in j.verdict.reasons} & expected]
        assert len(named) >= 0.9 * len(rejected), (defect, [j.verdict.reasons for j in rejected])


@pytest.mark.shared_faces
def test_overall_rejection_of_broken_renders(judged):
    # why: the gate's headline figure; measured 96.4% when the defaults were set (docs/realism_gate.md)
    broken = [j for d in DEFECTS for j in judged[d]]
    assert 1 - pass_rate(broken) >= 0.94


@pytest.mark.shared_faces
def test_ninety_percent_of_broken_renders_rejected(judged):
    # why: issue 14's requirement for the realism gate: at least 90% of broken renders rejected
    broken = [j for d in DEFECTS for j in judged[d]]
    assert 1 - pass_rate(broken) >= 0.90, f"{1 - pass_rate(broken):.1%} of {len(broken)} broken renders rejected"


@pytest.mark.shared_faces
def test_defaults_are_what_calibration_on_real_faces_gives(judged):
    # why: the defaults must stay traceable to data; a changed measurement must come with new defaults
    scores = [j.verdict.scores for kind in ("real", "backdrop") for j in judged[kind]]
    fitted = limits_from_scores(scores)
    for name in LIMITS:
        if name == "max_landmark_error":  # set by hand: real crops re-fit too well to stand in for renders
            continue
        assert getattr(DEFAULT_THRESHOLDS, name) == pytest.approx(getattr(fitted, name), rel=0.02), name


@pytest.mark.shared_faces
def test_thresholds_hold_for_people_left_out_of_calibration(judged):
    # why: defaults fitted to these 7 people must not only fit them; calibrate without each person, judge them
    items = judged["real"] + judged["backdrop"]
    passed = 0
    for person in sorted({j.sample.person for j in items}):
        fitted = limits_from_scores([j.verdict.scores for j in items if j.sample.person != person])
        fitted = replace(fitted, max_landmark_error=DEFAULT_THRESHOLDS.max_landmark_error)
        passed += sum(not realism.failed_limits(j.verdict.scores, fitted)
                      for j in items if j.sample.person == person)
    assert passed / len(items) >= 0.9


@pytest.mark.shared_faces
def test_gate_costs_under_100_ms_per_face(judged):
    # why: the gate runs on every attempt of every slot; the budget is 100 ms per 256 px image
    times = [j.cpu_s for kind in judged for j in judged[kind]]
    assert float(np.median(times)) < 0.100, f"median {np.median(times) * 1000:.0f} ms CPU"


# --------------------------------------------------------------------------- contact sheet


def write_contact_sheet(by_kind: dict[str, list[Judged]], path: Path, thumb: int = 96, per_row: int = 8) -> None:
    """A grid: one row per set, up to half of it the surprises (rejected real faces, passed defects).

    Each thumbnail is captioned PASS or the first failed criterion.
    """
    from PIL import Image, ImageDraw

    caption = 13
    rows = []
    for kind, items in by_kind.items():
        expect_pass = kind in ("real", "backdrop", "group", "todays_renders")
        first = [j for j in items if j.verdict.passed != expect_pass]  # the surprises
        rest = [j for j in items if j.verdict.passed == expect_pass]
        shown = first[:per_row // 2] + rest[:per_row - min(len(first), per_row // 2)]
        items = (shown + first[per_row // 2:])[:per_row]
        row = Image.new("RGB", (120 + per_row * thumb, thumb + caption), "white")
        draw = ImageDraw.Draw(row)
        draw.text((4, thumb // 2 - 6), kind, fill="black")
        draw.text((4, thumb // 2 + 6), f"pass {pass_rate(by_kind[kind]):.0%}", fill="black")
        for k, j in enumerate(items):
            x = 120 + k * thumb
            row.paste(Image.fromarray(j.sample.image).resize((thumb, thumb), Image.BILINEAR), (x, 0))
            text = "PASS" if j.verdict.passed else j.verdict.reasons[0].split(":")[0]
            draw.text((x + 2, thumb), text[:16], fill="darkgreen" if j.verdict.passed else "darkred")
        rows.append(row)
    sheet = Image.new("RGB", (rows[0].width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    sheet.quantize(256).save(path, optimize=True)
    log.info("contact sheet written to %s", path)

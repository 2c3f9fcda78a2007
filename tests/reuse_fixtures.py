"""Labelled photos and deterministic edited copies for the photo-reuse check.

Shared by ``tests/test_reuse.py`` and ``benchmarks/bench_reuse.py``. Every
photo of ``../shared/faces`` is loaded upright with its 256 px aligned face
crop and its face box; ``edited_copies`` makes the copies the reuse check must
reject (face swapped or blurred, recoloured, mirrored, cropped, JPEG 40,
half size), all deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from personc_assets.core.faces.align import ALIGNED_SIZE, align_face
from personc_assets.core.faces.detect import detect_faces
from personc_assets.core.faces.loading import decode_image

EDIT_MAX_SIDE = 1024  # photos are shrunk to this before they are edited

#: The one pair of different files in ../shared/faces that IS a reuse (README).
MIRRORED_PAIR = frozenset({"id01_08", "id01_mirrored"})


@dataclass(frozen=True)
class LabelledPhoto:
    """One photo: ``photo`` ``[H, W, 3]``, its aligned ``crop`` ``[256, 256, 3]`` and face ``box``."""

    name: str  # file stem, unique across the folder
    person: str  # idNN folder, or "_multi/<stem>"
    photo: np.ndarray
    crop: np.ndarray
    box: tuple[int, int, int, int]  # left, top, right, bottom in ``photo``


@lru_cache(maxsize=2)
def labelled_photos(folder: Path) -> tuple[LabelledPhoto, ...]:
    """Every photo under ``folder`` (idNN/ and _multi/), sorted by name; the best face is cropped."""
    photos = []
    for path in sorted(folder.glob("*/*.jpg")):
        pixels = decode_image(path).pixels
        faces = detect_faces(pixels) or detect_faces(pixels, upsample=1)
        if not faces:
            raise AssertionError(f"no face found in {path}: the labelled set changed")
        person = path.parent.name if path.parent.name != "_multi" else f"_multi/{path.stem}"
        crop = align_face(pixels, faces[0].landmarks)[0]
        photos.append(LabelledPhoto(path.stem, person, pixels, crop, faces[0].box))
    return tuple(sorted(photos, key=lambda p: p.name))


def crop_face_box(size: int = ALIGNED_SIZE) -> tuple[int, int, int, int]:
    """Where the face lies in the canonical aligned crop (brows to chin)."""
    return int(0.28 * size), int(0.28 * size), int(0.72 * size), int(0.80 * size)


def face_mask(shape: tuple[int, ...], box: tuple[int, int, int, int]) -> np.ndarray:
    """A soft ellipse ``[H, W, 1]`` in [0, 1] over the face in ``box``, forehead to chin."""
    x0, y0, x1, y1 = box
    centre = (int((x0 + x1) / 2), int((y0 + y1) / 2 - 0.05 * (y1 - y0)))
    axes = (int(0.62 * (x1 - x0)), int(0.78 * (y1 - y0)))
    mask = np.zeros(shape[:2], np.float32)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1.0, -1)
    k = int(0.15 * (x1 - x0)) | 1
    return cv2.GaussianBlur(mask, (k, k), 0)[..., None]


def _blend(image: np.ndarray, other: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (image * (1 - mask) + other * mask).round().astype(np.uint8)


def swap_face(image: np.ndarray, box: tuple[int, int, int, int], donor_crop: np.ndarray) -> np.ndarray:
    """``image`` with the face in ``box`` replaced by the donor crop's face, pasted with a soft mask."""
    dx0, dy0, dx1, dy1 = crop_face_box(donor_crop.shape[0])
    x0, y0, x1, y1 = box
    warp = cv2.getAffineTransform(np.float32([[dx0, dy0], [dx1, dy0], [dx0, dy1]]),
                                  np.float32([[x0, y0], [x1, y0], [x0, y1]]))
    pasted = cv2.warpAffine(donor_crop, warp, (image.shape[1], image.shape[0]),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return _blend(image, pasted, face_mask(image.shape, box))


def blur_face(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``image`` with the face in ``box`` Gaussian-blurred beyond recognition (sigma = box width / 6).

    Blurred at a reduced size (sigma 4 px there) and scaled back: the same look, without a
    kernel hundreds of pixels wide.
    """
    h, w = image.shape[:2]
    shrink = max(1.0, (box[2] - box[0]) / 24)
    small = cv2.resize(image, (max(1, round(w / shrink)), max(1, round(h / shrink))),
                       interpolation=cv2.INTER_AREA)
    blurred = cv2.resize(cv2.GaussianBlur(small, (0, 0), (box[2] - box[0]) / 6 / shrink), (w, h),
                         interpolation=cv2.INTER_LINEAR)
    return _blend(image, blurred, face_mask(image.shape, box))


def recolour(image: np.ndarray) -> np.ndarray:
    """Hue turned by 120 degrees, saturation flattened."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + 60) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * 0.7 + 30, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def mirror(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, ::-1])


def crop_centre(image: np.ndarray, keep: float = 0.7) -> np.ndarray:
    """The central ``keep`` of each side, scaled back up to the original size."""
    h, w = image.shape[:2]
    ch, cw = int(h * keep), int(w * keep)
    y, x = (h - ch) // 2, (w - cw) // 2
    return cv2.resize(image[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_CUBIC)


def jpeg(image: np.ndarray, quality: int = 40) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def half_size(image: np.ndarray) -> np.ndarray:
    return cv2.resize(image, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)


Edit = Callable[[np.ndarray, tuple[int, int, int, int], np.ndarray], np.ndarray]

#: Each edit takes (image, face box, donor crop); only the face edits use box and donor.
EDITS: dict[str, Edit] = {
    "face_swapped": swap_face,
    "face_blurred": lambda im, box, donor: blur_face(im, box),
    "recoloured": lambda im, box, donor: recolour(im),
    "mirrored": lambda im, box, donor: mirror(im),
    "cropped_70": lambda im, box, donor: crop_centre(im),
    "jpeg_40": lambda im, box, donor: jpeg(im),
    "half_size": lambda im, box, donor: half_size(im),
}


def donor_for(photos: tuple[LabelledPhoto, ...], i: int) -> LabelledPhoto:
    """A fixed donor of another person for photo ``i``: the first such photo 7 or more places on."""
    n = len(photos)
    return next(photos[(i + k) % n] for k in range(7, 7 + n) if photos[(i + k) % n].person != photos[i].person)


def edited_copies(photos: tuple[LabelledPhoto, ...], i: int) -> list[tuple[str, np.ndarray]]:
    """Every edit of photo ``i`` and of its aligned crop, as (label, image).

    Photos are edited at ``EDIT_MAX_SIDE`` (a rescale before the edit, as a
    copy posted online would be): editing 12-megapixel originals costs
    seconds each and changes nothing the check sees at ``MAX_SIDE``.
    """
    p, donor = photos[i], donor_for(photos, i).crop
    photo, box = shrunk(p.photo, p.box, EDIT_MAX_SIDE)
    out = []
    for name, edit in EDITS.items():
        out.append((f"{p.name} photo {name}", edit(photo, box, donor)))
        out.append((f"{p.name} crop {name}", edit(p.crop, crop_face_box(), donor)))
    return out


def shrunk(image: np.ndarray, box: tuple[int, int, int, int],
           max_side: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """``image`` with its longest side at most ``max_side``, and ``box`` scaled alike."""
    scale = max_side / max(image.shape[:2])
    if scale >= 1:
        return image, box
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    return small, tuple(int(v * scale) for v in box)


def synthetic_face(size: int = ALIGNED_SIZE) -> np.ndarray:
    """A plain face-like image ``[size, size, 3]``: blurred skin oval, dark eyes and mouth, grey backdrop."""
    image = np.full((size, size, 3), 128, np.uint8)
    s = size / 256
    cv2.ellipse(image, (int(128 * s), int(135 * s)), (int(62 * s), int(82 * s)), 0, 0, 360, (205, 160, 135), -1)
    for x in (104, 152):
        cv2.ellipse(image, (int(x * s), int(118 * s)), (int(11 * s), int(6 * s)), 0, 0, 360, (45, 35, 30), -1)
    cv2.ellipse(image, (int(128 * s), int(178 * s)), (int(20 * s), int(7 * s)), 0, 0, 360, (120, 50, 55), -1)
    return cv2.GaussianBlur(image, (0, 0), 4 * s)


def average_face(photos: tuple[LabelledPhoto, ...], n: int = 6) -> np.ndarray:
    """Mean ``[256, 256, 3]`` of the aligned crops of the first photo of ``n`` different people."""
    firsts: dict[str, np.ndarray] = {}
    for p in photos:
        if not p.person.startswith("_multi"):
            firsts.setdefault(p.person, p.crop)
    crops = list(firsts.values())[:n]
    assert len(crops) == n, f"need {n} people, found {len(crops)}"
    return np.mean(crops, axis=0).round().astype(np.uint8)

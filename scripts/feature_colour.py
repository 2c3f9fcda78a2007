"""Colour of brows and lips against the skin, for sets of face images.

For each image: dlib's 68 landmarks, then (CIE Lab, 0..255 scale)
- brows: the darker half of a band along each brow; its chroma over the cheeks'
  chroma (real brows: about 1; orange brows: well above) and how much darker it is;
- lips: the lips' redness (a*) over the cheeks' and how much darker they are.
Prints the median and range of each per set::

    python scripts/feature_colour.py "sources=../shared/faces/**/*.jpg" "releases=data/out/released/*.png"
"""

from __future__ import annotations

import argparse
import glob

import numpy as np


def _mask(shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
    import cv2

    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(polygon).astype(np.int32)], 1)
    return mask > 0


def feature_colour(image: np.ndarray, landmarks: np.ndarray) -> dict[str, float]:
    """Brow and lip colour of an RGB face ``[H, W, 3]`` with dlib-68 ``landmarks`` against its cheeks."""
    import cv2

    p = np.asarray(landmarks, np.float64)
    iod = float(np.hypot(*(p[42:48].mean(0) - p[36:42].mean(0))))
    lab = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2LAB).astype(np.float64)
    shape = image.shape[:2]
    cheeks = np.zeros(shape, np.uint8)
    for a, b in ((1, 31), (15, 35)):
        centre = np.round((p[a] + p[b]) / 2).astype(int)
        cv2.circle(cheeks, (int(centre[0]), int(centre[1])), max(2, int(0.12 * iod)), 1, -1)
    skin = lab[cheeks > 0].mean(0)
    brows = []
    for idx in (range(17, 22), range(22, 27)):
        edge = p[list(idx)]
        band = lab[_mask(shape, np.concatenate([edge + [0, -0.04 * iod], (edge + [0, 0.10 * iod])[::-1]]))]
        brows.append(band[band[:, 0] <= np.median(band[:, 0])].mean(0))
    brow = np.mean(brows, axis=0)
    lips = lab[_mask(shape, p[48:60]) & ~_mask(shape, p[60:68])].mean(0)

    def chroma(v: np.ndarray) -> float:
        return float(np.hypot(v[1] - 128.0, v[2] - 128.0))

    return {"brow_chroma_ratio": chroma(brow) / max(chroma(skin), 1e-6),
            "brow_darker": float(skin[0] - brow[0]),
            "lip_redness": float(lips[1] - skin[1]),
            "lip_darker": float(skin[0] - lips[0])}


def main() -> None:
    from PIL import Image, ImageOps

    from personc_assets.core.faces.detect import detect_faces

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sets", nargs="+", help="NAME=GLOB (recursive ** allowed)")
    args = parser.parse_args()
    for spec in args.sets:
        name, _, pattern = spec.partition("=")
        rows, missed = [], 0
        for path in sorted(glob.glob(pattern, recursive=True)):
            with Image.open(path) as img:
                image = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
            faces = detect_faces(image)
            if not faces:
                missed += 1
                continue
            rows.append(feature_colour(image, faces[0].landmarks))
        if not rows:
            print(f"{name}: no face found in {missed} images")
            continue
        cells = []
        for key in rows[0]:
            v = np.array([r[key] for r in rows])
            cells.append(f"{key} {np.median(v):.2f} [{v.min():.2f}, {v.max():.2f}]")
        print(f"{name} (n={len(rows)}, no face: {missed}): " + "; ".join(cells))


if __name__ == "__main__":
    main()

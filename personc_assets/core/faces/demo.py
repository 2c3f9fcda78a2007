"""Demo sources from sample photos that the installed packages ship.

The main photo is ``insightface/data/images/t1.jpg``, a group photo of six
people: each face is cut into its own photo (with a margin that keeps the
neighbours out). Six people are too few for the embedded backbone to make
five mutually distinct new faces (measured: two), so two single-portrait
samples of PersonC's own dependencies join them: scikit-image's
``astronaut.png`` (a dependency of insightface) and matplotlib's
``grace_hopper.jpg``. A sample whose package is missing is skipped with a
log line. The photos are split into group A and group B, alternating.
(insightface's other face sample, a 112 px grey crop, is too small, tight and
colourless to serve as a donor, so it is not used.)
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from ..atomic import atomic_save_png
from .detect import detect_faces
from .loading import decode_image

log = logging.getLogger(__name__)

MARGIN = 0.6  # extra context around each detector box, as a fraction of its size

#: Single-portrait samples: (output name, package, path inside the package).
PORTRAITS: tuple[tuple[str, str, str], ...] = (
    ("skimage_astronaut.png", "skimage", "data/astronaut.png"),
    ("matplotlib_grace_hopper.png", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


def package_file(package: str, relative: str) -> Path | None:
    """``relative`` inside the installed ``package`` (without importing it), or None."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    return path if path.is_file() else None


def insightface_images_dir() -> Path:
    path = package_file("insightface", "data/images/t1.jpg")
    if path is None:
        raise FileNotFoundError("insightface's sample photo data/images/t1.jpg not found; reinstall insightface")
    return path.parent


def _face_crops(pixels: np.ndarray) -> list[np.ndarray]:
    """Every detected face of ``pixels`` cut out with ``MARGIN``, left to right."""
    faces = sorted(detect_faces(pixels), key=lambda f: f.box[0])
    h, w = pixels.shape[:2]
    crops = []
    for face in faces:
        l, t, r, b = face.box
        mx, my = MARGIN * (r - l), MARGIN * (b - t)
        box = (max(0, int(l - mx)), max(0, int(t - 1.2 * my)), min(w, int(r + mx)), min(h, int(b + my)))
        crops.append(np.ascontiguousarray(pixels[box[1]:box[3], box[0]:box[2]]))
    return crops


def prepare_demo_sources(out_dir: Path) -> dict[str, Path]:
    """Write the demo photos to ``out_dir/A`` and ``out_dir/B``; return the folders.

    Idempotent: existing files are rewritten with identical content.
    """
    group_photo = decode_image(insightface_images_dir() / "t1.jpg").pixels
    named = [(f"t1_person{i + 1}.png", crop) for i, crop in enumerate(_face_crops(group_photo))]
    for name, package, relative in PORTRAITS:
        path = package_file(package, relative)
        if path is None:
            log.info("demo sources: %s not installed, %s skipped", package, relative)
            continue
        crops = _face_crops(decode_image(path).pixels)
        if len(crops) != 1:
            log.warning("demo sources: %s shows %d faces, not one; skipped", path, len(crops))
            continue
        named.append((name, crops[0]))
    folders = {"A": Path(out_dir) / "A", "B": Path(out_dir) / "B"}
    for i, (name, crop) in enumerate(named):
        atomic_save_png(folders["A" if i % 2 == 0 else "B"] / name, crop)
    log.info("demo sources: %d photos from installed packages' sample images in %s", len(named), out_dir)
    return folders

"""Demo sources from the sample photos that the ``insightface`` package ships.

``insightface/data/images/t1.jpg`` is a group photo of six people. Each face
is cut into its own photo (with a margin that keeps the neighbours out) and
the six photos are split into group A and group B, alternating left to right.
(The package's other sample, a 112 px grey crop of one face, is too small and
tight to serve as a morphing donor, so it is not used.)
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..atomic import atomic_save_png
from .detect import detect_faces
from .loading import decode_image

log = logging.getLogger(__name__)

MARGIN = 0.6  # extra context around each detector box, as a fraction of its size


def insightface_images_dir() -> Path:
    import insightface

    folder = Path(insightface.__file__).parent / "data" / "images"
    if not (folder / "t1.jpg").is_file():
        raise FileNotFoundError(f"insightface sample photos not found in {folder}; reinstall insightface")
    return folder


def prepare_demo_sources(out_dir: Path) -> dict[str, Path]:
    """Write the demo photos to ``out_dir/A`` and ``out_dir/B``; return the folders.

    Idempotent: existing files are rewritten with identical content.
    """
    images = insightface_images_dir()
    group_photo = decode_image(images / "t1.jpg").pixels
    faces = sorted(detect_faces(group_photo), key=lambda f: f.box[0])  # left to right
    crops: list[tuple[str, np.ndarray]] = []
    h, w = group_photo.shape[:2]
    for i, face in enumerate(faces):
        l, t, r, b = face.box
        mx, my = MARGIN * (r - l), MARGIN * (b - t)
        box = (max(0, int(l - mx)), max(0, int(t - 1.2 * my)), min(w, int(r + mx)), min(h, int(b + my)))
        crops.append((f"t1_person{i + 1}.png", group_photo[box[1]:box[3], box[0]:box[2]]))
    folders = {"A": Path(out_dir) / "A", "B": Path(out_dir) / "B"}
    for i, (name, crop) in enumerate(crops):
        atomic_save_png(folders["A" if i % 2 == 0 else "B"] / name, np.ascontiguousarray(crop))
    log.info("demo sources: %d photos from insightface's sample images in %s", len(crops), out_dir)
    return folders

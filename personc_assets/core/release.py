"""Released PNG files: marked as synthetic in their metadata, written atomically."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import numpy as np

from .faces.loading import pixel_hash


def release_id_for(candidate_id: str) -> str:
    return "pc-" + hashlib.sha256(candidate_id.encode()).hexdigest()[:12]


def write_release_png(path: Path, image: np.ndarray, release_id: str, extra: Mapping[str, str]) -> str:
    """Write a released face with PNG text metadata saying it is synthetic.

    Returns the sha256 of the image pixels (the release's content hash).
    """
    from PIL.PngImagePlugin import PngInfo

    from .atomic import atomic_save_png

    info = PngInfo()
    info.add_text("Synthetic", "true")
    info.add_text("Generator", "PersonC")
    info.add_text("PersonC-Release-Id", release_id)
    for key, value in extra.items():
        info.add_text(f"PersonC-{key}", str(value))
    atomic_save_png(Path(path), image, pnginfo=info)
    return pixel_hash(image)

"""Release ids: named by the pixels a release was drawn from.

The id is also the watermark's payload, and the guard judges the watermarked
pixels, so the id must not depend on anything but the face itself: an id
derived from the candidate id (which names the code version) gave every commit
other watermarks, other verdicts near tau and other retries for the same seed.
The same candidate image gets the same id in every run and every code version;
two different images get different ids.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .types import check_image


def release_id_for(image: np.ndarray) -> str:
    """``pc-`` and 12 hex digits of the sha256 of the unmarked candidate ``[H, W, 3]`` uint8 image."""
    pixels = np.ascontiguousarray(check_image(image, "candidate image"))
    h = hashlib.sha256(f"personc-release/{pixels.shape}/".encode())
    h.update(pixels.tobytes())
    return "pc-" + h.hexdigest()[:12]

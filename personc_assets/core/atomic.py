"""Atomic file writes: a temporary file in the same folder, then ``os.replace``.

A reader never sees a half-written file, and a crash leaves at most a stray
``.tmp`` file that is ignored.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with the permissions a plain ``open`` would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to ``path`` atomically (load with allow_pickle=False)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Load an ``.npz`` written by ``atomic_save_npz``; never unpickles."""
    with np.load(Path(path), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def atomic_save_png(path: Path, image: np.ndarray, pnginfo=None) -> None:
    """Write an RGB ``uint8 [H, W, 3]`` image as PNG atomically."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", pnginfo=pnginfo)
    atomic_write_bytes(path, buf.getvalue())

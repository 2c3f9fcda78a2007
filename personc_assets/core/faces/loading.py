"""Safe image decoding with specific, user-readable rejection reasons.

Every failure becomes an ``ImageRejected`` carrying a short machine code and a
sentence for the quarantine table; nothing here raises anything else for bad
input.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Refuse to decode images larger than this many pixels (decompression bombs,
#: absurd scans). 40 MP covers every camera photo we expect.
MAX_PIXELS = 40_000_000
#: Refuse files larger than this many bytes before opening them.
MAX_FILE_BYTES = 64 * 1024 * 1024

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO")


class ImageRejected(ValueError):
    """A photo that cannot be used, with a code for grouping and a reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image ``[H, W, 3]`` with facts about how it was decoded."""

    pixels: np.ndarray
    format: str
    original_mode: str
    exif_rotated: bool

    @property
    def content_hash(self) -> str:
        return pixel_hash(self.pixels)


def pixel_hash(pixels: np.ndarray) -> str:
    """sha256 of the decoded pixels and their shape (stable across re-encodes)."""
    h = hashlib.sha256()
    h.update(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def decode_image(path: Path, max_pixels: int = MAX_PIXELS) -> DecodedImage:
    """Decode ``path`` into an upright RGB ``uint8`` image or raise ImageRejected."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageRejected("unreadable", f"cannot read file: {exc.strerror or exc}") from None
    if size == 0:
        raise ImageRejected("empty_file", "file is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise ImageRejected("file_too_large", f"file is {size} bytes, limit {MAX_FILE_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt = img.format or "?"
                if fmt not in SUPPORTED_FORMATS:
                    raise ImageRejected("unsupported_format", f"{fmt} images are not supported")
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageRejected(
                        "image_too_large",
                        f"{w}x{h} = {w * h / 1e6:.1f} MP exceeds the {max_pixels / 1e6:.0f} MP limit",
                    )
                if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
                    raise ImageRejected("animated", f"animated {fmt} with {img.n_frames} frames")
                mode = img.mode
                if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    raise ImageRejected(
                        "unsupported_mode", f"{mode} ({'16-bit' if 'I' in mode else 'float'}) "
                        "images are not supported; save the photo as 8-bit RGB")
                if mode in ("L", "LA", "1"):
                    raise ImageRejected("grayscale", "grayscale photo: colour is needed for texture")
                img.load()  # forces full decode: truncated data raises here
                upright = ImageOps.exif_transpose(img)
                rotated = upright is not img and upright.size != img.size or _has_rotation(img)
                rgb = _to_rgb(upright)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("decompression_bomb", f"declared size is too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "the file is not a recognised image") from None
    except (OSError, SyntaxError, ValueError) as exc:
        msg = str(exc)
        if "truncated" in msg.lower() or "premature" in msg.lower():
            raise ImageRejected("truncated", f"image data is truncated ({msg})") from None
        raise ImageRejected("corrupt", f"image cannot be decoded ({msg})") from None
    return DecodedImage(np.ascontiguousarray(rgb), fmt, mode, rotated)


def _has_rotation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # a broken EXIF block is not a reason to reject
        return False


def _to_rgb(img: Image.Image) -> np.ndarray:
    """RGB pixels; transparency is composited over mid-grey, CMYK converted."""
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)

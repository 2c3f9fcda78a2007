"""Safe image decoding with specific, user-readable rejection reasons.

Every failure becomes an ``ImageRejected`` carrying a short machine code (the
keys of ``REJECTION_CODES``) and a sentence for the quarantine table; nothing
here raises anything else for bad input. The checks run cheapest first: the
file size, then the header (format, declared size, frames, pixel mode), and
only then the pixel data, so a decompression bomb or an absurdly large image
is refused before a single row of it is decoded.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Refuse to decode images larger than this many pixels (absurd scans, posters).
#: 40 MP covers every camera photo we expect; decoded it is 120 MB of RGB.
MAX_PIXELS = 40_000_000
#: Refuse files larger than this many bytes before opening them.
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Declared decoded bytes per file byte above which the file cannot hold the
#: image it declares: deflate (PNG) tops out near 1032:1, GIF's LZW near
#: 1400:1 and a flat baseline JPEG near 250:1 (camera photos: under 30:1), so
#: a higher ratio means a header that lies — a decompression bomb (or a file
#: cut short right after its header).
BOMB_RATIO = 2000

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO")

#: Every code ``decode_image`` can raise, with what the user should do.
REJECTION_CODES: dict[str, str] = {
    "unreadable": "the file cannot be read (permissions, I/O error)",
    "empty_file": "the file is empty",
    "file_too_large": f"the file is over {MAX_FILE_BYTES // 2**20} MiB",
    "not_an_image": "the file is not an image (e.g. text renamed to .jpg)",
    "unsupported_format": f"only {', '.join(SUPPORTED_FORMATS)} are read",
    "decompression_bomb": "the header declares far more pixels than the file can hold",
    "image_too_large": f"more than {MAX_PIXELS / 1e6:.0f} MP; downscale the photo",
    "animated": "an animation, not a photo; export one frame",
    "bit_depth_16": "16 bits per channel; export the photo as 8-bit sRGB",
    "transparency": "transparent pixels; flatten the photo onto its background",
    "unsupported_mode": "a pixel format that is not a photo (float, YCbCr, Lab, ...)",
    "truncated": "the image data ends early (interrupted download or copy)",
    "corrupt": "the image data cannot be decoded",
}


#: What makes a decodable photo unfit as a donor (its colours cannot be mixed into a new
#: face); such a photo still protects its person: it is embedded and indexed by the guard.
DONOR_CODES: dict[str, str] = {
    "grayscale": "no colour; skin texture needs a colour photo",
    "cmyk": "CMYK (print) colour, converted without its colour profile; skin tones are unreliable",
}


class ImageRejected(ValueError):
    """A photo that cannot be used, with a code for grouping and a reason."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """An upright RGB image ``[H, W, 3]`` with facts about how it was decoded.

    ``donor_problems`` lists ``(code, reason)`` pairs (codes of ``DONOR_CODES``)
    that keep the photo from being a donor; the pixels are still fit to embed.
    """

    pixels: np.ndarray
    format: str
    original_mode: str
    exif_rotated: bool
    donor_problems: tuple[tuple[str, str], ...] = ()

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
    path = Path(path)
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
            # PIL warns from 89 MP; our own limits below decide, with a clearer reason
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                fmt = img.format or "?"
                if fmt not in SUPPORTED_FORMATS:
                    raise ImageRejected("unsupported_format", f"{fmt} images are not supported")
                _check_header(img, fmt, size, max_pixels)
                img.load()  # forces full decode: truncated data raises here
                _check_alpha(img)
                upright = ImageOps.exif_transpose(img)
                rotated = _has_rotation(img)
                rgb = np.asarray(upright.convert("RGB"), dtype=np.uint8)
                problems = donor_problems(img)
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", f"declared size is too large: {exc}") from None
    except UnidentifiedImageError:
        raise ImageRejected("not_an_image", "the file is not a recognised image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if isinstance(exc, EOFError) or any(w in msg.lower() for w in ("truncated", "premature", "eof")):
            raise ImageRejected("truncated", f"image data is truncated ({msg})") from None
        raise ImageRejected("corrupt", f"image cannot be decoded ({msg})") from None
    return DecodedImage(np.ascontiguousarray(rgb), fmt, img.mode, rotated, problems)


def _check_header(img: Image.Image, fmt: str, file_bytes: int, max_pixels: int) -> None:
    """Refuse on what the header declares, before any pixel data is decoded."""
    w, h = img.size
    bits = bits_per_sample(img)
    declared = w * h * len(img.getbands()) * bits // 8
    if declared / file_bytes > BOMB_RATIO:
        raise ImageRejected(
            "decompression_bomb",
            f"declares {w}x{h} ({declared / 2**20:.0f} MiB decoded) in a {file_bytes}-byte file, "
            f"a {declared / file_bytes:.0f}:1 ratio no real image reaches (limit {BOMB_RATIO}:1)")
    if w * h > max_pixels:
        raise ImageRejected("image_too_large",
                            f"{w}x{h} = {w * h / 1e6:.1f} MP exceeds the {max_pixels / 1e6:.0f} MP limit; "
                            "downscale the photo")
    if getattr(img, "is_animated", False) and getattr(img, "n_frames", 1) > 1:
        raise ImageRejected("animated", f"animated {fmt} with {img.n_frames} frames; export one frame as a photo")
    mode = img.mode
    if bits > 8 or mode.startswith("I;16"):
        raise ImageRejected("bit_depth_16", f"{bits}-bit {mode} image; PersonC reads 8-bit photos — "
                            "export it as 8-bit sRGB")
    if mode in ("I", "F"):
        raise ImageRejected("unsupported_mode", f"{mode} ({'32-bit integer' if mode == 'I' else 'float'}) "
                            "pixels are not a photo; save it as 8-bit RGB")
    if mode not in ("RGB", "RGBA", "P", "PA", "RGBX", "CMYK", "L", "LA", "1"):
        raise ImageRejected("unsupported_mode", f"pixel mode {mode} is not supported; save the photo as RGB")


def donor_problems(img: Image.Image) -> tuple[tuple[str, str], ...]:
    """``(code, reason)`` for each reason the decoded photo cannot be a donor (see ``DONOR_CODES``)."""
    if img.mode == "CMYK":
        return (("cmyk", "CMYK (print) colour: converting it without its colour profile shifts skin tones; "
                         "it protects its person but is no donor — export it as RGB (sRGB) to make it one"),)
    if img.mode in ("L", "LA", "1") or (img.mode == "P" and _palette_is_gray(img)):
        return (("grayscale", "grayscale photo: it protects its person but is no donor (colour is needed "
                              "for skin texture) — use a colour photo to make it one"),)
    return ()


def _check_alpha(img: Image.Image) -> None:
    """Transparency is fine when no pixel uses it; real transparency is refused.

    What lies behind transparent pixels is unknown, and whatever colour they
    were flattened onto would become part of the face's background factor.
    """
    palette = img.mode in ("P", "PA") and ("transparency" in img.info or img.mode == "PA")
    if not (palette or "A" in img.getbands()):
        return
    alpha = (img.convert("RGBA") if palette else img).getchannel("A")
    if alpha.getextrema()[0] < 255:
        seen = np.asarray(alpha) < 255
        kind = "palette image whose transparent colour" if palette else "alpha channel that"
        raise ImageRejected("transparency", f"{kind} makes {seen.mean():.0%} of the pixels transparent: what "
                            "lies behind them is unknown; flatten the photo onto its background as RGB")


def bits_per_sample(img: Image.Image) -> int:
    """Bits per channel as stored in the file (PIL silently reads 48-bit PNGs as 8-bit RGB)."""
    if img.mode.startswith("I;16"):
        return 16
    if img.mode == "1":
        return 1
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        rawmode = args if isinstance(args, str) else (args[0] if isinstance(args, tuple) and args
                                                      and isinstance(args[0], str) else "")
        if re.search(r";16[BLN]", rawmode):  # 16 bits per channel (BMP's packed "BGR;16" is not)
            return 16
        found = re.match(r"P;(1|2|4)$|1$", rawmode)  # packed palette or bilevel rows
        if found:
            return int(found.group(1) or 1)
    return 8


def _palette_is_gray(img: Image.Image) -> bool:
    try:
        pal = np.asarray(img.getpalette() or [], dtype=np.uint8).reshape(-1, 3)
    except ValueError:
        return False
    return len(pal) > 0 and bool(np.all(pal[:, 0] == pal[:, 1]) and np.all(pal[:, 1] == pal[:, 2]))


def _has_rotation(img: Image.Image) -> bool:
    try:
        return img.getexif().get(0x0112, 1) not in (1, None)
    except Exception:  # a broken EXIF block is not a reason to reject
        return False

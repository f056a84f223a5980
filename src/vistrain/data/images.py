"""Decoding one image file into an upright RGB picture, the same way everywhere.

Training, evaluation, predict and the scan all call :func:`load_rgb`, so a photo is seen
identically by every stage (orientation, colour mode, draft scale).
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own default (about 89 Mpx); larger files are treated as decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485

# HEIF "brands" (bytes 8-12 of the file): an iPhone's photos (heic), other HEIF stills (mif1, heix).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"msf1")


@functools.cache
def heif_support() -> bool:
    """Teach Pillow to read HEIC/HEIF, an iPhone's default photo format, through pi-heif (libheif,
    decode only; a dependency). Registered on first decode rather than at import, and only once.
    False when pi-heif is missing (a platform without its wheel): such files are then skipped with
    a reason that says what to install."""
    try:
        from pi_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def heif_reason(path: Path, data: bytes | None) -> str | None:
    """Why a file Pillow cannot identify is unreadable when its header says HEIC/HEIF; else None."""
    try:
        if data is not None:
            head = data[:12]
        else:
            with path.open("rb") as f:
                head = f.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        if heif_support():
            return "corrupt HEIC/HEIF photo (pi-heif cannot read it)"
        return "HEIC/HEIF photo, which needs pi-heif to read (pip install pi-heif)"
    return None


class ImageError(Exception):
    """A file that cannot be used as an image; the message names the file and the reason."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_rgb(path: Path | str, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and return ``path`` as an upright 8-bit RGB image.

    ``min_side``: the caller needs at least this many pixels on the shorter side, which lets
    JPEGs decode at 1/2, 1/4 or 1/8 scale (draft mode) -- several times faster on big photos.
    Raises :class:`ImageError` for empty, unreadable, truncated or oversized files.
    """
    return decode_with_header(path, min_side, max_pixels)[0]


def decode_with_header(
    path: Path | str, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, data: bytes | None = None
) -> tuple[Image.Image, dict]:
    """:func:`load_rgb`, plus the file's original format, mode and full-scale size.

    ``data``: the file's bytes when the caller has already read them (``path`` names it in errors).
    """
    path = Path(path)
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as exc:
        # Names from old Windows zips or cameras: the CSV and JSON files vistrain writes are UTF-8,
        # so such a file could be trained on but never named in them.
        raise ImageError(path, "file name is not valid UTF-8 (rename the file)") from exc
    try:
        size = len(data) if data is not None else path.stat().st_size
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    heif_support()
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between 1x and 2x its limit; we enforce our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data) if data is not None else path) as img:
                width, height = img.size
                header = {"format": img.format, "mode": img.mode, "width": width, "height": height}
                if width * height > max_pixels:
                    raise ImageError(
                        path,
                        f"decompression bomb: {width}x{height} = {width * height:,} pixels "
                        f"exceeds the limit of {max_pixels:,}",
                    )
                if min_side and img.format == "JPEG":
                    # draft() keeps both sides >= the requested size, so the shorter side stays >= min_side.
                    img.draft("RGB", (min_side, min_side))
                img.load()
                return _to_upright_rgb(img), header
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        # Pillow refuses beyond twice its own limit before we see the size: say it in our terms.
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size_said = f"{int(found.group(1)):,} pixels" if found else "the image's size"
        raise ImageError(path, f"decompression bomb: {size_said} exceeds the limit of {max_pixels:,}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, heif_reason(path, data) or "not an image (unrecognised format)") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc)
        if "truncated" in text.lower():
            raise ImageError(path, "truncated file (image data ends early)") from exc
        raise ImageError(path, f"corrupt image ({text or type(exc).__name__})") from exc


def _to_upright_rgb(img: Image.Image) -> Image.Image:
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grey: scale the full range to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent areas become white, as an image viewer shows them, not arbitrary hidden colours.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if mode != "RGB":
        return img.convert("RGB")
    return img


def is_candidate(path: Path) -> bool:
    """Files the scan looks at: anything not hidden. Non-images are reported, not silently dropped, and
    so are links leading nowhere (a moved target, a loop): the scan says it cannot read them."""
    if path.name.startswith("."):
        return False
    return path.is_file() or (path.is_symlink() and not path.is_dir())

"""Decoding one image file into an upright RGB picture, the same way everywhere.

Training, evaluation, predict and the scan all call :func:`load_rgb`, so a photo is seen
identically by every stage (orientation, colour mode, draft scale).
"""

from __future__ import annotations

import functools
import io
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from vistrain.data.heif_items import heif_retyped, heif_types_as_text

# Pillow's own default (about 89 Mpx); larger files are treated as decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485

# What Pillow's plugins let slip on malformed headers besides OSError and friends; Image.open itself
# catches the same ones while identifying a file, but not later, in load().
_DECODER_SLIPS = (struct.error, IndexError, KeyError, TypeError, ZeroDivisionError)

# EXIF orientation -> the transpose that makes the photo upright (as ImageOps.exif_transpose does).
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}

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
    if data is None:
        # Decoded from memory, as the scan decodes it: a file then decodes the same in every stage. From
        # a file, Pillow reads the rest of a chunk whose length is corrupt in one read() sized by that
        # length: a PNG claiming a 4 GB IDAT (its pixels complete) raised MemoryError on a small machine.
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if not data:
        raise ImageError(path, "empty file (0 bytes)")
    heif_support()
    try:
        with warnings.catch_warnings():
            # Pillow warns (not raises) between 1x and 2x its limit; we enforce our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(data) as img:
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
                xmp = img.info.get("xmp")
                if xmp is not None and not isinstance(xmp, (bytes, str)):
                    # A TIFF's XMP tag holding numbers (a malformed tag): Pillow's load() looks in it for an
                    # orientation once the pixels are decoded, and failed with TypeError. It is no XMP.
                    del img.info["xmp"]
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
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        # RuntimeError: what the AVIF plugin and pi-heif raise when their codec cannot decode a file.
        text = str(exc).strip()
        if "truncated" in text.lower():
            raise ImageError(path, "truncated file (image data ends early)") from exc
        raise ImageError(path, f"corrupt image ({text or type(exc).__name__})") from exc
    except _DECODER_SLIPS as exc:
        raise ImageError(path, f"corrupt image ({error_kind(exc)}: {str(exc)[:200]})") from exc


def _open(data: bytes) -> Image.Image:
    """Image.open on ``data``; where Pillow fails on a photo's metadata while opening it, the photo opened
    again past that metadata (its pixels are fine). Where that fails too, its error says what is wrong."""
    data = heif_types_as_text(data)
    try:
        return Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, AttributeError) + _DECODER_SLIPS:
        # (Image.open catches struct.error, IndexError, ... from a plugin, and says "cannot identify".)
        if data[:3] == b"\xff\xd8\xff":
            return _JpegSkippingExifDpi(io.BytesIO(data))
        # Pillow's AVIF plugin reads the EXIF while opening, and writes it back when the file's rotation
        # (irot/imir) differs from the EXIF orientation: one malformed tag made that fail (struct.error,
        # or AttributeError). With its EXIF item hidden, the photo turns by its irot/imir, as Pillow turns it.
        bare = heif_retyped(data, b"Exif", b"Exi_") if data[4:8] == b"ftyp" else None
        if bare is None:
            raise
        return Image.open(io.BytesIO(bare))


class _JpegSkippingExifDpi(JpegImagePlugin.JpegImageFile):
    """A JPEG opened as Pillow opens it, less the resolution Pillow reads from its EXIF while opening
    (for info["dpi"], unused here): an XResolution of text shorter than two characters (a camera's
    text where a number belongs) raised IndexError there, so Image.open called the photo no image."""

    def _read_dpi_from_exif(self) -> None:
        pass


def error_kind(exc: BaseException) -> str:
    """An exception's type as a reader can look it up: ``struct.error``, not a bare ``error``."""
    kind = type(exc)
    return kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"


def _upright(img: Image.Image) -> Image.Image:
    """The photo as a viewer shows it. Only the orientation tag is read: ImageOps.exif_transpose also
    writes the other EXIF tags back, and one malformed tag (a camera's text where a number belongs)
    made it raise on a photo whose pixels are fine. The result carries no EXIF, so nothing can turn
    it a second time."""
    try:
        orientation = img.getexif().get(0x0112)
    except _DECODER_SLIPS + (OSError, SyntaxError, ValueError, EOFError):
        return img  # EXIF too damaged to read: the pixels as stored
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    if method is None:
        return img
    out = img.transpose(method)
    out.info.pop("exif", None)
    return out


def _to_upright_rgb(img: Image.Image) -> Image.Image:
    img = _upright(img)
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

"""Decoding: every colour mode becomes upright RGB; every bad file kind gets a clear reason."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vistrain.data.images import ImageError, load_rgb


def test_modes_become_rgb(tmp_path):
    grey = Image.new("L", (20, 10), 128)
    grey.save(tmp_path / "grey.png")
    pal = Image.new("P", (20, 10), 3)
    pal.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
    pal.save(tmp_path / "palette.png")
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent red
    rgba.save(tmp_path / "rgba.png")
    Image.new("CMYK", (20, 10), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    arr16 = np.full((10, 20), 65535 // 2, dtype=np.uint16)
    Image.fromarray(arr16).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")

    for name in ["grey.png", "palette.png", "rgba.png", "cmyk.jpg", "deep.png"]:
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (20, 10), name

    assert load_rgb(tmp_path / "grey.png").getpixel((0, 0)) == (128, 128, 128)
    assert load_rgb(tmp_path / "palette.png").getpixel((0, 0)) == (10, 200, 30)
    # Transparent pixels show as white, not as the hidden red.
    assert load_rgb(tmp_path / "rgba.png").getpixel((0, 0)) == (255, 255, 255)
    r, g, b = load_rgb(tmp_path / "cmyk.jpg").getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60  # CMYK (0,255,255,0) is red
    # 16-bit mid grey maps to 8-bit mid grey instead of clipping to white.
    assert abs(load_rgb(tmp_path / "deep.png").getpixel((0, 0))[0] - 128) <= 1


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    out = load_rgb(tmp_path / "rotated.jpg")
    assert out.size == (20, 40)
    r, _g, b = out.getpixel((10, 3))  # the left band is now on top
    assert r > 200 and b < 60


def test_draft_mode_decodes_big_jpeg_smaller_but_enough(tmp_path):
    Image.new("RGB", (1600, 1200), (9, 99, 199)).save(tmp_path / "big.jpg")
    out = load_rgb(tmp_path / "big.jpg", min_side=200)
    assert min(out.size) >= 200 and out.size[0] < 1600


def _truncated_jpeg(tmp_path, keep=None):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[: keep or len(data) // 2])
    return tmp_path / "cut.jpg"


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: (p / "empty.jpg").write_bytes(b"") and None or p / "empty.jpg", "empty file"),
        (lambda p: (p / "notes.jpg").write_text("not a picture") and None or p / "notes.jpg", "not an image"),
        (_truncated_jpeg, "truncated"),
        (lambda p: _truncated_jpeg(p, keep=400), "truncated"),  # cut in its header: Pillow says "Truncated File Read"
    ],
)
def test_bad_files_raise_with_path_and_reason(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(ImageError) as info:
        load_rgb(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value)


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    Image.new("RGB", (300, 300)).save(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="decompression bomb"):
        load_rgb(tmp_path / "bomb.png", max_pixels=10_000)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "mobilenet_v2"])  # mean = std = 0.5; ImageNet's
def test_torch_free_normalisation_is_bit_for_bit_torchs(backbone):
    from vistrain.data.transforms import normalize, normalize_array
    from vistrain.models.registry import get_backbone

    prep = get_backbone(backbone).preprocessing(32, "crop")
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    batch[0, :16, :16] = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)  # every value, every channel
    for x in (batch, batch[1], batch[:, 2:30]):  # a batch, one image, a non-contiguous view
        ours = normalize_array(x, prep)
        theirs = normalize(np.ascontiguousarray(x), prep).contiguous().numpy()
        assert ours.flags.c_contiguous and ours.dtype == np.float32 and ours.shape == theirs.shape
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))
    with pytest.raises(TypeError, match="uint8"):
        normalize_array(batch.astype(np.float32), prep)


DATA = Path(__file__).parent / "data"


def test_heic_photos_decode_upright():
    """An iPhone's default format (HEIC), through pi-heif; its rotation is applied, as EXIF's is."""
    from vistrain.data.images import decode_with_header

    img, header = decode_with_header(DATA / "two_colours.heic")
    assert header["format"] == "HEIF" and img.mode == "RGB" and img.size == (64, 40)
    px = np.asarray(img)
    assert px[20, 4, 0] > 150 > px[20, 4, 2] and px[20, 60, 2] > 150 > px[20, 60, 0]  # red left, blue right
    turned = np.asarray(load_rgb(DATA / "turned.heic"))
    assert turned.shape == (64, 40, 3)
    assert turned[4, 20, 0] > 150 > turned[4, 20, 2] and turned[60, 20, 2] > 150 > turned[60, 20, 0]  # red on top


def test_heic_without_pi_heif_names_what_to_install():
    """Where pi-heif has no wheel, a HEIC photo is skipped with a reason a user can act on."""
    code = ("import sys; sys.modules['pi_heif'] = None\n"
            "from vistrain.data.images import ImageError, load_rgb\n"
            f"try: load_rgb({str(DATA / 'two_colours.heic')!r})\n"
            "except ImageError as e: print(e.reason)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEIC/HEIF photo, which needs pi-heif to read (pip install pi-heif)" in out


def test_avif_and_webp_decode(tmp_path):
    wide = Image.new("RGB", (64, 40), (220, 30, 30))
    wide.paste((30, 40, 200), (32, 0, 64, 40))
    for fmt in ("AVIF", "WEBP"):
        wide.save(tmp_path / f"x.{fmt.lower()}", fmt, quality=90)
        px = np.asarray(load_rgb(tmp_path / f"x.{fmt.lower()}"))
        assert px.shape == (40, 64, 3), fmt
        assert px[20, 4, 0] > 150 > px[20, 4, 2] and px[20, 60, 2] > 150 > px[20, 60, 0], fmt


def test_a_broken_heic_is_called_corrupt_when_pi_heif_is_there(tmp_path):
    data = (DATA / "two_colours.heic").read_bytes()
    (tmp_path / "cut.heic").write_bytes(data[:40])  # the brand survives, the picture does not
    with pytest.raises(ImageError) as info:
        load_rgb(tmp_path / "cut.heic")
    assert info.value.reason == "corrupt HEIC/HEIF photo (pi-heif cannot read it)"  # not "pip install pi-heif"


def test_a_bomb_beyond_pillows_own_refusal_names_vistrains_limit(tmp_path):
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)  # 900 Mpx claimed in a 60-byte file
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    with pytest.raises(ImageError) as info:
        load_rgb(tmp_path / "bomb.png", max_pixels=1_000_000)
    assert info.value.reason == "decompression bomb: 900,000,000 pixels exceeds the limit of 1,000,000"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_own_transpose(tmp_path, orientation):
    """vistrain reads the orientation tag itself (see the malformed-EXIF test below): the same
    picture as Pillow's ImageOps.exif_transpose, for each of the eight orientations."""
    from PIL import ImageOps

    arr = np.random.default_rng(orientation).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(arr).save(tmp_path / "o.png", exif=exif)  # PNG: lossless, so pixels compare exactly
    ours = np.asarray(load_rgb(tmp_path / "o.png"))
    pillows = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")).convert("RGB"))
    assert ours.shape == pillows.shape and np.array_equal(ours, pillows)


def test_a_photo_with_malformed_exif_decodes_upright(tmp_path):
    """Pillow's exif_transpose raises struct.error on this file (it writes the bad tag back); the
    photo's pixels are fine, so it is used, turned as its orientation tag says."""
    import struct

    from conftest import odd_exif_jpeg
    from PIL import ImageOps

    path = tmp_path / "odd.jpg"
    path.write_bytes(odd_exif_jpeg((80, 60)))
    with pytest.raises(struct.error):  # the premise
        ImageOps.exif_transpose(Image.open(path))
    img = load_rgb(path)
    assert img.size == (60, 80) and "exif" not in img.info  # turned, and nothing left to turn it twice
    stored = Image.open(path).convert("RGB").transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(img), np.asarray(stored))


def test_other_errors_pillow_lets_slip_are_a_corrupt_image_naming_the_file(tmp_path, monkeypatch):
    """struct.error, IndexError, ... from a plugin's load() (Image.open catches them only while
    identifying a file) are a clear ImageError, not a traceback that stops a whole scan."""
    import struct

    from PIL import ImageFile

    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)

    def load(self):
        raise struct.error("unpack requires a buffer of 4 bytes")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(ImageError, match=r"a\.png: corrupt image \(struct\.error: unpack requires a buffer"):
        load_rgb(path)


def _avif(exif: Image.Exif | None = None) -> bytes:
    """A 64x40 AVIF, red left and blue right; Pillow stores an EXIF orientation as the file's rotation
    (irot/imir) and takes it out of the EXIF."""
    img = Image.new("RGB", (64, 40), (220, 30, 30))
    img.paste((30, 40, 200), (32, 0, 64, 40))
    buf = io.BytesIO()
    img.save(buf, "AVIF", quality=90, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


def test_an_avif_its_codec_cannot_decode_is_a_corrupt_image(tmp_path):
    """Pillow's AVIF plugin raises RuntimeError when libavif fails: a clear ImageError, not a traceback."""
    data = _avif()
    pixels_at = data.index(b"mdat") + 4
    path = tmp_path / "zeroed.avif"
    path.write_bytes(data[:pixels_at] + bytes(len(data) - pixels_at))  # the AV1 payload zeroed
    with pytest.raises(ImageError) as info:
        load_rgb(path)
    assert info.value.reason == "corrupt image (Failed to decode frame 0: Decoding of color planes failed)"


@pytest.mark.parametrize("tag, renumbered", [
    # Make (text) renumbered as ImageWidth (a number), as in odd_exif_jpeg: Pillow's struct.error,
    # caught inside Image.open, made the file "not an image".
    (0x010F, 0x0100),
    # XResolution (a fraction) renumbered as Make (text): AttributeError escaped Image.open.
    (0x011A, 0x010F),
])
def test_an_avif_with_malformed_exif_decodes_turned_as_the_file_says(tmp_path, tag, renumbered):
    """Pillow's AVIF plugin writes the EXIF back while opening a turned photo, and one malformed tag
    made that fail; the pixels are fine, so the photo is used, turned by its irot/imir."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[tag] = "cam" if tag == 0x010F else 72.0
    data = _avif(exif)
    entry = tag.to_bytes(2, "big") + (b"\x00\x02" if tag == 0x010F else b"\x00\x05")  # Pillow writes "MM"
    assert data.count(entry) == 1
    path = tmp_path / "odd.avif"
    path.write_bytes(data.replace(entry, renumbered.to_bytes(2, "big") + entry[2:]))
    px = np.asarray(load_rgb(path))
    assert px.shape == (64, 40, 3)
    assert px[4, 20, 0] > 150 > px[4, 20, 2] and px[60, 20, 2] > 150 > px[60, 20, 0]  # red on top


@pytest.mark.parametrize("orientation", [None, 6])
def test_a_tiff_whose_xmp_tag_holds_a_number_decodes(tmp_path, orientation):
    """Pillow's TIFF load() looks for an orientation in the XMP tag after decoding the pixels (and
    removes it after turning the photo): a number there raised TypeError, and a fine photo was skipped."""
    from PIL import TiffImagePlugin

    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left edge
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[700] = 7  # XMP...
    tags.tagtype[700] = 3  # ...stored as a SHORT
    if orientation:
        tags[0x0112] = orientation
    img.save(tmp_path / "x.tif", tiffinfo=tags)
    assert Image.open(tmp_path / "x.tif").info["xmp"] == 7  # the premise
    out = load_rgb(tmp_path / "x.tif")
    if orientation:
        assert out.size == (20, 40) and out.getpixel((10, 3)) == (255, 0, 0)  # turned once: the band on top
    else:
        assert out.size == (40, 20) and out.getpixel((3, 10)) == (255, 0, 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limit through /proc and resource")
def test_a_png_claiming_a_4gb_idat_decodes_on_a_small_machine(tmp_path):
    """A PNG whose IDAT length says 4 GB, its pixels complete: read from a file, Pillow read the rest of
    that chunk in one read() of that size, MemoryError where memory is short (here: a limit on the
    address space). vistrain decodes from the file's bytes, as the scan does."""
    import struct
    import zlib

    def chunk(kind, body, length=None):
        return struct.pack(">I", len(body) if length is None else length) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    rows = b"".join(b"\x00" + bytes([x % 256 for x in range(96)]) for _ in range(24))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 24, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(rows), length=0xFFFFFF00) + chunk(b"IEND", b""))
    (tmp_path / "long.png").write_bytes(png)
    code = ("import resource\n"
            "from vistrain.data.images import ImageError, load_rgb\n"
            "pages = int(open('/proc/self/statm').read().split()[0])\n"
            "limit = pages * resource.getpagesize() + (1 << 30)  # 1 GB more than now, under the 4 GB claimed\n"
            "resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n"
            f"print(load_rgb({str(tmp_path / 'long.png')!r}).size)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "(32, 24)", run.stderr[-2000:]


def _heic_with_bad_metadata_text(kind: str) -> bytes:
    """tests/data/turned.heic with its Exif item's type not UTF-8 ("E\\x80if"), or that item made an
    XMP-like 'mime' item whose content type is not UTF-8 (the box grows: sizes and offsets follow)."""
    import struct

    data = bytearray((DATA / "turned.heic").read_bytes())
    at = data.index(b"Exif")  # the item type in the Exif item's 'infe' box
    if kind == "type":
        data[at + 1] = 0x80
        return bytes(data)
    extra = b"app\xfflication/rdf+xml\x00"
    data[at:at + 5] = b"mime\x00" + extra  # type, empty item name, then the content type
    for box in (b"infe", b"iinf", b"meta"):
        head = data.rindex(box, 0, at) - 4 if box == b"infe" else data.index(box) - 4
        struct.pack_into(">I", data, head, struct.unpack_from(">I", data, head)[0] + len(extra))
    pos = data.index(b"iloc") + 8  # iloc, version 0: field sizes, item count, then each item
    assert data[pos - 4] == 0 and (data[pos], data[pos + 1]) == (0x44, 0x40)  # 4-byte offsets, lengths, bases
    count, pos = struct.unpack_from(">H", data, pos + 2)[0], pos + 4
    for _ in range(count):  # item id, data reference, base offset, extents (offset from the base, length)
        base = struct.unpack_from(">I", data, pos + 4)[0]
        assert base > 0  # where the item's data starts in the file: after the 'meta' box, so it moved
        struct.pack_into(">I", data, pos + 4, base + len(extra))
        pos += 10 + 8 * struct.unpack_from(">H", data, pos + 8)[0]
    return bytes(data)


@pytest.mark.parametrize("kind", ["type", "content type"])
def test_a_heic_whose_metadata_item_names_are_not_utf8_decodes(tmp_path, kind):
    """pi-heif turns each metadata item's type and content type into text unchecked, and a byte that is
    not UTF-8 there crashed Python itself (segmentation fault: the whole scan gone, no error to catch).
    The picture is fine: it is decoded, upright. Run apart, so a crash fails this test only."""
    path = tmp_path / "odd.heic"
    path.write_bytes(_heic_with_bad_metadata_text(kind))
    code = ("import numpy as np\n"
            "from vistrain.data.images import load_rgb\n"
            f"px = np.asarray(load_rgb({str(path)!r}))\n"
            "print(px.shape, px[4, 20, 0] > 150 > px[4, 20, 2])\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, f"exit status {run.returncode}: {run.stderr[-2000:]}"
    assert run.stdout.strip() == "(64, 40, 3) True"  # turned as the file says: red on top


def test_a_jpeg_whose_exif_resolution_is_short_text_decodes_upright(tmp_path):
    """Pillow reads a JPEG's EXIF resolution while opening it (for info["dpi"]); an XResolution of text
    shorter than two characters raised IndexError there, and Image.open called the photo "not an
    image". Its pixels are fine: it is used, turned as its orientation tag says."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red band on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x0128] = 2  # ResolutionUnit: inches
    exif[0x011A] = 72.0  # XResolution, a fraction (8 bytes)...
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    data = buf.getvalue()
    at = data.index(b"\x01\x1a\x00\x05\x00\x00\x00\x01")  # its IFD entry (Pillow writes "MM")
    path = tmp_path / "odd.jpg"
    # ...made one character of text, a 0 byte: read as ""
    path.write_bytes(data[:at] + b"\x01\x1a\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00" + data[at + 12:])
    out = load_rgb(path)
    assert out.size == (20, 40)
    r, _g, b = out.getpixel((10, 3))  # the left band is now on top
    assert r > 200 and b < 60

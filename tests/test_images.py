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

"""Tiny synthetic image folders, made with Pillow in tmp_path; no test reads a real dataset."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

# Classes a frozen ImageNet backbone separates easily: colour and shape differ.
STYLES = {
    "circles": ((220, 40, 40), "ellipse"),
    "squares": ((40, 90, 220), "rectangle"),
    "stripes": ((40, 170, 60), "stripes"),
}


def make_image(kind: str, seed: int, size: tuple[int, int] = (56, 48)) -> Image.Image:
    """A photo-like synthetic image of ``kind``: noisy background, one coloured shape."""
    rng = np.random.default_rng(seed)
    colour, shape = STYLES[kind]
    w, h = size
    bg = rng.integers(150, 230, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    jitter = [int(v) for v in rng.integers(-20, 20, size=3)]
    c = tuple(max(0, min(255, a + b)) for a, b in zip(colour, jitter))
    x0, y0 = int(rng.integers(2, w // 4)), int(rng.integers(2, h // 4))
    x1, y1 = int(rng.integers(3 * w // 4, w - 2)), int(rng.integers(3 * h // 4, h - 2))
    if shape == "ellipse":
        d.ellipse((x0, y0, x1, y1), fill=c)
    elif shape == "rectangle":
        d.rectangle((x0, y0, x1, y1), fill=c)
    else:
        for x in range(0, w, 8):
            d.rectangle((x, 0, x + 3, h), fill=c)
    return img


def write_class_folders(root: Path, per_class: int = 8, classes=tuple(STYLES), start: int = 0, fmt: str = "png") -> Path:
    for ci, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(name, seed=1000 * ci + start + i).save(folder / f"{name}_{start + i}.{fmt}")
    return root


def write_labels_csv(path: Path, rows) -> Path:
    """Layout (d): a ``path,label`` CSV of (path, label) rows."""
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([("path", "label"), *rows])
    return path


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """Layout (b): root/<class>/*.png, 8 images in each of 3 classes."""
    return write_class_folders(tmp_path / "photos")


@pytest.fixture
def split_folders(tmp_path: Path) -> Path:
    """Layout (a): train/ and valid/ class folders, plus a flat test/ with labels in file names."""
    root = tmp_path / "split"
    write_class_folders(root / "train", per_class=6)
    write_class_folders(root / "valid", per_class=3, start=50)
    test = root / "test"
    test.mkdir()
    for ci, name in enumerate(STYLES):
        for i in range(2):
            make_image(name, seed=9000 + 10 * ci + i).save(test / f"{name}_{i + 1}.jpg", quality=90)
    return root


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# Small inputs keep tests fast; the pipeline is the same at any size.
FAST = {"image_size": 64, "time_budget": None}


@pytest.fixture(autouse=True)
def _private_user_cache(tmp_path, monkeypatch):
    """Tests never read or write the real user cache."""
    monkeypatch.setenv("VISTRAIN_CACHE_DIR", str(tmp_path / "user-cache"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """A small probe model trained once per test session: (run folder, its class-folder data).

    Tests that read a run (report, export, serve, audit) share it and must not modify it; copy it
    with shutil.copytree first when a test writes into the run folder.
    """
    import vistrain

    base = tmp_path_factory.mktemp("shared-run")
    data = write_class_folders(base / "photos", per_class=10)
    run = vistrain.train(data, out=base / "run", mode="probe", cache_dir=base / "cache", **FAST)
    return run.path, data


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (never a downloaded browser); skips, saying why, without it.

    Module-scoped: Playwright's sync API keeps an event loop running in the main thread while it is
    open, which would break later tests that call ``asyncio.run``.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run scripts/system-deps.sh (apt-get install chromium) as root")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def exported_run(trained_run, tmp_path_factory) -> Path:
    """The shared run exported once per session (fp32 + static int8) into its own folder."""
    from vistrain.export import ExportConfig, export_run

    out = tmp_path_factory.mktemp("exported") / "export"
    # The tolerance is wide here: a 6-image validation set moves in 17-point steps; the gate has its own test.
    export_run(trained_run[0], ExportConfig(out=out, int8=True, int8_method="static", calibration_images=12,
                                            max_accuracy_drop=100))
    return out


@contextlib.contextmanager
def live_server(app, start_timeout: float = 60.0):
    """A real uvicorn server for ``app`` on 127.0.0.1 at an ephemeral port; yields its base URL."""
    import threading
    import time

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def odd_exif_jpeg(size: tuple[int, int] = (80, 60)) -> bytes:
    """A JPEG whose pixels are fine but whose EXIF is malformed: it says "turn me" (orientation 6)
    and stores ImageWidth as text. Pillow 13's ImageOps.exif_transpose, writing the EXIF back,
    raised struct.error on it; a viewer shows the photo turned upright, and so must vistrain."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees
    exif[0x010F] = "cam"  # Make, a text tag...
    raw = exif.tobytes()
    odd = raw.replace(b"\x01\x0f\x00\x02", b"\x01\x00\x00\x02")  # ...renumbered as ImageWidth (a number)
    if odd == raw:
        raise AssertionError("the EXIF layout changed: the Make entry was not found")
    buf = io.BytesIO()
    make_image("circles", 5, size).save(buf, format="JPEG", exif=odd)
    return buf.getvalue()

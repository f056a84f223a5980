"""The review page in a real browser (Debian's chromium via Playwright) on a real uvicorn server:
relabel, quarantine and undo, with the files on disk checked after each click; and the server's
refusal of every path that leads outside the data folder."""

from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest
from conftest import live_server, write_class_folders

from vistrain.clean.app import create_app
from vistrain.clean.audit import AuditConfig, audit
from vistrain.clean.journal import QUARANTINE
from vistrain.data.dataset import DataConfig


@pytest.fixture
def review(tmp_path):
    """A dataset with a conflict and a duplicate, served on 127.0.0.1 at an ephemeral port."""
    root = write_class_folders(tmp_path / "photos", per_class=4)
    shutil.copy(root / "circles/circles_0.png", root / "squares/circle_copy.png")  # conflict
    shutil.copy(root / "stripes/stripes_1.png", root / "stripes/stripes_1_again.png")  # duplicate
    (tmp_path / "outside.txt").write_text("not yours")
    os.symlink(tmp_path / "outside.txt", root / "circles/sneaky.png")
    result = audit(AuditConfig(DataConfig(root, cache_dir=tmp_path / "cache"), features=False))
    with live_server(create_app(root, result), start_timeout=20) as url:
        yield root, url


def _card(page, path: str):
    return page.locator(f'.card[data-path="{path}"]')


def test_relabel_quarantine_and_undo_in_the_browser(browser, review):
    root, url = review
    original = {p: (root / p).read_bytes() for p in ("squares/circle_copy.png", "stripes/stripes_1_again.png")}
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector(".card")
    paths = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.path)")
    # The conflict (both files) comes first, then the extra copy of the duplicate.
    assert paths[:2] == ["circles/circles_0.png", "squares/circle_copy.png"]
    assert "stripes/stripes_1_again.png" in paths
    assert page.locator(".card").first.locator(".kind").inner_text() == "conflict"

    # Relabel with the mouse: choose the class, click Relabel.
    card = _card(page, "squares/circle_copy.png")
    card.locator("select").select_option("circles")
    card.locator("button.relabel").click()
    page.wait_for_selector('.card[data-path="squares/circle_copy.png"][data-status="relabel"]')
    assert not (root / "squares/circle_copy.png").exists()
    assert (root / "circles/circle_copy.png").read_bytes() == original["squares/circle_copy.png"]
    assert "relabelled to circles" in _card(page, "squares/circle_copy.png").inner_text()

    # Quarantine with the keyboard: focus the card, press q.
    _card(page, "stripes/stripes_1_again.png").locator(".msg").click()
    page.keyboard.press("q")
    page.wait_for_selector('.card[data-path="stripes/stripes_1_again.png"][data-status="quarantine"]')
    moved = root / QUARANTINE / "stripes/stripes_1_again.png"
    assert moved.read_bytes() == original["stripes/stripes_1_again.png"]
    assert not (root / "stripes/stripes_1_again.png").exists()
    manifest = json.loads((root / QUARANTINE / "manifest.json").read_text())["files"]
    assert manifest[f"{QUARANTINE}/stripes/stripes_1_again.png"]["original"] == "stripes/stripes_1_again.png"

    # Undo twice (button, then the u key): everything back where it was, byte for byte.
    page.click("#undo")
    page.wait_for_selector('.card[data-path="stripes/stripes_1_again.png"][data-status="open"]')
    assert (root / "stripes/stripes_1_again.png").read_bytes() == original["stripes/stripes_1_again.png"]
    assert not moved.exists()
    page.keyboard.press("u")
    page.wait_for_selector('.card[data-path="squares/circle_copy.png"][data-status="open"]')
    assert (root / "squares/circle_copy.png").read_bytes() == original["squares/circle_copy.png"]
    assert not (root / "circles/circle_copy.png").exists()
    assert page.is_disabled("#undo")
    page.close()


@pytest.mark.parametrize("bad", ["../outside.txt", "circles/../../outside.txt", "/etc/hostname",
                                 "circles/sneaky.png", f"{QUARANTINE}/journal.jsonl"])
def test_paths_from_the_browser_are_never_trusted(review, bad):
    root, url = review
    before = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
    with httpx.Client(base_url=url) as client:
        for endpoint in ("quarantine", "keep", "relabel"):
            r = client.post(f"/api/{endpoint}", json={"path": bad, "label": "circles"})
            assert r.status_code == 400, (endpoint, r.text)
        assert client.get("/api/thumb", params={"path": bad}).status_code in (400, 422)
        # Another site's page cannot drive the server through a rebound host name.
        assert client.post("/api/undo", headers={"Host": "evil.example"}).status_code == 403
    assert (root.parent / "outside.txt").read_text() == "not yours"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == before


def test_thumbnails_show_photos_upright_and_read_heic(review):
    """The page shows each photo as training sees it: a phone photo's EXIF rotation applied (it was
    shown sideways), and an iPhone's HEIC photos decoded."""
    import io
    from pathlib import Path

    import numpy as np
    from PIL import Image

    root, url = review
    wide = Image.new("RGB", (64, 40), (220, 30, 30))
    wide.paste((30, 40, 200), (32, 0, 64, 40))  # red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    wide.save(root / "circles/turned.jpg", quality=95, exif=exif.tobytes())
    shutil.copy(Path(__file__).parent / "data/two_colours.heic", root / "circles/phone.heic")
    with httpx.Client(base_url=url) as client:
        turned = Image.open(io.BytesIO(client.get("/api/thumb", params={"path": "circles/turned.jpg"}).content))
        heic = client.get("/api/thumb", params={"path": "circles/phone.heic"})
    assert turned.size == (40, 64)  # portrait, as shown
    top, bottom = np.asarray(turned)[2, 20], np.asarray(turned)[-3, 20]
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]  # red on top after the turn
    assert heic.status_code == 200
    left, right = np.asarray(Image.open(io.BytesIO(heic.content)))[20, [4, 60]]
    assert left[0] > 150 > left[2] and right[2] > 150 > right[0]


def test_class_names_are_text_and_p_accepts_the_prediction(browser, tmp_path):
    """Folder names may hold markup characters; the page shows them as written. A likely label
    error is fixed with one key: p relabels to the class the model predicted."""
    from vistrain.clean.audit import Finding

    odd = 'say "hi" <b>loud</b>'.replace("/", "")  # a legal folder name; '/' is the one character that is not
    root = write_class_folders(tmp_path / "photos", per_class=4, classes=("circles", "squares"))
    (root / "squares").rename(root / odd)
    result = audit(AuditConfig(DataConfig(root, cache_dir=tmp_path / "cache"), features=False))
    wrong = f"{odd}/squares_1.png"
    result.findings.append(Finding("label_error", "labelled odd, but the model says circles", [wrong],
                                   [odd, "circles"], 0.9))
    result.predictions[wrong] = {"label": odd, "predicted": "circles", "probability": 0.93, "self_confidence": 0.05}
    original = (root / wrong).read_bytes()
    with live_server(create_app(root, result), start_timeout=20) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector(".card")
        paths = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.path)")
        card = page.locator(".card").nth(paths.index(wrong))  # a CSS selector cannot quote this name
        options = card.locator("select option").all_inner_texts()
        assert sorted(options) == sorted(["1. circles", f"2. {odd}"]) and card.locator("b.given").inner_text() == odd
        assert card.locator("select").input_value() == odd  # the current label is selected, markup and all
        assert card.locator("button.accept").inner_text() == "Relabel to circles"
        card.locator(".msg").click()
        page.keyboard.press("p")
        page.wait_for_selector('.card[data-status="relabel"]')
        assert (root / "circles/squares_1.png").read_bytes() == original and not (root / wrong).exists()
        assert card.locator("button.accept").is_hidden()  # nothing left to accept
        page.close()


def test_the_page_offers_the_copy_and_says_which_file_it_keeps(browser, tmp_path):
    """Of "circles_2.png" and "circles_2 copy.png" the page offers the copy (by name, even though the
    copy is the older file) and says on its card which file is kept and why; quarantining it leaves
    the original where it was."""
    root = write_class_folders(tmp_path / "photos", per_class=3, classes=("circles", "squares"))
    original, copy = "circles/circles_2.png", "circles/circles_2 copy.png"
    shutil.copy(root / original, root / copy)
    os.utime(root / copy, (1_600_000_000, 1_600_000_000))
    result = audit(AuditConfig(DataConfig(root, cache_dir=tmp_path / "cache"), features=False))
    with live_server(create_app(root, result), start_timeout=20) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector(".card")
        assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.path)") == [copy]
        card = _card(page, copy)
        assert card.locator(".msg").inner_text() == f"2 byte-identical copies; keep {original} (not named like a copy)"
        card.locator(".msg").click()
        page.keyboard.press("q")
        page.wait_for_selector(f'.card[data-path="{copy}"][data-status="quarantine"]')
        assert (root / QUARANTINE / copy).read_bytes() == (root / original).read_bytes()
        assert not (root / copy).exists()
        page.close()


def test_a_leak_offers_the_validation_copy_and_keeps_the_training_one(browser, split_folders):
    """A training photo copied into valid/ under a shorter name: the page offers the validation copy
    (the leak), says the training copy is kept and why, and q moves the validation copy out."""
    train, leaked = "train/squares/squares_1.png", "valid/squares/s.png"
    shutil.copy(split_folders / train, split_folders / leaked)
    result = audit(AuditConfig(DataConfig(split_folders, cache_dir=split_folders.parent / "cache"), features=False))
    with live_server(create_app(split_folders, result), start_timeout=20) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector(".card")
        assert page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.path)") == [leaked]
        card = _card(page, leaked)
        assert card.locator(".msg").inner_text() == (
            f"2 byte-identical copies; keep {train} (the training copy: the validation copy leaks a training image)")
        card.locator(".msg").click()
        page.keyboard.press("q")
        page.wait_for_selector(f'.card[data-path="{leaked}"][data-status="quarantine"]')
        assert (split_folders / QUARANTINE / leaked).read_bytes() == (split_folders / train).read_bytes()
        assert not (split_folders / leaked).exists()
        page.close()


@pytest.fixture
def client(tmp_path):
    """The app in-process (no server, no browser), addressed as the page would be: 127.0.0.1:8765."""
    from fastapi.testclient import TestClient

    root = write_class_folders(tmp_path / "photos", per_class=2, classes=("circles", "squares"))
    shutil.copy(root / "circles/circles_0.png", root / "squares/circle_copy.png")  # a conflict to review
    result = audit(AuditConfig(DataConfig(root, cache_dir=tmp_path / "cache"), features=False))
    with TestClient(create_app(root, result), base_url="http://127.0.0.1:8765") as c:
        yield root, c


FOREIGN = [{"Origin": "http://127.0.0.1:9999"},  # another local server's page (the attack in the audit)
           {"Origin": "http://localhost:8765"},  # same port, another host name: another origin
           {"Origin": "https://127.0.0.1:8765"},
           {"Origin": "null"},  # a sandboxed frame or a file:// page
           {"Sec-Fetch-Site": "same-site"},  # another port of localhost, Origin stripped
           {"Sec-Fetch-Site": "cross-site"},
           {"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "cross-site"}]


@pytest.mark.parametrize("headers", FOREIGN)
def test_another_page_cannot_drive_the_server(client, headers):
    """A cross-origin POST without a body needs no CORS preflight: a page on another port could
    undo the user's work with fetch(..., {method: 'POST', mode: 'no-cors'}). Every request that
    changes something is refused when the browser says another page sent it."""
    root, c = client
    assert c.post("/api/quarantine", json={"path": "squares/circle_copy.png"}).status_code == 200  # curl-like
    moved = root / QUARANTINE / "squares/circle_copy.png"
    for endpoint in ("undo", "keep", "quarantine", "relabel"):
        r = c.post(f"/api/{endpoint}", json={"path": "circles/circles_1.png", "label": "squares"}, headers=headers)
        assert r.status_code == 403 and "refused" in r.json()["detail"], (endpoint, r.text)
    assert moved.exists() and (root / "circles/circles_1.png").exists()
    assert c.get("/api/state", headers=headers).json()["undo"] == "quarantine squares/circle_copy.png"
    assert c.get("/api/state").json()["suspects"][1]["status"] == "quarantine"


def test_the_page_itself_still_drives_the_server(client):
    """The page's own fetches carry Origin (its own) and Sec-Fetch-Site: same-origin."""
    root, c = client
    own = {"Origin": "http://127.0.0.1:8765", "Sec-Fetch-Site": "same-origin"}
    assert c.post("/api/quarantine", json={"path": "squares/circle_copy.png"}, headers=own).status_code == 200
    r = c.post("/api/undo", json={}, headers=own)
    assert r.status_code == 200 and r.json()["done"]["undoes_action"] == "quarantine"
    assert (root / "squares/circle_copy.png").exists()


@pytest.mark.parametrize("size", [0, -1, 15, 1025, 100000])
def test_thumbnail_sizes_out_of_bounds_are_refused_not_a_crash(client, size):
    _, c = client
    r = c.get("/api/thumb", params={"path": "circles/circles_0.png", "size": size})
    assert r.status_code == 422, r.text  # was 500: Pillow's "scale must be > 0", or a huge decode


def test_thumbnail_sizes_within_bounds_and_no_favicon_request(client):
    _, c = client
    for size in (16, 224, 1024):
        assert c.get("/api/thumb", params={"path": "circles/circles_0.png", "size": size}).status_code == 200
    assert '<link rel="icon" href="data:,">' in c.get("/").text  # the browser asks for /favicon.ico otherwise


def test_page_shows_what_the_command_line_undid(client):
    """`clean --undo` while the page is open: the page's state and its Undo follow the journal file."""
    from vistrain.cli import main

    root, c = client
    c.post("/api/quarantine", json={"path": "squares/circle_copy.png"})
    assert main(["clean", str(root), "--undo"]) == 0
    assert (root / "squares/circle_copy.png").exists()
    state = c.get("/api/state").json()
    assert state["undo"] is None and state["suspects"][1]["status"] == "open"
    r = c.post("/api/undo")
    assert r.status_code == 200 and r.json()["done"] is None  # was 400: "... is gone"
    kept = c.post("/api/keep", json={"path": "circles/circles_0.png"}).json()["done"]
    assert kept["id"] == 3  # after the page's quarantine (1) and the command line's undo (2)

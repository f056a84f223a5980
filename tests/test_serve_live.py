"""The server on a real socket (uvicorn, 127.0.0.1, ephemeral port): concurrent clients, a chunked
oversized upload, OpenAPI fuzzing with schemathesis, and the web page in headless Chromium."""

from __future__ import annotations

import base64
import csv
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import schemathesis
from conftest import CHROMIUM, CHROMIUM_ARGS, live_server, make_image
from hypothesis import HealthCheck, given, settings
from PIL import Image

from vistrain.serve import ServeConfig, create_app


def png_bytes(kind: str, seed: int) -> bytes:
    buf = io.BytesIO()
    make_image(kind, seed, (90, 70)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def live_url(exported_run):
    app = create_app(ServeConfig(exported_run, max_request_bytes=300_000, max_files=4))
    with live_server(app) as url:
        yield url


def test_concurrent_clients_each_get_their_own_answer(live_url):
    kinds = ["circles", "squares", "stripes"] * 4

    def one(i):
        r = httpx.post(f"{live_url}/predict", files={"file": (f"{i}.png", png_bytes(kinds[i], 300 + i), "image/png")},
                       timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["predictions"][0]

    alone = [one(i) for i in range(len(kinds))]
    before = httpx.get(f"{live_url}/health").json()
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(one, range(len(kinds))))
    after = httpx.get(f"{live_url}/health").json()
    # Batched with strangers or not, every image gets the answer it gets alone: rows never mix.
    for a, t in zip(alone, together):
        assert (t["filename"], t["label"]) == (a["filename"], a["label"])
        assert abs(t["probability"] - a["probability"]) < 1e-4
    assert after["images"] - before["images"] == len(kinds)
    assert after["batches"] - before["batches"] <= len(kinds)


def test_chunked_oversized_upload_is_cut_off_while_reading(live_url):
    sent = []

    def body():
        yield b"--xyz\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.png\"\r\n" \
              b"Content-Type: image/png\r\n\r\n"
        for _ in range(200):  # 12.8 MB if it were all read; the limit is 300 kB
            sent.append(1)
            yield bytes(64_000)

    r = httpx.post(f"{live_url}/predict", content=body(), timeout=60,
                   headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
    assert httpx.get(f"{live_url}/health").status_code == 200


def test_a_photo_with_malformed_exif_is_answered_over_a_real_socket(live_url):
    """Pillow's exif_transpose raised struct.error on it, and the server answered a bare 500."""
    from conftest import odd_exif_jpeg

    r = httpx.post(f"{live_url}/predict", timeout=60,
                   files=[("file", ("odd.jpg", odd_exif_jpeg(), "image/jpeg")),
                          ("file", ("s.png", png_bytes("stripes", 401), "image/png"))])
    assert r.status_code == 200 and r.json()["failed"] == 0, r.text
    assert [p["label"] for p in r.json()["predictions"]] == ["circles", "stripes"]
    assert httpx.get(f"{live_url}/health").status_code == 200


def test_fuzzed_requests_never_get_a_server_error(live_url):
    """Every operation in the OpenAPI schema, with schemathesis-generated requests (valid and not)."""
    schema = schemathesis.openapi.from_url(f"{live_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/health", "/model"}
    calls = []
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(base_url=live_url, timeout=60)
            calls.append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text[:300]}"
            if response.status_code >= 400:
                assert response.json()["detail"]

        check()
    assert len(calls) >= 3 * len(operations)
    assert httpx.get(f"{live_url}/health").status_code == 200


def test_web_page_shows_the_prediction(live_url, browser, tmp_path, trained_run):
    img = tmp_path / "my photo.png"
    # One of the training photos: with 6 validation photos the familiarity threshold is their lowest
    # similarity, which a new photo of the same kind misses about one time in seven.
    img.write_bytes(min((trained_run[1] / "stripes").iterdir()).read_bytes())
    page = browser.new_page()
    try:
        page.goto(live_url + "/")
        page.wait_for_function("document.getElementById('meta').textContent.includes('classes')")
        page.set_input_files("#file", str(img))
        page.wait_for_selector("#prediction", timeout=30_000)
        assert page.inner_text("#prediction") == "stripes"
        assert page.locator(".row").count() == 3  # three classes, each with a bar
        page.wait_for_selector("#heat:not([hidden])")
        assert page.get_attribute("#heatimg", "src").startswith("data:image/jpeg;base64,")
        assert page.locator("#unfamiliar").count() == 0
        blank = tmp_path / "blank page.png"
        Image.new("RGB", (80, 60), (255, 255, 255)).save(blank)  # nothing like the coloured shapes it learned
        page.set_input_files("#file", str(blank))
        page.wait_for_selector("#unfamiliar", timeout=30_000)
        assert "unlike every photo the model was trained on" in page.inner_text("#unfamiliar")
        bad = tmp_path / "notes.png"
        bad.write_bytes(b"not an image at all")
        page.set_input_files("#file", str(bad))
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "notes.png: not an image" in page.inner_text("#error")
    finally:
        page.close()


def test_web_page_classifies_several_photos_into_a_table_and_a_csv(live_url, browser, tmp_path, trained_run):
    """Seven photos, more than the server's --max-files of 4: the page sends them one per request and
    lists every answer; a broken file gets its reason in its own row; the CSV has predict's columns."""
    data = trained_run[1]
    picked = {}
    for kind in ("circles", "squares", "stripes"):
        for k, src in enumerate(sorted((data / kind).iterdir())[:2]):
            dst = tmp_path / f"{kind}, no. {k}.png"  # a comma: the CSV must quote it
            dst.write_bytes(src.read_bytes())
            picked[dst.name] = kind
    Image.open(tmp_path / "circles, no. 0.png").save(tmp_path / "circles.tif")  # a format Chromium cannot show
    picked["circles.tif"] = "circles"
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image at all")
    files = [str(tmp_path / name) for name in picked] + [str(bad)]
    page = browser.new_page()
    try:
        page.goto(live_url + "/")
        page.set_input_files("#file", files)
        page.wait_for_selector("#csv:not([hidden])", timeout=60_000)
        assert page.locator("#rows tr").count() == 8
        answers = dict(zip(page.locator("#rows td:nth-child(2)").all_inner_texts(),
                           page.locator("#rows td.answer").all_inner_texts()))
        assert answers["notes.png"].startswith("notes.png: not an image")
        assert {name: answers[name].split(" (")[0] for name in picked} == picked
        # Tiny validation sets make rough thresholds: count the flags the rows show, as the summary must.
        flags = [f"{n} {flag}" for flag in ("unsure", "unfamiliar")
                 if (n := sum(f"({flag})" in a for a in answers.values()))]
        said = f" ({', '.join(flags)})" if flags else ""
        assert page.inner_text("#summary") == f"8 photos: 7 classified{said}, 1 failed"
        # The TIFF's thumbnail is the model's view of it (its heat map); the others show the photo.
        thumbs = dict(zip(page.locator("#rows td:nth-child(2)").all_inner_texts(),
                          page.locator("#rows td:first-child img").evaluate_all("(els) => els.map((e) => e.src)")))
        assert thumbs["circles.tif"].startswith("data:image/jpeg;base64,")
        assert thumbs["circles, no. 0.png"].startswith("blob:")
        # A thumbnail that fails only after its answer is in (a slow decode) gets the heat map too.
        swapped = page.evaluate("""() => { const tr = [...document.querySelectorAll('#rows tr')]
            .find((r) => r.children[1].textContent === 'stripes, no. 1.png');
            const img = tr.querySelector('img'); img.onerror(); return [img.src, img.hidden]; }""")
        assert swapped[0].startswith("data:image/jpeg;base64,") and swapped[1] is False
        text = page.evaluate("fetch(document.getElementById('csv').href).then((r) => r.text())")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert list(rows[0]) == ["path", "label", "probability", "unsure", "familiar", "similarity", "top1",
                                 "top1_probability", "top2", "top2_probability", "top3", "top3_probability", "error"]
        by_path = {r["path"]: r for r in rows}
        assert {name: by_path[name]["label"] for name in picked} == picked
        assert all(by_path[name]["top1"] == kind and float(by_path[name]["probability"]) > 1 / 3
                   for name, kind in picked.items())
        assert by_path["notes.png"]["label"] == "" and "not an image" in by_path["notes.png"]["error"]
        # A row's bars and heat map on click.
        page.locator("#rows tr", has_text="squares, no. 1.png").click()
        assert page.inner_text("#prediction") == "squares"
        assert page.get_attribute("#heatimg", "src").startswith("data:image/jpeg;base64,")
        page.locator("#rows tr", has_text="notes.png").click()
        assert "not an image" in page.inner_text("#error") and page.locator("#prediction").count() == 0
    finally:
        page.close()


def test_web_page_shows_a_broken_photo_s_error_beside_the_good_one_s_answer(live_url, browser, tmp_path, trained_run):
    """A truncated photo picked with a good one: its row says why, the good one is still classified."""
    good = tmp_path / "good.png"
    good.write_bytes(min((trained_run[1] / "squares").iterdir()).read_bytes())
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:300])  # a real PNG header, then the data stops
    page = browser.new_page()
    try:
        page.goto(live_url + "/")
        page.set_input_files("#file", [str(broken), str(good)])  # the broken one first: it must not stop the rest
        page.wait_for_selector("#csv:not([hidden])", timeout=60_000)
        assert page.locator("#rows td:nth-child(2)").all_inner_texts() == ["broken.png", "good.png"]
        cells = page.locator("#rows td.answer").all_inner_texts()
        assert cells[0] == "broken.png: truncated file (image data ends early)"
        assert page.locator("#rows tr").nth(0).locator(".failed").count() == 1
        assert cells[1].split(" (")[0] == "squares" and page.locator("#rows tr").nth(1).locator(".failed").count() == 0
        assert page.locator("#rows td.probability").all_inner_texts()[0] == ""
        assert page.inner_text("#summary").startswith("2 photos: 1 classified") and page.inner_text("#summary").endswith(", 1 failed")
        page.locator("#rows tr", has_text="good.png").click()
        assert page.inner_text("#prediction") == "squares" and page.inner_text("#error") == ""
        page.locator("#rows tr", has_text="broken.png").click()
        assert "broken.png: truncated" in page.inner_text("#error") and page.locator("#prediction").count() == 0
        # An error entry in a 200 answer (the multi-file shape) is shown as that photo's error too.
        entry = {"filename": "good.png", "error": "good.png: not an image (unrecognised format)", "status": 400}
        page.route("**/predict?*", lambda route: route.fulfill(
            json={"variant": "int8", "predictions": [entry], "failed": 1}))
        page.set_input_files("#file", str(good))
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=30_000)
        assert page.inner_text("#error") == entry["error"] and page.locator("#prediction").count() == 0
    finally:
        page.close()


def test_web_page_classifies_a_pasted_image(live_url, browser, trained_run):
    """Ctrl+V of a screenshot-like image (a File on the clipboard) is classified like a picked one."""
    payload = base64.b64encode(min((trained_run[1] / "circles").iterdir()).read_bytes()).decode()
    page = browser.new_page()
    try:
        page.goto(live_url + "/")
        page.evaluate("""(b64) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const clip = new DataTransfer();
            clip.items.add(new File([bytes], "image.png", { type: "image/png" }));
            document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: clip, bubbles: true }));
        }""", payload)
        page.wait_for_selector("#prediction", timeout=30_000)
        assert page.inner_text("#prediction") == "circles"
        page.wait_for_selector("#heat:not([hidden])")
    finally:
        page.close()


def write_y4m(img: Image.Image, path) -> None:
    """A one-frame YUV4MPEG2 video (what Chromium's fake camera plays, looping) of ``img``."""
    w, h = (img.width // 2) * 2, (img.height // 2) * 2
    ycc = np.asarray(img.convert("RGB").crop((0, 0, w, h)).convert("YCbCr"))
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F10:1 Ip A1:1 C420jpeg\n".encode())
        f.write(b"FRAME\n" + ycc[..., 0].tobytes() + ycc[::2, ::2, 1].tobytes() + ycc[::2, ::2, 2].tobytes())


def test_web_page_classifies_the_camera_live_and_stops_it(live_url, browser, tmp_path, trained_run):
    """Chromium's fake camera plays a training photo: the page classifies frame after frame, then stops."""
    photo = Image.open(min((trained_run[1] / "stripes").iterdir()))
    write_y4m(photo.resize((photo.width * 6, photo.height * 6), Image.Resampling.BICUBIC), tmp_path / "camera.y4m")
    camera = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={tmp_path / 'camera.y4m'}"]
    # A second Chromium with a camera, from the same Playwright (one sync Playwright per thread).
    b = browser.browser_type.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + camera)
    try:
        page = b.new_page()
        page.goto(live_url + "/")
        page.click("#camera")
        page.wait_for_function("Number(document.getElementById('rate').dataset.frames || 0) >= 3", timeout=60_000)
        assert page.inner_text("#prediction") == "stripes"
        # As sure as for the photo itself (99.9% here): the frame reached the model whole, not a test pattern.
        assert float(page.inner_text(".row.top span:last-child").rstrip("%")) > 90
        assert page.inner_text("#camera") == "Stop the camera"
        assert page.is_visible("#live") and not page.is_visible("#heat")
        # The run crops: the guide frames the centre square of the 336 x 288 video, as shown.
        video, guide = page.locator("#video").bounding_box(), page.locator("#guide").bounding_box()
        assert video["width"] > video["height"] and guide["width"] == pytest.approx(video["height"], abs=1)
        assert guide["height"] == pytest.approx(video["height"], abs=1)
        assert guide["x"] - video["x"] == pytest.approx((video["width"] - video["height"]) / 2, abs=1)
        assert "the model sees the square" in page.inner_text("#rate")
        page.check("#camheat")  # each frame's heat map beside the video, from the next frame on
        page.wait_for_selector("#heat:not([hidden])", timeout=30_000)
        assert page.get_attribute("#heatimg", "src").startswith("data:image/jpeg;base64,")
        assert page.inner_text("#prediction") == "stripes"
        page.uncheck("#camheat")
        page.wait_for_selector("#heat", state="hidden", timeout=30_000)
        page.click("#camera")
        assert page.evaluate("document.getElementById('video').srcObject") is None
        assert not page.is_visible("#live") and page.inner_text("#camera") == "Use the camera"
        frames = page.get_attribute("#rate", "data-frames")
        page.wait_for_timeout(1000)
        assert page.get_attribute("#rate", "data-frames") == frames  # no frame after the stop
    finally:
        b.close()


def test_web_page_says_why_there_is_no_camera_on_an_insecure_page(live_url, browser):
    """Served on a LAN address over http, a browser hides navigator.mediaDevices: the page says so."""
    context = browser.new_context()
    context.add_init_script("Object.defineProperty(Navigator.prototype, 'mediaDevices', { get: () => undefined })")
    try:
        page = context.new_page()
        page.goto(live_url + "/")
        page.click("#camera")
        note = page.inner_text("#camnote")
        assert "secure pages" in note and "localhost:" + live_url.rsplit(":", 1)[1] in note
        assert "Picking a file works everywhere" in note and not page.is_visible("#live")
    finally:
        context.close()


def test_docs_page_renders_swagger_ui_with_no_internet(live_url, browser):
    """/docs in Chromium with every request that leaves this server refused: Swagger UI still renders."""
    page = browser.new_page()
    outside = []

    def only_this_server(route):
        if route.request.url.startswith(live_url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    try:
        page.route("**/*", only_this_server)
        page.goto(live_url + "/docs")
        page.locator(".swagger-ui .opblock").filter(has_text="/predict").first.wait_for(timeout=30_000)
        assert "vistrain image classifier" in page.inner_text(".swagger-ui .info .title")
        paths = page.locator(".swagger-ui .opblock-summary-path").all_inner_texts()
        assert {"/predict", "/health", "/model"} <= {p.strip() for p in paths}, paths
        assert outside == []
    finally:
        page.close()

"""The server on a real socket (uvicorn, 127.0.0.1, ephemeral port): concurrent clients, a chunked
oversized upload, OpenAPI fuzzing with schemathesis, and the web page in headless Chromium."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import schemathesis
from conftest import live_server, make_image
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
        assert page.get_attribute("#heatimg", "src").startswith("data:image/png;base64,")
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

"""The prediction server: answers, hostile uploads (4xx, and it keeps serving), micro-batching,
OpenAPI fuzzing, the Lambda handler, and the torch-free import path."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from conftest import make_image, odd_exif_jpeg
from fastapi.testclient import TestClient
from PIL import Image

from vistrain.serve import ServeConfig, create_app
from vistrain.serve.batcher import MicroBatcher
from vistrain.serve.lambda_handler import make_handler


def png_bytes(kind: str = "circles", seed: int = 7, size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    make_image(kind, seed, size).save(buf, format="PNG")
    return buf.getvalue()


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge picture: rejected before any pixel is decoded."""
    data = png_bytes()
    ihdr = data.index(b"IHDR")
    body = struct.pack(">II", width, height) + data[ihdr + 12 : ihdr + 17]
    chunk = b"IHDR" + body
    return data[: ihdr] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[ihdr + 21 :]


def jpeg_bytes(kind: str = "circles", seed: int = 7, size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    make_image(kind, seed, size).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def broken_jpeg_decoder(monkeypatch):
    """Pillow failing inside its own JPEG decoding with an error images.py does not map (as a new
    Pillow release or an odd file variant might): raised from a frame of Pillow's load()."""
    from PIL import Image as PILImage

    real = PILImage._getdecoder

    def getdecoder(mode, decoder_name, *args, **kwargs):
        if decoder_name == "jpeg":  # AttributeError: in load(), no error images.py maps
            raise AttributeError("'NoneType' object has no attribute 'decode'")
        return real(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(PILImage, "_getdecoder", getdecoder)


@pytest.fixture(scope="module")
def client(exported_run):
    with TestClient(create_app(ServeConfig(exported_run, max_request_bytes=200_000, max_files=4))) as c:
        yield c


def test_predict_one_and_several_images(client):
    files = [("file", (f"{k}.png", png_bytes(k, 40 + i), "image/png")) for i, k in enumerate(["circles", "stripes"])]
    r = client.post("/predict", files=files, params={"top_k": 2})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    threshold = client.get("/model").json()["unsure_threshold"]
    assert [p["filename"] for p in preds] == ["circles.png", "stripes.png"]
    assert [p["label"] for p in preds] == ["circles", "stripes"] and r.json()["failed"] == 0
    for p in preds:
        assert len(p["top"]) == 2 and p["top"][0]["label"] == p["label"]
        assert p["top"][0]["probability"] >= p["top"][1]["probability"] and p["heatmap"] is None
        assert p["unsure"] is (threshold is not None and p["probability"] < threshold)


def test_heatmap_is_a_jpeg_of_the_model_input(client, exported_run):
    from vistrain.heatmap import overlay
    from vistrain.runtime import OnnxPredictor

    r = client.post("/predict", files={"file": ("s.png", png_bytes("squares"), "image/png")}, params={"heatmap": True})
    pred = r.json()["predictions"][0]
    assert pred["heatmap"].startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(pred["heatmap"].split(",", 1)[1])))
    size = client.get("/model").json()["preprocessing"]["size"]
    assert img.format == "JPEG" and img.size == (size, size)
    # The model's view of the upload with the answer's map over it, up to JPEG's rounding.
    p = OnnxPredictor.from_folder(exported_run, client.get("/model").json()["variant"])
    pixels = p.pixels_from_bytes(png_bytes("squares"), "s.png")
    _, fmaps = p.outputs_from_pixels(pixels[None])
    got = np.asarray(img, dtype=float)
    err = {c: np.abs(got - overlay(pixels, p.heatmap(fmaps[0], k))).mean() for k, c in enumerate(p.classes)}
    bare = np.abs(got - pixels).mean()
    assert min(err, key=err.get) == pred["label"] and err[pred["label"]] < 0.5 * bare  # its own map, drawn


def test_an_iphone_heic_upload_is_read(client):
    from pathlib import Path

    heic = (Path(__file__).parent / "data" / "turned.heic").read_bytes()
    r = client.post("/predict", files={"file": ("IMG_0001.HEIC", heic, "image/heic")}, params={"heatmap": True})
    assert r.status_code == 200, r.text
    pred = r.json()["predictions"][0]
    assert pred["filename"] == "IMG_0001.HEIC" and pred["label"] and pred["heatmap"].startswith("data:image/jpeg")


def test_health_and_model(client, exported_run):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["variant"] == "int8"
    m = client.get("/model").json()
    info = json.loads((exported_run / "export.json").read_text())
    assert m["classes"] == info["classes"] and "vistrain" in m["version"]
    assert m["metrics"]["models"]["int8"]["valid_accuracy"] == info["models"]["int8"]["valid_accuracy"]
    assert client.get("/openapi.json").json()["paths"]["/predict"]["post"]
    assert "<input id=\"file\"" in client.get("/").text


def test_docs_pages_load_their_scripts_and_styles_from_this_server(client):
    """/docs and /redoc work offline: every script, style and icon comes from /static-docs/, no CDN."""
    for page in ("/docs", "/redoc"):
        r = client.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "cdn.jsdelivr" not in r.text and "googleapis" not in r.text
        assets = re.findall(r'(?:src|href)="([^"]*)"', r.text)
        assert assets and all(a.startswith("/static-docs/") for a in assets), assets
    assert "url: '/openapi.json'" in client.get("/docs").text
    expected = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css",
                "redoc.standalone.js": "text/javascript", "favicon.png": "image/png"}
    for name, ctype in expected.items():
        r = client.get(f"/static-docs/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), (name, r.headers)
        assert len(r.content) > 1000
    redirect = client.get("/docs/oauth2-redirect")  # the page Swagger UI's OAuth2 flow returns to
    assert redirect.status_code == 200 and "oauth2" in redirect.text and "src=" not in redirect.text
    assert client.get("/openapi.json").json()["paths"]["/predict"]["post"]


def test_docs_fall_back_to_fastapis_cdn_pages_without_fastapi_offline(exported_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # import fails as if not installed
    c = TestClient(create_app(ServeConfig(exported_run)))  # not started: the docs need no model
    assert "cdn.jsdelivr.net" in c.get("/docs").text
    assert c.get("/openapi.json").json()["paths"]["/predict"]["post"]


HOSTILE = [
    ("not-an-image", lambda: ("notes.png", b"hello, I am text" * 10, "image/png"), 400, "not an image"),
    ("truncated", lambda: ("half.png", png_bytes()[:300], "image/png"), 400, "truncated"),
    ("zero-bytes", lambda: ("empty.jpg", b"", "image/jpeg"), 400, "empty file"),
    ("bomb", lambda: ("bomb.png", bomb_png(), "image/png"), 413, "decompression bomb"),
    ("wrong-part-type", lambda: ("a.png", png_bytes(), "text/plain"), 415, "not an image"),
    ("oversized", lambda: ("big.bmp", b"BM" + bytes(300_000), "image/bmp"), 413, "exceeds the limit"),
]


@pytest.mark.parametrize("name,make,status,message", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_uploads_get_a_clear_4xx_and_the_server_keeps_serving(client, name, make, status, message):
    r = client.post("/predict", files={"file": make()})
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]
    ok = client.post("/predict", files={"file": ("c.png", png_bytes(), "image/png")})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["label"] == "circles"


def test_wrong_request_types_and_counts(client):
    r = client.post("/predict", json={"file": "x"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    assert client.post("/predict", data={"other": "1"}, files={"x": ("a.png", png_bytes(), "image/png")}).status_code == 422
    many = [("file", (f"{i}.png", png_bytes(seed=i, size=(40, 40)), "image/png")) for i in range(5)]
    r = client.post("/predict", files=many)
    assert r.status_code == 413 and "limit is 4" in r.json()["detail"]


def test_a_bad_file_among_several_gets_an_error_entry_and_the_rest_are_answered(client):
    """Four parts, two unreadable (first and third): 200, answers and errors in upload order."""
    circles, stripes = png_bytes("circles", 61), png_bytes("stripes", 62)
    files = [("file", ("notes.png", b"hello, I am text" * 10, "image/png")),
             ("file", ("circles.png", circles, "image/png")),
             ("file", ("bomb.png", bomb_png(), "image/png")),
             ("file", ("stripes.png", stripes, "image/png"))]
    r = client.post("/predict", files=files, params={"top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    preds = body["predictions"]
    assert body["failed"] == 2 and len(preds) == 4
    assert [p["filename"] for p in preds] == ["notes.png", "circles.png", "bomb.png", "stripes.png"]
    assert preds[0] == {"filename": "notes.png", "error": "notes.png: not an image (unrecognised format)", "status": 400}
    assert preds[2]["error"].startswith("bomb.png: decompression bomb") and preds[2]["status"] == 413
    for bad in (preds[0], preds[2]):
        assert set(bad) == {"filename", "error", "status"}  # no class fields to mistake for an answer
    assert [preds[1]["label"], preds[3]["label"]] == ["circles", "stripes"]
    assert all("error" not in p and len(p["top"]) == 2 for p in (preds[1], preds[3]))
    # Each answer is the one its file gets alone: the failures did not shift the rows.
    for i, data in ((1, circles), (3, stripes)):
        alone = client.post("/predict", files={"file": (preds[i]["filename"], data, "image/png")}, params={"top_k": 2})
        assert alone.json()["predictions"][0]["probability"] == pytest.approx(preds[i]["probability"], abs=1e-4)

    # A part declared as something other than an image is one more error entry (415 alone).
    r = client.post("/predict", files=[("file", ("a.txt", circles, "text/plain")), ("file", ("c.png", circles, "image/png"))])
    assert r.status_code == 200, r.text
    assert r.json()["failed"] == 1 and r.json()["predictions"][0]["status"] == 415
    assert "a.txt: content type 'text/plain' is not an image" in r.json()["predictions"][0]["error"]
    assert r.json()["predictions"][1]["label"] == "circles"


def test_a_file_pillow_fails_on_unexpectedly_gets_a_422_entry_and_the_rest_are_answered(client, broken_jpeg_decoder):
    """An error from inside Pillow that images.py does not map: that file's problem, 422."""
    odd, circles = jpeg_bytes("stripes", 62), png_bytes("circles", 63)
    files = [("file", ("odd.jpg", odd, "image/jpeg")), ("file", ("circles.png", circles, "image/png"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    odd_entry, answer = r.json()["predictions"]
    assert r.json()["failed"] == 1 and answer["label"] == "circles"
    assert set(odd_entry) == {"filename", "error", "status"} and odd_entry["status"] == 422
    assert odd_entry["error"].startswith("odd.jpg: the image decoder cannot read this file (AttributeError: ")
    assert "damaged or an unusual variant" in odd_entry["error"]

    alone = client.post("/predict", files={"file": ("odd.jpg", odd, "image/jpeg")})
    assert alone.status_code == 422 and alone.json()["detail"] == odd_entry["error"]
    assert client.post("/predict", files={"file": ("c.png", circles, "image/png")}).status_code == 200


def test_a_photo_with_malformed_exif_is_answered_upright(client):
    """Its pixels are fine: it is answered like the same photo without the EXIF, turned upright."""
    odd = odd_exif_jpeg()
    upright = io.BytesIO()
    Image.open(io.BytesIO(odd)).transpose(Image.Transpose.ROTATE_270).save(upright, format="PNG")
    r = client.post("/predict", files=[("file", ("odd.jpg", odd, "image/jpeg")),
                                       ("file", ("upright.png", upright.getvalue(), "image/png"))])
    assert r.status_code == 200 and r.json()["failed"] == 0, r.text
    odd_answer, plain = r.json()["predictions"]
    assert odd_answer["label"] == plain["label"]
    assert odd_answer["probability"] == pytest.approx(plain["probability"], abs=1e-5)


def fail_to_decode(client, monkeypatch, names: set[str], exc: Exception) -> None:
    """Make the served model's decoding raise ``exc`` (outside Pillow: our own code failing) for ``names``."""
    predictor = client.app.state.predictor
    real = predictor.pixels_from_bytes

    def decode(data, name, **kwargs):
        if name in names:
            raise exc
        return real(data, name, **kwargs)

    monkeypatch.setattr(predictor, "pixels_from_bytes", decode)


def test_a_server_side_decoding_error_is_that_file_s_500_entry_and_is_logged(client, monkeypatch, caplog):
    fail_to_decode(client, monkeypatch, {"boom.png"}, ZeroDivisionError("division by zero"))
    files = [("file", ("circles.png", png_bytes("circles", 64), "image/png")),
             ("file", ("boom.png", png_bytes("stripes", 65), "image/png"))]
    with caplog.at_level("ERROR", logger="vistrain.serve"):
        r = client.post("/predict", files=files)
    assert r.status_code == 200, r.text
    answer, entry = r.json()["predictions"]
    assert answer["label"] == "circles" and r.json()["failed"] == 1
    assert entry == {"filename": "boom.png", "status": 500, "error": "boom.png: server-side error while decoding the "
                     "image (ZeroDivisionError); the server logged the details"}
    logged = [rec for rec in caplog.records if rec.name == "vistrain.serve.core" and rec.levelname == "ERROR"]
    assert len(logged) == 1 and "boom.png" in logged[0].getMessage()
    assert logged[0].exc_info and logged[0].exc_info[0] is ZeroDivisionError  # the traceback, for whoever fixes it

    alone = client.post("/predict", files={"file": ("boom.png", png_bytes(), "image/png")})
    assert alone.status_code == 500 and alone.headers["content-type"] == "application/json"
    assert alone.json()["detail"] == entry["error"]


def test_no_readable_file_with_a_server_side_error_among_them_is_a_500_naming_each(client, monkeypatch,
                                                                                    broken_jpeg_decoder):
    fail_to_decode(client, monkeypatch, {"boom.png"}, RuntimeError("worker gone"))
    files = [("file", ("notes.png", b"text" * 30, "image/png")), ("file", ("boom.png", png_bytes(), "image/png")),
             ("file", ("odd.jpg", jpeg_bytes(), "image/jpeg"))]
    r = client.post("/predict", files=files)
    assert r.status_code == 500, r.text  # not a 400: the client cannot fix boom.png
    detail = r.json()["detail"]
    assert detail.startswith("none of the 3 files could be read: notes.png: not an image")
    assert "boom.png: server-side error" in detail and "odd.jpg: the image decoder cannot read" in detail


def test_a_model_failure_is_still_the_request_s_error(client, monkeypatch):
    """Running the model is not about one file: it fails the request as before, not as error entries."""
    async def broken(pixels):
        raise RuntimeError("onnxruntime fell over")

    monkeypatch.setattr(client.app.state.batcher, "submit", broken)
    with pytest.raises(RuntimeError, match="onnxruntime fell over"):  # TestClient re-raises the app's 500
        client.post("/predict", files=[("file", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(2)])


@pytest.mark.parametrize("parts, status", [
    ([("notes.png", b"text" * 30, "image/png"), ("half.png", png_bytes()[:300], "image/png")], 400),
    ([("bomb1.png", bomb_png(), "image/png"), ("bomb2.png", bomb_png(40000, 40000), "image/png")], 413),
    ([("notes.png", b"text" * 30, "image/png"), ("bomb.png", bomb_png(), "image/png")], 400),  # mixed: plain 400
    ([("odd1.jpg", jpeg_bytes(seed=1), "image/jpeg"), ("odd2.jpg", jpeg_bytes(seed=2), "image/jpeg")], 422),
    ([("notes.png", b"text" * 30, "image/png"), ("odd.jpg", jpeg_bytes(), "image/jpeg")], 400),
], ids=["all-unreadable", "all-too-large", "mixed", "all-undecodable", "mixed-with-undecodable"])
def test_a_request_with_no_readable_file_is_refused_naming_every_file(client, parts, status, broken_jpeg_decoder):
    r = client.post("/predict", files=[("file", part) for part in parts])
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail.startswith(f"none of the {len(parts)} files could be read: ")
    for name, *_ in parts:
        assert f"{name}: " in detail
    assert ("not an image" in detail) == any(n == "notes.png" for n, *_ in parts)
    assert ("truncated" in detail) == any(n == "half.png" for n, *_ in parts)
    assert ("decompression bomb" in detail) == any(n.startswith("bomb") for n, *_ in parts)


def test_openapi_describes_answers_and_error_entries(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    response = schemas["PredictResponse"]["properties"]
    items = response["predictions"]["items"]["anyOf"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in items} == {"ImagePrediction", "ImageFailure"}
    assert set(schemas["ImageFailure"]["required"]) == {"filename", "error", "status"}
    assert response["failed"]["type"] == "integer"
    refusals = client.get("/openapi.json").json()["paths"]["/predict"]["post"]["responses"]
    # 422: an image the decoder fails on ({"detail": str}), or FastAPI's field errors ({"detail": [...]}).
    shapes = refusals["422"]["content"]["application/json"]["schema"]["anyOf"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in shapes} == {"ErrorResponse", "ValidationErrorResponse"}
    assert schemas["ValidationErrorResponse"]["properties"]["detail"]["type"] == "array"
    assert refusals["500"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


def test_micro_batcher_serves_concurrent_requests_in_one_call():
    calls = []

    def run_batch(pixels):
        calls.append(len(pixels))
        flat = pixels.reshape(len(pixels), -1).astype(np.float32)
        return flat[:, :1], flat[:, :2]

    async def scenario():
        b = MicroBatcher(run_batch, max_batch=8)
        await b.start()
        try:
            reqs = [np.full((1 + i % 2, 2, 2, 3), i, np.uint8) for i in range(5)]
            outs = await asyncio.gather(*(b.submit(r) for r in reqs))
        finally:
            await b.stop()
        return reqs, outs, b.stats

    # Own thread, own loop: the session's Playwright browser keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        reqs, outs, stats = pool.submit(asyncio.run, scenario()).result()
    assert calls == [7] and stats.batches == 1 and stats.largest == 7
    for r, (logits, feats) in zip(reqs, outs):  # each request gets back its own rows
        assert len(logits) == len(r) and np.all(logits == r[0, 0, 0, 0]) and feats.shape == (len(r), 2)


def test_lambda_handler(exported_run):
    handler = make_handler(ServeConfig(exported_run, max_request_bytes=200_000))
    event = {"body": base64.b64encode(png_bytes("stripes")).decode(), "isBase64Encoded": True,
             "headers": {"Content-Type": "image/png"}, "queryStringParameters": {"heatmap": "true"}}
    r = handler(event, None)
    assert r["statusCode"] == 200
    body = json.loads(r["body"])
    assert body["predictions"][0]["label"] == "stripes" and body["predictions"][0]["heatmap"].startswith("data:image/jpeg")
    assert body["failed"] == 0  # /predict's shape
    bad = handler({**event, "body": base64.b64encode(b"nope").decode()}, None)
    assert bad["statusCode"] == 400 and "not an image" in json.loads(bad["body"])["detail"]
    assert handler({**event, "body": "***"}, None)["statusCode"] == 400
    assert handler({**event, "headers": {"content-type": "text/html"}}, None)["statusCode"] == 415
    odd = handler({**event, "body": base64.b64encode(odd_exif_jpeg()).decode(), "headers": {"Content-Type": "image/jpeg"}},
                  None)
    assert odd["statusCode"] == 200 and json.loads(odd["body"])["predictions"][0]["label"] == "circles"


def test_serving_path_never_imports_torch(exported_run, tmp_path):
    img = tmp_path / "c.png"
    img.write_bytes(png_bytes())
    code = f"""
import sys
from pathlib import Path
import vistrain.runtime, vistrain.serve, vistrain.cli
from vistrain.runtime import OnnxPredictor
from vistrain.serve import ServeConfig, create_app
from vistrain.serve.lambda_handler import handler
from fastapi.testclient import TestClient
vistrain.cli.build_parser()
pred = OnnxPredictor.from_folder({str(exported_run)!r})
assert pred.predict_paths([{str(img)!r}])[0].probabilities is not None
with TestClient(create_app(ServeConfig(Path({str(exported_run)!r})))) as c:
    r = c.post("/predict", files={{"file": ("c.png", open({str(img)!r}, "rb"), "image/png")}})
    assert r.status_code == 200, r.text
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_serve_command_refuses_a_run_without_export(trained_run, capsys):
    from vistrain.cli import main

    assert main(["serve", str(trained_run[0])]) == 2
    assert "vistrain export" in capsys.readouterr().out


def test_serve_command_refuses_a_variant_the_export_lacks(exported_run, tmp_path, capsys):
    import shutil

    from vistrain.cli import main

    fp32_only = tmp_path / "export"
    shutil.copytree(exported_run, fp32_only)
    info = json.loads((fp32_only / "export.json").read_text())
    info["models"].pop("int8")
    info["default"] = "fp32"
    (fp32_only / "export.json").write_text(json.dumps(info))
    assert main(["serve", str(fp32_only), "--variant", "int8"]) == 2
    assert "no int8 model" in " ".join(capsys.readouterr().out.split())  # rich wraps long lines


@pytest.mark.parametrize("argv, said", [
    (["--port", "99999"], "--port 99999 must be between 1 and 65535"),
    (["--threads", "-3"], "threads -3 must be at least 1"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid:"),
])
def test_serve_command_refuses_bad_addresses_and_threads_before_serving(exported_run, capsys, argv, said):
    from vistrain.cli import main

    assert main(["serve", str(exported_run), *argv]) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert said in out and "Serving" not in out


def test_serve_and_clean_say_when_their_port_is_taken(exported_run, tmp_path, capsys):
    import socket

    from conftest import write_class_folders

    from vistrain.cli import main

    photos = write_class_folders(tmp_path / "photos", per_class=3)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(exported_run), "--port", str(port)]) == 2
        out = " ".join(capsys.readouterr().out.split())
        assert f"cannot listen on 127.0.0.1:{port}" in out and "another program is listening" in out
        assert "Serving" not in out
        # clean says so before its audit (minutes on a big folder), not after it.
        assert main(["clean", str(photos), "--port", str(port), "--no-cache"]) == 2
        out = " ".join(capsys.readouterr().out.split())
        assert f"cannot listen on 127.0.0.1:{port}" in out and "suspect" not in out
        assert not (photos / ".vistrain-quarantine").exists()

"""The prediction server: FastAPI, the model loaded once at start-up, requests micro-batched.

    POST /predict  multipart field ``file`` (repeatable) -> top classes, unsure flag, heat map
                   (with several files, an unreadable one gets an error entry; the rest are answered)
    GET  /health, GET /model, GET / (a web page), GET /openapi.json, GET /docs and /redoc

The docs pages load Swagger UI and ReDoc from ``/static-docs/``, files shipped by the
``fastapi-offline`` package, so they work without internet; without that package they fall back to
FastAPI's defaults (scripts from a CDN).
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel

from vistrain import __version__
from vistrain.runtime import OnnxPredictor
from vistrain.serve.batcher import MicroBatcher
from vistrain.serve.core import (
    ServeConfig,
    UploadError,
    answers,
    check_content_type,
    decode_upload,
    in_upload_order,
    model_description,
    refusal_of_all,
)
from vistrain.serve.page import PAGE


class ClassProbability(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    filename: str
    label: str
    probability: float
    unsure: bool
    familiar: bool | None = None  # False: unlike every training photo (None: the model has no such check)
    similarity: float | None = None  # cosine similarity to the nearest training photo
    top: list[ClassProbability]
    heatmap: str | None = None  # JPEG data URL: the image as the model saw it, with the class activation map


class ImageFailure(BaseModel):
    """A file of a multi-file request that could not be classified; the others are still answered."""

    filename: str
    error: str  # names the file and the reason, as the single-file refusal's ``detail`` does
    # The HTTP status the file would get alone: 400 unreadable, 413 too large, 415 not an image, 422 the
    # image decoder failed on it (damaged, or an unusual variant of its format), 500 a server-side error.
    status: int


class PredictResponse(BaseModel):
    variant: str
    # One entry per uploaded file, in upload order: an answer, or (several files only) why it has none.
    predictions: list[ImagePrediction | ImageFailure]
    failed: int = 0  # how many entries are ImageFailure


class ErrorResponse(BaseModel):
    detail: str


class FieldProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: object = None
    ctx: dict | None = None


class ValidationErrorResponse(BaseModel):
    """FastAPI's own 422 for a request whose fields do not validate; declaring 422 for an undecodable
    image replaces the schema FastAPI would add for it, so it is described here instead."""

    detail: list[FieldProblem]


class BodyLimit:
    """Pure ASGI guard for POST /predict: refuses non-multipart bodies (415) and bodies over the
    limit (413), counting bytes as they arrive so an oversized upload is never read in full."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctype = headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            return await _refuse(send, 415, f"send images as multipart/form-data in the field 'file' "
                                            f"(got content type {ctype or 'none'!r})")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            return await _refuse(send, 413, f"request of {int(length):,} bytes exceeds the limit of {self.max_bytes:,}")
        seen = 0
        started = refused = False

        async def counted_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    # Answer now and tell the app the client left: the rest is never read.
                    refused = True
                    await _refuse(send, 413, f"request body exceeds the limit of {self.max_bytes:,} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            nonlocal started
            if refused:
                return  # already answered 413
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise  # the app's own failure; after a 413 the app only saw the disconnect we sent


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


DOCS_STATIC_URL = "/static-docs"


def _fastapi_with_local_docs(**kwargs) -> FastAPI:
    """FastAPI whose /docs and /redoc pages (and Swagger UI's OAuth2 redirect page) load their scripts,
    styles and icon from ``DOCS_STATIC_URL`` on this server instead of cdn.jsdelivr.net.

    fastapi-offline does what FastAPI's "self-hosting JavaScript and CSS for docs" recipe describes
    (docs_url=None, own routes calling get_swagger_ui_html / get_redoc_html, a StaticFiles mount) with
    Swagger UI 5, which renders FastAPI's OpenAPI 3.1 schema (Swagger UI 4 refuses it)."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:  # not installed: FastAPI's own docs pages, which need the CDN
        return FastAPI(**kwargs)
    return FastAPIOffline(docs_url="/docs", redoc_url="/redoc", static_url=DOCS_STATIC_URL, **kwargs)


def create_app(cfg: ServeConfig) -> FastAPI:
    """The app; the model is loaded by the lifespan (once, when the server starts), not here."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        predictor = OnnxPredictor.from_folder(cfg.model, cfg.variant, cfg.threads)
        batcher = MicroBatcher(predictor.outputs_from_pixels, cfg.max_batch, cfg.max_wait_ms)
        await batcher.start()
        app.state.predictor, app.state.batcher = predictor, batcher
        try:
            yield
        finally:
            await batcher.stop()

    app = _fastapi_with_local_docs(title="vistrain image classifier", version=__version__, lifespan=lifespan,
                                   description="Classify photos with a model exported by `vistrain export`.")
    refusals = {400: {"model": ErrorResponse, "description": "not a usable image (the message says why); with "
                                                              "several files, none of them is (each named)"},
                413: {"model": ErrorResponse, "description": "request too large or too many files; or the only "
                                                              "image (or every one) too large"},
                415: {"model": ErrorResponse, "description": "not multipart/form-data; or the only part (or every "
                                                              "one) not an image"},
                422: {"model": ErrorResponse | ValidationErrorResponse,
                      "description": "the image decoder fails on the only image (or every one): damaged, or an "
                                     "unusual variant of its format; or fields that do not validate (a list)"},
                500: {"model": ErrorResponse, "content": {"text/plain": {"schema": {"type": "string"}}},
                      "description": "a server-side error decoding the only image (or one of several none of "
                                     "which could be read), logged by the server; or running the model (plain "
                                     "text)"}}

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    @app.get("/health")
    async def health(request: Request) -> dict:
        stats = request.app.state.batcher.stats
        return {"status": "ok", "variant": request.app.state.predictor.variant,
                "batches": stats.batches, "images": stats.images, "largest_batch": stats.largest}

    @app.get("/model")
    async def model(request: Request) -> dict:
        return model_description(request.app.state.predictor)

    @app.post("/predict", response_model=PredictResponse, responses=refusals)
    async def predict(request: Request,
                      file: list[UploadFile] = File(..., description="one or more images (repeat the field)"),  # noqa: B008 (FastAPI idiom)
                      top_k: int = Query(3, ge=1, le=100, description="how many classes to list per image"),
                      heatmap: bool = Query(False, description="add a class activation heat map (JPEG data URL)")):
        predictor: OnnxPredictor = request.app.state.predictor
        if len(file) > cfg.max_files:
            raise UploadError(413, f"{len(file)} files in one request; the limit is {cfg.max_files}")
        # A bad file among several costs only its own answer: a user sending 20 photos gets 19 answers and
        # one error entry, not a 400 for all. Limits on the request as a whole stay refusals (above, and
        # BodyLimit), and so does a request with nothing readable (refusal_of_all).
        names, pixels, failures = [], [], {}
        for i, upload in enumerate(file):
            name = upload.filename or f"file {i + 1}"
            try:
                check_content_type(name, upload.content_type)
                data = await upload.read()
                pixels.append(await run_in_threadpool(decode_upload, predictor, data, name, cfg.max_pixels))
                names.append(name)
            except UploadError as exc:
                failures[i] = (name, exc)
        if not pixels:
            raise refusal_of_all(list(failures.values()))
        batch = np.stack(pixels)
        logits, feats = await request.app.state.batcher.submit(batch)
        rows = await run_in_threadpool(answers, predictor, names, batch, logits, feats, top_k, heatmap)
        return in_upload_order(predictor.variant, rows, failures)

    app.add_middleware(BodyLimit, max_bytes=cfg.max_request_bytes)
    return app

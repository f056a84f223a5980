"""An AWS-Lambda-style handler: API Gateway / function URL event with the image as the body.

    event = {"body": base64 image bytes, "isBase64Encoded": true,
             "headers": {"content-type": "image/jpeg"}, "queryStringParameters": {"heatmap": "true"}}
    -> {"statusCode": 200, "headers": {...}, "body": JSON like POST /predict}

The model folder comes from $VISTRAIN_MODEL (default ``model`` next to the function code). The
predictor is loaded once per container and kept for warm invocations.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

from vistrain.runtime import ExportFolderError, OnnxPredictor
from vistrain.serve.core import (
    ServeConfig,
    UploadError,
    answers,
    check_content_type,
    decode_upload,
    in_upload_order,
)


@functools.lru_cache(maxsize=2)
def _predictor(folder: str, variant: str) -> OnnxPredictor:
    return OnnxPredictor.from_folder(folder, variant)


def make_handler(cfg: ServeConfig) -> Callable[[dict, object], dict]:
    def handler(event: dict, context: object = None) -> dict:
        try:
            predictor = _predictor(str(cfg.model), cfg.variant)
        except ExportFolderError as exc:
            return _reply(500, {"detail": f"model not available: {exc}"})
        try:
            return _reply(200, _predict(predictor, event or {}, cfg))
        except UploadError as exc:
            return _reply(exc.status, {"detail": exc.message})

    return handler


def _predict(predictor: OnnxPredictor, event: dict, cfg: ServeConfig) -> dict:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    params = event.get("queryStringParameters") or {}
    name = params.get("filename") or "body"
    check_content_type(name, headers.get("content-type"))
    body = event.get("body") or ""
    try:
        data = base64.b64decode(body, validate=True) if event.get("isBase64Encoded") else body.encode("latin-1")
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise UploadError(400, f"{name}: body is not valid base64 ({exc})") from exc
    if len(data) > cfg.max_request_bytes:
        raise UploadError(413, f"{name}: {len(data):,} bytes exceeds the limit of {cfg.max_request_bytes:,}")
    try:
        top_k = int(params.get("top_k", 3))
    except ValueError:
        raise UploadError(400, f"top_k {params.get('top_k')!r} is not a whole number") from None
    if not 1 <= top_k <= 100:
        raise UploadError(400, f"top_k {top_k} must be between 1 and 100")
    pixels = decode_upload(predictor, data, name, cfg.max_pixels)[None]
    logits, feats = predictor.outputs_from_pixels(pixels)
    heat = str(params.get("heatmap", "false")).lower() in ("1", "true", "yes")
    # One image per event, so a bad one is the event's refusal (as for a one-file POST /predict);
    # the answer has /predict's shape, ``failed`` included.
    return in_upload_order(predictor.variant, answers(predictor, [name], pixels, logits, feats, top_k, heat), {})


def _reply(status: int, body: dict) -> dict:
    return {"statusCode": status, "headers": {"content-type": "application/json"}, "body": json.dumps(body)}


def handler(event: dict, context: object = None) -> dict:
    """The entry point to name in the Lambda configuration (``vistrain.serve.lambda_handler.handler``)."""
    folder = os.environ.get("VISTRAIN_MODEL") or str(Path(os.environ.get("LAMBDA_TASK_ROOT", ".")) / "model")
    return make_handler(ServeConfig(Path(folder), os.environ.get("VISTRAIN_VARIANT", "auto")))(event, context)

"""What the server and the Lambda handler share: checking an upload, decoding it as training did,
turning the model's outputs into an answer (top classes, unsure flag, heat map), and putting one
request's answers and per-file refusals together."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vistrain.data.images import ImageError, error_kind
from vistrain.heatmap import jpeg_data_url, overlay
from vistrain.runtime import OnnxPredictor, softmax

# Declared types we accept for an image part; anything else is refused before decoding.
ACCEPTED_TYPES = ("image/", "application/octet-stream")

# Packages that decode an upload's bytes: an exception raised while their code runs is about the file
# (an odd one they choke on), not about the server.
DECODERS = ("PIL", "pi_heif")

log = logging.getLogger(__name__)


@dataclass
class ServeConfig:
    model: Path  # an export folder, or a run folder holding export/
    variant: str = "auto"  # auto (the export's default), fp32, int8
    threads: int | None = None  # ONNX Runtime threads (default: all cores)
    max_request_bytes: int = 20 * 2**20  # whole request body, counted while it arrives
    max_files: int = 16  # images in one request
    max_pixels: int = 40_000_000  # per image, from its header, before decoding (decompression bombs)
    max_batch: int = 16  # images in one model call, across concurrent requests
    max_wait_ms: float = 0.0  # extra wait for a batch to fill (0: batches form under load only)

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_files", "max_pixels", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} {getattr(self, name)} must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads {self.threads} must be at least 1 (or left out: all cores)")


class UploadError(Exception):
    """A request the server refuses; ``status`` is the HTTP status, the message says why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def check_content_type(name: str, content_type: str | None) -> None:
    if content_type and not content_type.lower().startswith(ACCEPTED_TYPES):
        raise UploadError(415, f"{name}: content type {content_type!r} is not an image "
                               "(send image/jpeg, image/png, image/webp, ...)")


def decode_upload(predictor: OnnxPredictor, data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Bytes -> model pixels, as training decodes a file; refusals say what is wrong with the file.

    Any failure is this file's refusal (an UploadError), never the whole request's: the reasons the
    decoder knows (ImageError) as before, anything else by :func:`unexpected_decode_error`."""
    try:
        return predictor.pixels_from_bytes(data, name, max_pixels=max_pixels)
    except ImageError as exc:
        raise UploadError(413 if exc.reason.startswith("decompression bomb") else 400, f"{name}: {exc.reason}") from exc
    except (MemoryError, Image.DecompressionBombError) as exc:
        raise UploadError(413, f"{name}: image too large to decode") from exc
    except Exception as exc:
        raise unexpected_decode_error(name, exc) from exc


def unexpected_decode_error(name: str, exc: Exception) -> UploadError:
    """The refusal for an exception the decoder does not turn into a reason.

    The decoder maps the errors Pillow is known to raise on damaged files; anything else raised while
    Pillow (or pi_heif) ran is still the file's content failing, in a way no one foresaw: 422. Raised by our own code, it is a server-side bug the client
    cannot fix: 500, and the traceback goes to the log, since the client is told only its kind."""
    kind = error_kind(exc)
    if raised_while_decoding(exc):
        log.debug("%s: the image decoder failed on it", name, exc_info=exc)
        said = f"{kind}: {str(exc)[:200]}" if str(exc) else kind  # Pillow's words, kept short
        return UploadError(422, f"{name}: the image decoder cannot read this file ({said}); it may be damaged "
                                "or an unusual variant of its format")
    log.error("%s: server-side error while decoding the upload", name, exc_info=exc)
    return UploadError(500, f"{name}: server-side error while decoding the image ({kind}); the server logged "
                            "the details")


def raised_while_decoding(exc: BaseException) -> bool:
    """Whether a decoder (``DECODERS``) was on the stack where ``exc`` was raised."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).split(".")[0] in DECODERS:
            return True
        tb = tb.tb_next
    return False


def refusal_of_all(failures: list[tuple[str, UploadError]]) -> UploadError:
    """The refusal for a request none of whose images could be read.

    One file: its own refusal, unchanged. Several: one message naming every file and its reason, so
    a client fixes them all in one go instead of learning of them one resubmission at a time. The
    status is theirs when they share it; mixed reasons get a plain 400, since a 413 or 415 for the
    whole request would send a client after the wrong cause (shrinking it, or changing its type),
    unless one is the server's own failure (500): a 4xx would blame the client for that file too."""
    if len(failures) == 1:
        return failures[0][1]
    statuses = {exc.status for _, exc in failures}
    status = statuses.pop() if len(statuses) == 1 else 500 if max(statuses) >= 500 else 400
    return UploadError(status, f"none of the {len(failures)} files could be read: "
                               + "; ".join(exc.message for _, exc in failures))


def in_upload_order(variant: str, rows: list[dict], failures: dict[int, tuple[str, UploadError]]) -> dict:
    """The response body: ``rows`` (answers for the readable images, in upload order) and one entry
    per unreadable image (``failures``: its position in the upload -> name, refusal), put back at
    that position, so ``predictions[i]`` is always about the i-th file sent."""
    answered = iter(rows)
    predictions = [
        {"filename": failures[i][0], "error": failures[i][1].message, "status": failures[i][1].status}
        if i in failures else next(answered)
        for i in range(len(rows) + len(failures))
    ]
    return {"variant": variant, "predictions": predictions, "failed": len(failures)}


def answers(predictor: OnnxPredictor, names: list[str], pixels: np.ndarray, logits: np.ndarray, feats: np.ndarray,
            top_k: int = 3, heatmap: bool = False) -> list[dict]:
    probs = softmax(logits, predictor.temperature)
    threshold = predictor.unsure_threshold
    sims = predictor.similarity(feats)
    out = []
    for i, name in enumerate(names):
        order = np.argsort(-probs[i])[: max(1, top_k)]
        best = int(order[0])
        cam = predictor.heatmap(feats[i], best) if heatmap else None
        out.append({
            "filename": name,
            "label": predictor.classes[best],
            "probability": float(probs[i, best]),
            "unsure": bool(threshold is not None and probs[i, best] < threshold),
            # Unlike every training photo (vistrain.familiarity); None for a model without the check.
            "familiar": None if sims is None else predictor.familiarity.verdict(float(sims[i])),
            "similarity": None if sims is None else round(float(sims[i]), 4),
            "top": [{"label": predictor.classes[j], "probability": float(probs[i, j])} for j in order],
            "heatmap": None if cam is None else jpeg_data_url(overlay(pixels[i], cam)),
        })
    return out


def model_description(predictor: OnnxPredictor) -> dict:
    info = predictor.info
    return {
        "classes": predictor.classes,
        "version": f"vistrain {info.extra.get('vistrain_version', '?')}, exported {info.extra.get('created', '?')}",
        "backbone": info.backbone,
        "variant": predictor.variant,
        "preprocessing": info.preprocessing.to_dict(),
        "temperature": predictor.temperature,
        "unsure_threshold": predictor.unsure_threshold,
        "familiar_threshold": None if predictor.familiarity is None else predictor.familiarity.threshold,
        "metrics": {"models": info.models, "validation": info.extra.get("validation", {})},
    }

#!/usr/bin/env python3
"""Classify photos with the model in this folder, with Pillow, numpy and ONNX Runtime alone.

    pip install onnxruntime numpy pillow
    python predict_onnx.py photo.jpg [more.jpg ...] [photos/ ...] [--fp32]

A folder stands for every file in it and its sub-folders, as `vistrain predict` reads it (hidden
files and folders, __MACOSX, vistrain runs and `--into` copies passed over). Prints a
tab-separated line per photo: the file, the answer, its probability, the photo's similarity
to the nearest training photo, then every class's probability. The answer is "unfamiliar" when the
similarity is below the model's familiarity threshold (the photo is unlike every training photo:
familiar.safetensors), else "unsure" below the model's unsure threshold (export.json), else the
class. The photo is prepared step for step as vistrain prepares it (upright, transparent areas
white, resized and cut as in training), so the answers are those `vistrain predict` gives.

Written by `vistrain export`; it reads export.json, so it stays right for this folder's model.
"""

import json
import os
import struct
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


# EXIF orientation -> the transpose that makes the photo upright.
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}


def upright(img):
    """Turned as the orientation tag says. Only that tag is read (ImageOps.exif_transpose writes every
    tag back, and one malformed tag makes it fail on a photo whose pixels are fine), as vistrain does."""
    try:
        method = UPRIGHT.get(img.getexif().get(0x0112))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, TypeError):
        # EXIF too damaged to read: the pixels as stored
        return img
    return img.transpose(method) if method is not None else img


def load(path, size):
    """The photo upright, as 8-bit RGB; ``size``: the model's input size (see ``draft``)."""
    with Image.open(path) as img:
        if img.format == "JPEG":
            img.draft("RGB", (size, size))  # a big JPEG decodes at 1/2, 1/4 or 1/8 scale
        img.load()
        img = upright(img)
    if img.mode == "I" or img.mode.startswith("I;16"):  # 16-bit grey: the full range onto 8 bits
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        canvas = Image.new("RGBA", img.size, (255, 255, 255, 255))  # transparent areas white, as a viewer shows them
        canvas.alpha_composite(img.convert("RGBA"))
        img = canvas
    return img.convert("RGB")


def pixels(img, prep):
    """The square the model sees, as a 1 x 3 x size x size float32 array (``prep``: export.json's
    "preprocessing")."""
    s, (w, h), resample = prep["size"], img.size, RESAMPLE[prep["interpolation"]]
    if prep["resize"] == "squish":
        img = img.resize((s, s), resample)
    elif prep["resize"] == "crop":  # shorter side to the input size, then the centre square
        k = s / min(w, h)
        nw, nh = max(s, round(w * k)), max(s, round(h * k))
        left, top = (nw - s) // 2, (nh - s) // 2
        img = img.resize((nw, nh), resample).crop((left, top, left + s, top + s))
    else:  # pad: longer side to the input size, centred on the mean colour
        k = s / max(w, h)
        nw, nh = max(1, round(w * k)), max(1, round(h * k))
        canvas = Image.new("RGB", (s, s), tuple(round(m * 255) for m in prep["mean"]))
        canvas.paste(img.resize((nw, nh), resample), ((s - nw) // 2, (s - nh) // 2))
        img = canvas
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(prep["mean"], np.float32)) / np.asarray(prep["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def photos(args):
    """The files given, and every file under the folders given (sorted), each once."""
    seen = set()
    for path in _listed(args):
        if path.resolve() not in seen:
            seen.add(path.resolve())
            yield path


def _listed(args):
    for arg in args:
        top = Path(arg)
        if not top.is_dir():
            yield top
            continue
        found = []
        for here, dirs, names in os.walk(top):
            here = Path(here)
            if here != top and (((here / "model.safetensors").is_file() and (here / "config.json").is_file())
                                or (here / ".vistrain-sorted").is_file()):
                dirs[:] = []  # a vistrain run, or copies sorted by `vistrain predict --into`
                continue
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
            # Links leading nowhere too: they are answered with their error, as vistrain does.
            found += [here / n for n in names if not n.startswith(".")
                      and ((here / n).is_file() or ((here / n).is_symlink() and not (here / n).is_dir()))]
        yield from sorted(found)


def familiarity(folder, threshold):
    """(bank, blocks, threshold) from familiar.safetensors, read with numpy alone; None without it.
    ``threshold``: the model file's own (int8 features differ a little), else the file's."""
    path = folder / "familiar.safetensors"
    if not path.is_file():
        return None
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")  # safetensors: header length, JSON header, then the tensors
    header = json.loads(raw[8 : 8 + n])
    meta, entry = header.get("__metadata__", {}), header["bank"]
    start, end = entry["data_offsets"]
    dtype = {"F16": np.float16, "F32": np.float32}[entry["dtype"]]
    bank = np.frombuffer(raw, dtype, offset=8 + n + start, count=(end - start) // np.dtype(dtype).itemsize)
    blocks = [int(b) for b in meta["blocks"].split(",")]
    return bank.reshape(entry["shape"]).astype(np.float32), blocks, float(meta["threshold"] if threshold is None else threshold)


def similarity(features, blocks, bank):
    """Cosine similarity of one image's pooled features (each backbone's block unit length) to the
    nearest training photo's."""
    parts = np.split(features.astype(np.float32), np.cumsum(blocks)[:-1])
    row = np.hstack([p / max(float(np.linalg.norm(p)), 1e-12) for p in parts]) / np.sqrt(len(blocks))
    return min(float((bank @ row).max()), 1.0)


def main(args, folder=None):
    if "-h" in args or "--help" in args:
        print(__doc__.strip())
        return 0
    folder = Path(folder or Path(__file__).resolve().parent)
    info = json.loads((folder / "export.json").read_text(encoding="utf-8"))
    prep = info["preprocessing"]
    variant = "fp32" if "--fp32" in args else info["default"]
    paths = [a for a in args if a != "--fp32"]
    unknown = [a for a in paths if a.startswith("-")]
    if unknown or not paths:
        usage = "\n".join(line.strip() for line in __doc__.strip().splitlines()[2:4])
        print((f"unknown option {unknown[0]}\n" if unknown else "") + usage, file=sys.stderr)
        return 2
    session = ort.InferenceSession(str(folder / info["models"][variant]["file"]), providers=["CPUExecutionProvider"])
    classes, threshold, failed = info["classes"], info["unsure_threshold"], 0
    familiar = familiarity(folder, info["models"][variant].get("familiar_threshold"))
    for path in photos(paths):
        try:
            x = pixels(load(path, prep["size"]), prep)
        except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for unreadable files
            print(f"{path}\terror\t{exc}")
            failed += 1
            continue
        logits, features = session.run(["logits", "features"], {"pixels": x})
        logits = logits[0] / info["temperature"]
        p = np.exp(logits - logits.max())
        p /= p.sum()
        best = int(p.argmax())
        answer = "unsure" if threshold is not None and p[best] < threshold else classes[best]
        sim = "-"
        if familiar is not None:
            bank, blocks, limit = familiar
            value = similarity(features[0].mean(axis=(1, 2)), blocks, bank)
            answer, sim = ("unfamiliar" if value < limit else answer), f"{value:.4f}"
        print("\t".join([str(path), answer, f"{p[best]:.4f}", sim, *(f"{c}={q:.4f}" for c, q in zip(classes, p))]))
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        code = main(sys.argv[1:])
        sys.stdout.flush()  # a reader that went away shows here when the lines were still buffered
    except BrokenPipeError:
        # `python predict_onnx.py photos/ | head`: the reader has what it wanted. Without this, a
        # traceback, and another when Python flushes stdout at exit; stdout goes to /dev/null instead.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE: what a shell shows for a tool ended by a closed pipe
    sys.exit(code)

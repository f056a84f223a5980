"""int8 versions of an exported graph with ONNX Runtime's quantization tools.

Static quantization (QDQ, per-channel weights, activation ranges calibrated on training images) is
the fast one on CPU for EfficientNet-Lite (ReLU6, no squeeze-excitation); dynamic quantization
needs no calibration but runs depthwise convolutions slowly. The export measures both.

The stem convolution (every member's, in an ensemble) and the classifier stay in float32 (the
usual practice for first and last layers). The head was the fragile one: it carries the linear
probe's standardisation folded in, so 8-bit pooled features came out amplified, and on a small
model the exact int8 result (ONNX Runtime with graph optimisation off, and the fused kernels of a
VNNI CPU, which agree) matched float32 on only 43% of images; float32 head: 100%. The stem convolution is where CPUs
without VNNI lose most to ONNX Runtime's saturating u8s8 kernels: keeping it float32 raised
top-1 agreement with float32 from 90% to 97% on the climbing validation set here, at the same
latency. Both layers together are ~0.1% of the weights.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import numpy as np

from vistrain.data.transforms import Preprocessing, normalize_array

METHODS = ("static", "dynamic")


def _reader(pixels: np.ndarray, prep: Preprocessing, batch: int = 8):
    from onnxruntime.quantization import CalibrationDataReader

    class PixelReader(CalibrationDataReader):
        """Feeds calibration batches, preprocessed exactly as at prediction time."""

        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(pixels):
                return None
            x = normalize_array(pixels[self.start : self.start + batch], prep)
            self.start += batch
            return {"pixels": x}

        def rewind(self) -> None:
            self.start = 0

    return PixelReader()


def prepare(fp32: Path, out: Path) -> Path:
    """Shape inference and graph optimisation before quantization, as ONNX Runtime recommends."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    return out


def quantize(prepared: Path, out: Path, method: str, calibration: np.ndarray, prep: Preprocessing) -> Path:
    from onnxruntime.quantization import (
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if method not in METHODS:
        raise ValueError(f"int8 method {method!r} is not one of {', '.join(METHODS)}")
    keep = float_nodes(prepared)
    # The quantizer logs a warning on the root logger for every tensor it leaves in float: noise here.
    with _quiet_root_logger():
        if method == "static":
            # Activation ranges: the mean of each calibration batch's extremes, not the extremes of
            # them all. The largest value in a sample moves with the sample: on the fine-tuned climbing
            # model, four draws of 100 training images gave int8 89.9-93.6% validation accuracy (fp32
            # 93.6%), of 300 images 90.8-93.6%; averaged batch extremes, 92.7-93.6% over three draws.
            quantize_static(str(prepared), str(out), _reader(calibration, prep), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep, extra_options={"CalibMovingAverage": True})
        else:
            quantize_dynamic(str(prepared), str(out), per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=keep)
    return out


ARITHMETIC = ("Mul", "Add", "Sub", "Div")


def float_nodes(path: Path) -> list[str]:
    """Names of the nodes that stay float32: every stem (a convolution with no convolution before
    it: one per member of an ensemble, whose backbones all read the input, and any arithmetic on
    the pixels before it) and the Gemm/MatMul
    writing an output (the classifier head). Found by the graph's shape, not by name, so any
    backbone's graph works. Keeping only the first member's stem cost a Lite0+1+2 ensemble on the
    digits demo 3.75 points of validation accuracy (87.5% against 91.25%) and 9 of 100 training
    answers."""
    import onnx

    graph = onnx.load(str(path)).graph
    outputs = {o.name for o in graph.output}
    after_conv: set[str] = set()  # tensors computed from some convolution's output
    stems = []
    for n in graph.node:  # ONNX lists nodes in topological order
        fed_by_conv = any(t in after_conv for t in n.input)
        if not fed_by_conv and (n.op_type == "Conv" or n.op_type in ARITHMETIC):
            stems.append(n.name)  # with the scale and shift of a member normalised its own way (Renormalized)
        if n.op_type == "Conv" or fed_by_conv:
            after_conv.update(n.output)
    heads = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul") and outputs & set(n.output)]
    return stems + heads


@contextlib.contextmanager
def _quiet_root_logger():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def single_image_latency_ms(path: Path, size: int, runs: int = 15, threads: int = 1) -> float:
    """Median milliseconds for one image on ``threads`` threads (after a warm-up run)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    sess.run(None, {"pixels": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"pixels": x})
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)

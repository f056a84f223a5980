"""Torch-free inference on an exported model: onnxruntime, numpy and Pillow only.

Nothing here (or in what it imports) may import torch: the serving install has none.
"""

from vistrain.runtime.bundle import (
    ExportFolderError,
    ExportInfo,
    find_export,
    read_export,
)
from vistrain.runtime.predictor import OnnxPredictor, Prediction, softmax

__all__ = ["ExportFolderError", "ExportInfo", "OnnxPredictor", "Prediction", "find_export", "read_export", "softmax"]

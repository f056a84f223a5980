"""Export a trained run to ONNX (fp32 and int8), verified on the run's validation images."""

from vistrain.export.pipeline import (
    ExportConfig,
    ExportError,
    ExportResult,
    Int8Refused,
    describe,
    export_run,
)

__all__ = ["ExportConfig", "ExportError", "ExportResult", "Int8Refused", "describe", "export_run"]

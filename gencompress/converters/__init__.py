"""Writers of deployable files (TFLite, ONNX; float and quantized) and the runtimes that measure them."""

from gencompress.config import FORMATS, PRECISIONS

__all__ = ["FORMATS", "PRECISIONS"]

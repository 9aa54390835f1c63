"""tf2onnx internals (1.17)."""

from __future__ import annotations


def reset_name_counter() -> None:
    """Restart the process-wide counter behind tf2onnx's ``name__N`` node names."""
    from tf2onnx import utils

    if not hasattr(utils, "INTERNAL_NAME"):
        raise RuntimeError("tf2onnx.utils has no INTERNAL_NAME: the tf2onnx release changed it")
    utils.INTERNAL_NAME = 1

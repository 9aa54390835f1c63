"""The versions of gencompress and the libraries that shaped its artifacts, for the report."""

from __future__ import annotations

from importlib import metadata

PACKAGES = {
    "gencompress": "gencompress",
    "tensorflow": "tensorflow",
    "tf_keras": "tf-keras",
    "litert": "ai-edge-litert",
    "onnxruntime": "onnxruntime",
    "tf2onnx": "tf2onnx",
    "onnx": "onnx",
}


def versions() -> dict[str, str | None]:
    found = {}
    for key, dist in PACKAGES.items():
        try:
            found[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[key] = None
    return found

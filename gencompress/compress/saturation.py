"""Where tanh and sigmoid saturate: the one table both quantization paths read.

A generator trained to saturation drives its logits far past the knee: what matters for int8 is
where the output stops changing. Post-training quantization clamps a logit tensor's calibrated
range at ``clamp`` (beyond it the activation is within 5e-5 of its rail, well under one int8
output step); quantization-aware training bounds the logits at ``train`` (beyond it LiteRT's
int8 output no longer changes: tanh(3.5) and sigmoid(7) are within a quarter step, 1/512 and
1/1024, of their rails) and fake-quantizes the output at LiteRT's fixed int8 range ``output``
(scale 1/128 and 1/256, 256 steps).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Saturation:
    clamp: float
    train: float
    output: tuple[float, float]


SATURATION = {
    "sigmoid": Saturation(clamp=10.0, train=7.0, output=(0.0, 255.0 / 256.0)),
    "tanh": Saturation(clamp=5.0, train=3.5, output=(-1.0, 127.0 / 128.0)),
}
# The op each activation becomes: TFLite builtins and ONNX node types.
OPS = {"LOGISTIC": "sigmoid", "TANH": "tanh", "Sigmoid": "sigmoid", "Tanh": "tanh"}

"""Quantization-aware training (tfmot) for generators, exported to int8 TFLite and QDQ ONNX.

The QAT model is built from a *copy* of the float model; each step fixes something tfmot 0.8.1
(with TF 2.21's converter) gets wrong or leaves out for generators:

1. **BatchNorm folding** (``fold_batchnorm``). tfmot folds BatchNorm only after Conv2D and
   DepthwiseConv2D. After Dense it fake-quantizes the Dense kernel *before* the BatchNorm scale,
   so the converter, which folds the BatchNorm into the kernel, finds weights off the int8 grid
   and leaves the whole FULLY_CONNECTED in float; after Conv2DTranspose it refuses the model
   (BatchNormalization is not in its registry). We fold BN into the preceding
   Dense/Conv/ConvTranspose kernel and bias first, output-equal in float.
2. **Annotation** (``annotate``): layers tfmot's 8-bit registry supports get its config; PReLU
   gets ours (int8 alpha and output); a layer ending in tanh/sigmoid also gets its output
   fake-quantized at LiteRT's fixed int8 output scale and its logit range bounded where the
   output saturates (``SaturatingOutputConfig``); layers tfmot cannot quantize (custom layers,
   TFOpLambda, Embedding, a BatchNorm that could not be folded, activations it has no rule for)
   stay float and are listed.
3. **Layout** (``_scheme``): tfmot's Concatenate transform reorders the inputs of a
   Concatenate fed by a model input, and its ReLU transform drops the kernel quantization of
   the Dense/Conv2D before a ReLU layer; both are replaced.
4. **Range calibration** (``calibrate_ranges``): tfmot starts every activation range at ±6 and
   moves it by an EMA with decay 0.999 (after 1,000 steps a range is still 37 % its initial
   value). We set the ranges to the min/max seen on the calibration set first, as post-training
   calibration does. Model-input ranges then stay fixed while fine-tuning.
5. **Fine-tuning** against the original float model (``finetune.train_to_match``): the teacher's
   outputs are the targets, held-out PSNR drives early stopping.

Exports (``convert_qat_tflite``, ``export_qat_onnx``) keep the learnt ranges: the TFLite
converter reads them from the fake-quant ops; tf2onnx turns each activation fake-quant into a
QuantizeLinear/DequantizeLinear pair with the same scale and zero point, and the weights (TF has
folded their fake-quants into constants on the int8 grid) are stored as int8 behind a
DequantizeLinear. Both are measured against the QAT Keras model (``agreement``).

With ``prune_preserving`` (``prune … --then qat``) the same steps use tfmot's
pruning-preserving scheme, so that zero weights stay zero through fine-tuning and in the int8
files.

Modules: ``batchnorm`` (folding), ``schemes`` (annotation, tfmot configs and layout fixes),
``model`` (building and range calibration), ``export`` (TFLite and ONNX).
"""

from gencompress.compress.qat.export import AGREEMENT_DB, PRELU_NOTE, convert_qat_tflite, export_qat_onnx, int8_kernel_sparsity
from gencompress.compress.qat.model import QatModel, build_qat_model, calibrate_ranges, check_flat, settle_weight_ranges
from gencompress.compress.batchnorm import FOLD_TOLERANCE, fold_batchnorm
from gencompress.compress.qat.schemes import SATURATING_OUTPUT_RANGES, SATURATION_BOUNDS, annotate

__all__ = [
    "AGREEMENT_DB", "FOLD_TOLERANCE", "PRELU_NOTE", "QatModel", "SATURATING_OUTPUT_RANGES", "SATURATION_BOUNDS",
    "annotate", "build_qat_model", "calibrate_ranges", "check_flat", "convert_qat_tflite", "export_qat_onnx",
    "fold_batchnorm", "int8_kernel_sparsity", "settle_weight_ranges",
]

"""Writers of deployable files: TFLite and ONNX, float and quantized."""

PRECISIONS = ("float32", "float16", "dynamic", "int8", "int16x8")
FORMATS = ("tflite", "onnx")

"""gencompress: make a trained Keras generator small and fast, measured against the float model."""

from gencompress.tfenv import prepare_environment

# Before anything can import TensorFlow: tf-keras for tfmot, oneDNN off for repeatable results.
prepare_environment()

"""Lazy, quiet imports of TensorFlow and tf-keras.

tfmot needs Keras 2 (tf-keras): ``TF_USE_LEGACY_KERAS=1`` must be set before TensorFlow is first
imported. The CLI imports nothing heavy at start-up (``gencompress --help`` stays fast), so every
module that needs TensorFlow calls these functions instead of importing it at the top.
"""

import os


def prepare_environment():
    """Set what TensorFlow reads once, at its first import. ``import gencompress`` calls this, so
    it holds whichever module (ours or a library's) imports TensorFlow first."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # oneDNN reorders float sums with thread count; off so results repeat exactly.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def import_tf():
    """Return the ``tensorflow`` module, configured for tf-keras and quiet logs."""
    import sys

    prepare_environment()
    if "tensorflow" not in sys.modules:
        with native_output_captured():  # absl/CUDA start-up lines on a machine without a GPU
            import tensorflow

            tensorflow.config.list_physical_devices()  # the CUDA probe prints when first asked
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def import_keras():
    """Return ``tf_keras`` (Keras 2), the Keras that tfmot and our converters use."""
    import_tf()
    import tf_keras

    return tf_keras


class native_output_captured:
    """Capture what native code (TFLite converter, tf2onnx, onnxruntime) prints to fd 1 and 2.

    Converters print progress lines straight to the file descriptors, past Python's ``sys.stderr``;
    a CLI run should show the table, not that. The captured text is kept in ``.text`` so a
    failure can still say what the converter said.

    The end is a checkpoint for Ctrl-C (``interrupts.check``): an interrupt that landed in the
    native call came back, if at all, as the converter's own error or as nothing. The descriptors
    are swapped with stop signals held back: an interrupt between the two ``dup2`` would leave
    the terminal's stderr pointing at the capture file, and the error line with it.
    """

    def __enter__(self):
        import sys
        import tempfile
        import warnings

        from gencompress.interrupts import deferred

        sys.stdout.flush()
        sys.stderr.flush()
        self.text = ""
        try:
            with deferred():  # a signal held back here is delivered as the block ends
                self._file = tempfile.TemporaryFile(mode="w+b")
                self._saved = [os.dup(1), os.dup(2)]
                os.dup2(self._file.fileno(), 1)
                os.dup2(self._file.fileno(), 2)
                self._warnings = warnings.catch_warnings()
                self._warnings.__enter__()
                warnings.simplefilter("ignore")
        except BaseException:
            self.__exit__(None, None, None)  # no __exit__ follows a failed __enter__
            raise
        return self

    def __exit__(self, *exc):
        import sys

        from gencompress.interrupts import check, deferred

        with deferred():
            sys.stdout.flush()
            sys.stderr.flush()
            if getattr(self, "_saved", None):
                os.dup2(self._saved[0], 1)
                os.dup2(self._saved[1], 2)
                for fd in self._saved:
                    os.close(fd)
                self._saved = None
            if getattr(self, "_warnings", None) is not None:
                self._warnings.__exit__(*exc)
                self._warnings = None
            if getattr(self, "_file", None) is not None:
                self._file.seek(0)
                self.text = self._file.read().decode(errors="replace")
                self._file.close()
                self._file = None
        check()
        return False

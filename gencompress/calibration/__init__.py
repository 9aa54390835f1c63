from gencompress.calibration.sources import CalibrationSet, build_sets

__all__ = ["CalibrationSet", "build_sets"]

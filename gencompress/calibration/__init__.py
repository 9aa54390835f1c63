from gencompress.calibration.calibration import Calibration, build_sets
from gencompress.calibration.sources import CalibrationSet

__all__ = ["Calibration", "CalibrationSet", "build_sets"]

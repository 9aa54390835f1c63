"""Where the published generators live (``../shared/real_generators``) and how each one loads.

They are test data, not part of the repository: tests and benchmarks read them in place and skip
with a reason when the folder is absent.
"""

import json
from pathlib import Path

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real_generators"
# The one CycleGAN's Lambdas pad with tf.pad: --trust-code and a custom-objects file holding only
# the Lambda's helpers (tf itself).
LAMBDA_HELPERS = "import tensorflow as tf\n"


def manifest() -> list[dict]:
    if not (REAL / "MANIFEST.json").is_file():
        return []
    return json.loads((REAL / "MANIFEST.json").read_text())


def output_values(entry: dict) -> int:
    """Output elements per sample: what a model's evaluation and calibration cost scale with."""
    if entry["outputs"] is None:
        return 1 << 30
    total = 0
    for shape in entry["outputs"]:
        n = 1
        for d in shape[1:]:
            n *= d
        total += n
    return total


def load_args(entry: dict, folder: Path) -> list[str]:
    """CLI arguments that load ``entry``: ``--trust-code --custom-objects`` only where it has a Lambda."""
    if "Lambda" not in entry["custom_layers"]:
        return []
    helpers = Path(folder) / "lambda_helpers.py"
    helpers.write_text(LAMBDA_HELPERS)
    return ["--trust-code", "--custom-objects", str(helpers)]

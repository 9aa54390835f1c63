"""Where the published generators live (``../shared/real_generators`` and its ``batch2/``) and how
each one loads, and the corpus split every change to the quantization search is checked on.

They are test data, not part of the repository: tests and benchmarks read them in place and skip
with a reason when the folder is absent.
"""

import json
from pathlib import Path

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "real_generators"
BATCH2 = REAL / "batch2"
# The one CycleGAN's Lambdas pad with tf.pad: --trust-code and a custom-objects file holding only
# the Lambda's helpers (tf itself).
LAMBDA_HELPERS = "import tensorflow as tf\n"

# The corpus split (issue 19), fixed before anything in batch2 was run: the 14 generators of the
# first batch (the search was tuned on them) and half of batch2 are the development half; the
# other half of batch2 is held out. Batch2 was split within each kind (as its MANIFEST names it),
# ordered by the SHA-256 of the file name, alternating development / held out across kinds:
# changes to the search and its defaults are made looking at the development half only, and
# checked on the held-out half, whose failures are reported, not tuned on.
HELD_OUT = frozenset({
    "marzekan_wcgan_gp_tabular.h5", "audiorec_gru_conv1dT_generator.h5", "colourspark_colorization_ae_k33.keras",
    "umikry_face_sr_x4_k223.h5", "sathiesh_sr_16to256.h5", "julian_wgan_generator_32rgb.h5",
    "susanna_vae_decoder_64rgb.h5", "sar_colorization_unet_k38.keras",
})


def manifest() -> list[dict]:
    """The first batch's entries (what the real-generator tests run)."""
    if not (REAL / "MANIFEST.json").is_file():
        return []
    return json.loads((REAL / "MANIFEST.json").read_text())


def corpus() -> list[dict]:
    """Every published generator, both batches: each entry with ``path``, ``batch`` (1 or 2) and
    ``half`` (``development`` or ``held-out``)."""
    entries = [dict(e, path=REAL / e["file"], batch=1) for e in manifest()]
    if (BATCH2 / "MANIFEST.json").is_file():
        entries += [dict(e, path=BATCH2 / e["file"], batch=2) for e in json.loads((BATCH2 / "MANIFEST.json").read_text())]
    return [dict(e, half="held-out" if e["file"] in HELD_OUT else "development") for e in entries]


def output_values(entry: dict) -> int:
    """Output elements per sample: what a model's evaluation and calibration cost scale with."""
    if entry["outputs"] is None:
        return 1 << 30
    total = 0
    for shape in entry["outputs"]:
        n = 1
        for d in shape[1:]:
            n *= d if d is not None else 1 << 10
        total += n
    return total


# A fully convolutional model (unknown height and width) is measured at this size, as a user
# deploying it would fix one with --input-shape.
DEPLOY_SIZE = 256


def load_args(entry: dict, folder: Path) -> list[str]:
    """CLI arguments that load ``entry``: ``--trust-code --custom-objects`` only where it has a
    Lambda; ``--input-shape`` where its input has unknown dimensions."""
    args = []
    for shape in entry["inputs"] or []:
        if None in shape[1:]:
            args += ["--input-shape", ",".join(str(DEPLOY_SIZE if d is None else d) for d in shape[1:])]
    if "Lambda" not in entry["custom_layers"] and "Lambda" not in entry.get("layer_classes", []):
        return args
    helpers = Path(folder) / "lambda_helpers.py"
    helpers.write_text(LAMBDA_HELPERS)
    return args + ["--trust-code", "--custom-objects", str(helpers)]


def load_kwargs(entry: dict, folder: Path) -> dict:
    """``load_args`` as keyword arguments of ``gencompress.load_model`` (JSON-serializable)."""
    args = load_args(entry, folder)
    kwargs = {"trust_code": "--trust-code" in args}
    if "--custom-objects" in args:
        kwargs["custom_objects_file"] = args[args.index("--custom-objects") + 1]
    if "--input-shape" in args:
        kwargs["input_shape"] = [int(d) for d in args[args.index("--input-shape") + 1].split(",")]
    return kwargs

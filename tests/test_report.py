"""The report: its JSON Schema, the renderers, and the metrics behind the figures."""

import json

import numpy as np
import pytest

from gencompress.report.metrics import fidelity, psnr_db, ssim
from gencompress.report.render import markdown, sensitivity_table, terminal_summary, terminal_table
from gencompress.results import Report, json_schema

from conftest import REPO

SCHEMA = REPO / "gencompress" / "report" / "schema.json"


def test_shipped_schema_is_the_models():
    """report/schema.json is generated from gencompress.results: regenerate it with
    ``python -m gencompress.report.schema`` when a result type changes."""
    assert json.loads(SCHEMA.read_text()) == json_schema()


def _report(**extra) -> dict:
    artifact = {
        "path": "out/m.int8.tflite", "format": "tflite", "precision": "int8", "size_bytes": 2048, "gzip_bytes": 1024,
        "size_vs_float": 0.25, "latency_ms": {"p50": 0.5, "p90": 0.6, "runs": 10},
        "fidelity": {"psnr_db": 41.234, "mse": 1e-5, "max_abs_error": 0.01, "ssim": 0.99876, "psnr_worst_db": 33.5}, "passed": True,
        "notes": ["chosen by the fidelity search: int8, saturation-aware ranges"],
    }
    base = {
        "command": "quantize",
        "model": {"path": "m.h5", "format": "h5", "params": 1234, "inputs": [{"name": "z", "shape": [None, 8], "dtype": "float32"}],
                  "outputs": [{"name": "image", "shape": [None, 16, 16, 1], "dtype": "float32"}], "output_activation": "tanh",
                  "output_range": [-1.0, 1.0], "output_range_source": "tanh"},
        "evaluation": {"source": "noise", "samples": 64, "seed": 0},
        "settings": {"threads": 1, "min_psnr": 30.0},
        "artifacts": [artifact],
        "notes": ["--fast: a quick look"],
        **extra,
    }
    return Report.model_validate(base).model_dump(mode="json")


def test_terminal_table_and_summary():
    report = _report()
    table = terminal_table(report).splitlines()
    assert table[0].split() == ["artifact", "precision", "size", "gzip", "vs", "float", "p50", "ms", "PSNR", "dB", "worst", "dB", "SSIM", "passed"]
    assert table[2].split() == ["m.int8.tflite", "int8", "2.0", "KiB", "1.0", "KiB", "25%", "0.500", "41.23", "33.50", "0.9988", "yes"]
    summary = terminal_summary(report).splitlines()
    assert summary == ["note: --fast: a quick look", "note: m.int8.tflite: chosen by the fidelity search: int8, saturation-aware ranges"]


def test_markdown_has_the_model_the_table_and_the_notes():
    md = markdown(_report())
    assert md.startswith("# gencompress quantize report")
    assert "- model: `m.h5` (h5, 1,234 parameters)" in md and "| m.int8.tflite | int8 | 2.0 KiB |" in md
    assert "## Notes" in md and "- --fast: a quick look" in md and "- `m.int8.tflite`: chosen by" in md
    assert md.endswith("\n") and "## Pruning" not in md


def test_sensitivity_table_keeps_the_ranking():
    units = [
        {"label": "image (TANH)", "name": "t", "op": "TANH", "layers": ["image"], "only_quantized_psnr_db": 33.0, "all_but_psnr_db": 40.0, "rmse_over_scale": 0.61},
        {"label": "project (FULLY_CONNECTED)", "name": "f", "op": "FULLY_CONNECTED", "layers": ["project"], "only_quantized_psnr_db": 50.0, "all_but_psnr_db": None},
    ]
    report = _report(command="analyze", sensitivity={"tflite": {"int8_psnr_db": 31.0, "units": units, "notes": ["a note"]}})
    lines = sensitivity_table(report).splitlines()
    assert lines[2].split()[:4] == ["tflite", "image", "(TANH)", "33.00"] and lines[2].rstrip().endswith("0.610")
    assert lines[3].split()[-3:] == ["50.00", "-", "-"] and "(everything int8)" in lines[4] and lines[-1] == "note: a note"
    assert "## Sensitivity" in sensitivity_table(report, markdown=True)


def test_psnr():
    assert psnr_db(0.0, 2.0) == 200.0
    assert psnr_db(1e-4, 1.0) == pytest.approx(40.0)
    assert psnr_db(4e-4, 2.0) == pytest.approx(40.0)


def _ssim_reference(x, y, value_range, size=11, sigma=1.5):
    """Wang et al. (2004) SSIM with a Gaussian window, valid region, mean over channels: the
    definition tf.image.ssim implements, written out in numpy."""
    from scipy.signal import convolve2d

    ax = np.arange(size) - (size - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * value_range) ** 2, (0.03 * value_range) ** 2
    values = []
    for c in range(x.shape[-1]):
        a, b = x[..., c].astype(np.float64), y[..., c].astype(np.float64)
        f = lambda img: convolve2d(img, window[::-1, ::-1], mode="valid")  # noqa: E731
        mu_a, mu_b = f(a), f(b)
        var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        values.append(s)
    return float(np.mean(values))


def test_ssim_matches_its_definition():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2, 24, 24, 3)).astype("float32")
    y = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1).astype("float32")
    ours = ssim(x, y, (0.0, 1.0))
    expected = np.mean([_ssim_reference(x[i], y[i], 1.0) for i in range(2)])
    assert ours == pytest.approx(expected, abs=1e-4)
    assert ssim(x, x, (0.0, 1.0)) == pytest.approx(1.0)
    assert ssim(x, np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype("float32"), (0.0, 1.0)) < ours
    assert ssim(x[:, :, :, 0], y[:, :, :, 0], (0.0, 1.0)) is None  # not NHWC images


def test_fidelity_figures():
    ref = [np.zeros((4, 8, 8, 1), np.float32)]
    out = [np.full((4, 8, 8, 1), 0.01, np.float32)]
    fid = fidelity(ref, out, (-1.0, 1.0))
    assert fid["mse"] == pytest.approx(1e-4) and fid["max_abs_error"] == pytest.approx(0.01)
    assert fid["psnr_db"] == pytest.approx(psnr_db(1e-4, 2.0), abs=1e-3)
    assert fidelity(ref, [np.full_like(ref[0], np.nan)], (-1.0, 1.0))["psnr_db"] is None

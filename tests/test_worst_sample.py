"""Worst-sample fidelity: each held-out sample's own PSNR, tail latents in the held-out set, the
`--min-psnr-worst` gate, and a search that aims at the worst sample when asked."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from gencompress.calibration.sources import TAIL_QUANTILES, noise_set, with_tail_latents
from gencompress.cli import cli
from gencompress.model import TensorInfo
from gencompress.report.metrics import fidelity, per_sample


def test_per_sample_psnr_names_the_broken_sample():
    """Nine samples off by 0.001 and one by 0.1: the mean PSNR is the MSE over all of them (a
    fine-looking 39 dB), the worst sample's own is 20 dB."""
    ref = np.zeros((10, 4, 4, 1), np.float32)
    out = ref + 0.001
    out[7] = 0.1
    f = fidelity([ref], [out], (-1.0, 1.0), with_ssim=False)
    assert f["psnr_db"] == pytest.approx(10 * np.log10(4 / ((9 * 1e-6 + 1e-2) / 10)), abs=1e-3)
    assert f["worst_sample"] == 7
    assert f["psnr_worst_db"] == pytest.approx(10 * np.log10(4 / 1e-2), abs=1e-3)  # 26.0 dB
    assert f["psnr_median_db"] == pytest.approx(10 * np.log10(4 / 1e-6), abs=1e-3)  # 66.0 dB
    assert f["psnr_worst_db"] <= f["psnr_p5_db"] <= f["psnr_median_db"]


def test_per_sample_psnr_counts_every_output_of_a_sample_together():
    a, b = np.zeros((3, 2)), np.zeros((3, 6))
    out_a, out_b = a.copy(), b.copy()
    out_b[1] = 0.5  # sample 1 is off in its second output only
    stats = per_sample([a, b], [out_a, out_b], (0.0, 1.0))
    assert stats["worst_sample"] == 1
    assert stats["psnr_worst_db"] == pytest.approx(10 * np.log10(1 / (6 * 0.25 / 8)), abs=1e-3)
    assert per_sample([a], [a + np.nan], (0.0, 1.0))["psnr_worst_db"] is None


def test_held_out_noise_ends_with_tail_latents_at_known_norms():
    inputs = [TensorInfo("z", (None, 16), "float32"), TensorInfo("label", (None, 1), "int32")]
    held = noise_set(inputs, 64, np.random.default_rng(1), {"label": 10})
    tailed = with_tail_latents(held, inputs)
    assert tailed.tail == 4 and [tailed.is_tail(i) for i in (59, 60, 63)] == [False, True, True]
    norms = np.linalg.norm(tailed.arrays["z"], axis=1)
    assert np.array_equal(tailed.arrays["z"][:60], held.arrays["z"][:60])
    assert np.array_equal(tailed.arrays["label"], held.arrays["label"])  # labels are not latents
    # a 16-d standard normal's norm: 98th percentile 5.44, 99.9th 6.28 (measured on 200,000 draws)
    assert norms[60] == pytest.approx(5.44, abs=0.02) and norms[63] == pytest.approx(6.28, abs=0.02)
    assert np.all(np.diff(norms[60:]) > 0) and norms[:60].max() < norms[60] + 1.0
    # directions are the draws' own
    cos = np.sum(tailed.arrays["z"][60:] * held.arrays["z"][60:], axis=1) / (norms[60:] * np.linalg.norm(held.arrays["z"][60:], axis=1))
    assert np.allclose(cos, 1.0, atol=1e-5)
    assert TAIL_QUANTILES == (0.98, 0.999)
    assert tailed.take(62).tail == 2 and tailed.pick([0, 63]).tail == 1


def test_report_and_table_show_the_worst_sample_and_the_gate_aims_at_it(dcgan_h5, tmp_path):
    """`--min-psnr-worst` is a gate and the search's target: set past what any int8 attempt's
    worst sample reaches, the search goes on to an attempt whose worst sample does."""
    out = tmp_path / "out"
    args = ["quantize", str(dcgan_h5), "-o", str(out), "--calibration-samples", "32", "--eval-samples", "16", "--latency-runs", "3",
            "--method", "ptq"]  # the post-training search; the QAT rescue after it is tests/test_rescue.py
    plain = CliRunner().invoke(cli, args)
    assert plain.exit_code == 0, plain.output
    assert "worst dB" in plain.output
    report = json.loads((out / "report.json").read_text())
    assert report["evaluation"]["tail_samples"] == 2
    int8 = {a["format"]: a for a in report["artifacts"] if a["precision"] != "float32"}
    for a in int8.values():
        f = a["fidelity"]
        assert f["psnr_worst_db"] < f["psnr_p5_db"] + 1e-9 <= f["psnr_median_db"] + 1e-9
        assert f["psnr_worst_db"] < f["psnr_db"]
    aim = min(a["fidelity"]["psnr_worst_db"] for a in int8.values()) + 10.0
    aimed = CliRunner().invoke(cli, args + ["--min-psnr-worst", f"{aim:.2f}"])
    assert aimed.exit_code in (0, 3), aimed.output
    report = json.loads((out / "report.json").read_text())
    for a in (a for a in report["artifacts"] if a["precision"] != "float32"):
        search = a["fallback"]
        assert search["target_psnr_worst_db"] == pytest.approx(aim, abs=0.01)
        assert search["chosen"] != "int8"  # plain int8's worst sample misses the aim
        for attempt in search["attempts"]:
            worst = attempt["psnr_worst_db"]
            assert attempt["passed"] == (attempt["psnr_db"] >= 30.0 and worst is not None and worst >= aim - 1e-9)
    checks = [c for c in report["gates"]["checks"] if c["gate"] == "min_psnr_worst"]
    assert len(checks) == 2 and all(c["limit"] == pytest.approx(aim, abs=0.01) for c in checks)
    assert all(c["passed"] == (c["measured"] >= c["limit"]) for c in checks)
    assert (aimed.exit_code == 3) == any(not c["passed"] for c in report["gates"]["checks"])


def test_calibrating_on_tail_latents_keeps_their_inputs_unclipped(keras, tmp_path):
    """Min/max ranges over ordinary draws clip a tail latent at the model's input (its largest
    components are past every calibration sample's): one 99.9th-percentile latent read 17 dB on
    the sigmoid generator below. Noise calibration ends with tail latents too, so it does not."""
    from gencompress.calibration import Calibration
    from gencompress.compress.quantization import TFLiteMixed
    from gencompress.converters.runners import make_runner
    from gencompress.model import load_model
    from gencompress.report.metrics import sample_psnr

    keras.utils.set_random_seed(11)
    z = keras.Input((8,), name="z")
    model = keras.Model(z, keras.layers.Dense(64, activation="sigmoid", name="image")(z))
    w, b = model.get_layer("image").get_weights()
    model.get_layer("image").set_weights([w * 150.0, b])  # trained to saturation
    model.save(tmp_path / "sat.h5")
    loaded = load_model(tmp_path / "sat.h5")
    calib, held = Calibration.noise().sets(loaded.inputs, {}, 64, 32, seed=0)
    assert calib.tail == 4 and held.tail == 2
    ordinary = calib.take(60)  # the same draws without their tail
    reference = loaded.predict(held.arrays)
    worst = {}
    for name, data in (("ordinary", ordinary), ("with tail", calib)):
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(TFLiteMixed(loaded, data).build(saturation_aware=True))
        outputs = make_runner(path, "tflite", ["z"], [t.name for t in loaded.outputs]).run_all(held)
        worst[name] = sample_psnr(reference, outputs, (0.0, 1.0))[-1]  # the 99.9th-percentile latent
    assert worst["ordinary"] < 25.0 < 40.0 < worst["with tail"], worst

"""--browser: every artifact loaded, run and timed in headless Chromium by its browser runtime
(onnxruntime-web for .onnx, LiteRT.js for .tflite); reported beside the native figures, gated,
said when it does not load; the runtimes' own quirks pinned on the smallest models that show them.

Skipped, saying why, without Chromium, Playwright or the runtimes (`gencompress setup-browser`;
.ci/run installs all three)."""

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from gencompress.cli import cli

from conftest import REPO

FAST = ["--eval-samples", "8", "--calibration-samples", "16", "--latency-runs", "5"]


def test_every_artifact_runs_in_its_browser_runtime_as_natively(sample_run):
    from gencompress.converters.browser_setup import pinned_versions

    result, _ = sample_run
    versions = pinned_versions()
    for a in result.report.artifacts:
        run = a.browser
        assert run.loaded and run.error is None, (a.name, run.error)
        assert (run.runtime, run.version) == ({"onnx": "onnxruntime-web", "tflite": "LiteRT.js"}[a.format], versions[a.format])
        assert run.browser.startswith("Chromium ") and "1 thread" in run.build
        assert run.latency_ms.p50 > 0 and run.latency_ms.runs >= 5
        if a.precision == "float32":
            assert run.native_psnr_db >= 80.0, a.name
        else:  # the same int8 arithmetic: the same PSNR against the float model
            assert abs(run.fidelity.psnr_db - a.fidelity.psnr_db) <= 0.5, a.name
        assert run.differing_op is None
        if run.threads is not None:  # a page with 2+ cores, cross-origin isolated: the threaded build
            assert run.threads >= 2 and f"{run.threads} threads" in run.threads_build and run.threads_latency_ms.p50 > 0
        if a.format == "tflite":  # LiteRT.js needs a static batch (see the next test)
            assert any("batch dimension fixed to 1" in n for n in run.notes)


def test_browser_figures_in_every_report_and_the_gates(sample_run):
    result, folder = sample_run
    report = json.loads((folder / "report.json").read_text())
    assert all(a["browser"]["loaded"] for a in report["artifacts"])
    assert report["settings"]["browser"] is True
    checks = [c for c in report["gates"]["checks"] if c["runtime"] == "browser"]
    quantized = [a["path"].rsplit("/", 1)[-1] for a in report["artifacts"] if a["precision"] != "float32"]
    # every format's latency gate, the onnx PSNR gate: on the deliverables, measured in the browser
    assert sorted((c["artifact"], c["gate"]) for c in checks) == sorted(
        [(n, "max_latency_ms") for n in quantized] + [(n, "min_psnr") for n in quantized if n.endswith(".onnx")])
    assert all(c["passed"] and c["measured"] is not None for c in checks)
    assert report["gates"]["limits"]["browser-onnx"] == {"max_latency_ms": 10000.0, "min_psnr": 30.0}
    # a browser latency gate: the gated artifacts and their float32 references timed again in the
    # page, in interleaved rounds
    from gencompress.pipelines.gates import GATE_ROUND_RUNS, GATE_ROUNDS

    assert report["gates"]["latency_rounds"] == GATE_ROUNDS
    assert all(a["browser"]["latency_ms"]["runs"] == GATE_ROUNDS * GATE_ROUND_RUNS for a in report["artifacts"])
    md = (folder / "report.md").read_text()
    assert "## In the browser" in md and "onnxruntime-web 1.31.1" in md and "LiteRT.js 2.5.3" in md
    html = (folder / "report.html").read_text()
    assert 'id="browser-table"' in html
    assert all(f'data-artifact="{a.name}"' in html for a in result.report.artifacts)


def _raw_run(page, browser, path, x: np.ndarray) -> np.ndarray | str:
    """``path`` run as it is in the page (no copy made for LiteRT.js): its first output, or the error."""
    model_id = f"raw-{path.name}"
    loaded = page.page.evaluate("([i, u]) => gc.load(i, u)", [model_id, browser.serve(path)])
    if "error" in loaded:
        return loaded["error"]
    sent = [{"b64": base64.b64encode(x.tobytes()).decode(), "dtype": "float32", "shape": list(x.shape)}]
    got = page.page.evaluate("([i, x]) => gc.run(i, x, 1)", [model_id, sent])
    if "error" in got:
        return got["error"]
    out = got["outputs"][0]
    return np.frombuffer(base64.b64decode(out["b64"]), dtype=out["dtype"]).reshape(out["shape"])


def test_litertjs_refuses_a_dynamic_batch_and_runs_the_batch1_copy(browser_ready, dcgan, tmp_path):
    """Root cause of the batch-1 copy: LiteRT.js 2.5.3's CompiledModel checks an input buffer
    against the signature's type, -1 included, and has no resize. When this stops failing, the
    copy can go."""
    from gencompress.converters.browser import BrowserSession
    from gencompress.converters.litertjs import static_batch_tflite
    from gencompress.converters.runners import make_runner
    from gencompress.converters.tflite import convert_tflite

    path = tmp_path / "dynamic.tflite"
    path.write_bytes(convert_tflite(dcgan, "float32"))
    fixed = tmp_path / "static.tflite"
    fixed.write_bytes(static_batch_tflite(path.read_bytes()))
    assert static_batch_tflite(fixed.read_bytes()) is None  # nothing left to fix
    z = {"z": np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)}
    outputs = [dcgan.outputs[0].name]
    with BrowserSession() as browser:
        page = browser.page("tflite")
        refused = _raw_run(page, browser, path, z["z"])
        assert "does not match expected ranked tensor type Float32[-1, 8]" in refused
        runner = page.runner(path, ["z"], outputs, tmp_path)  # what --browser does: the copy
        assert any("batch dimension fixed to 1" in n for n in runner.notes)
        got = runner.run(z)[0]
    native = make_runner(path, "tflite", ["z"], outputs).run(z)[0]
    assert got.shape == native.shape and np.max(np.abs(got - native)) < 1e-5


def test_the_batch1_copy_keeps_weights_stored_after_the_flatbuffer(browser_ready, keras, tmp_path):
    """ai-edge-quantizer writes a model with 256 KiB of weights or more with them after the
    flatbuffer (``Buffer.offset``); TF's flatbuffer_utils cannot carry those over when it
    re-serializes, and LiteRT.js then refused the copy ('invalid external buffer range'). The
    batch is now fixed in place, every other byte kept."""
    import gencompress as gc
    from gencompress.compat.tflite import flatbuffer_object, has_external_buffers, shape_signature_views, write_flatbuffer
    from gencompress.compress.quantization import tflite_weight_only
    from gencompress.converters.browser import BrowserSession
    from gencompress.converters.litertjs import static_batch_tflite
    from gencompress.converters.runners import make_runner
    from gencompress.converters.tflite import convert_tflite

    keras.utils.set_random_seed(4)
    z = keras.Input((64,), name="z")
    x = keras.layers.Reshape((16, 16, 16))(keras.layers.Dense(16 * 16 * 16)(z))  # 262,144 weights
    model = gc.from_keras(keras.Model(z, keras.layers.Conv2D(1, 3, padding="same", activation="tanh")(x)), name="wide")
    data = tflite_weight_only(convert_tflite(model, "float32"))
    assert has_external_buffers(flatbuffer_object(data))
    assert len(write_flatbuffer(flatbuffer_object(data))) < len(data) // 2  # the rewrite drops them
    fixed = static_batch_tflite(data)
    dynamic = sum(int((v < 0).sum()) for v in shape_signature_views(bytearray(data)))
    assert len(fixed) == len(data) and sum(a != b for a, b in zip(fixed, data)) == 4 * dynamic  # each int32 -1 became 1
    path = tmp_path / "wide.tflite"
    path.write_bytes(data)
    sample = {"z": np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)}
    outputs = [model.outputs[0].name]
    with BrowserSession() as browser:
        got = browser.page("tflite").runner(path, ["z"], outputs, tmp_path).run(sample)[0]
    assert np.max(np.abs(got - make_runner(path, "tflite", ["z"], outputs).run(sample)[0])) < 1e-5


def test_litertjs_needs_the_shapes_a_reshape_reads_as_constants(browser_ready, keras, tmp_path):
    """LiteRT.js 2.5.3 leaves a SHAPE op's output unwritten after a delegated Dense, so a Keras
    Reshape fed by it (SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE) gives garbage even with a
    static batch; with those shapes as constants the copy matches the native runtime. When this
    stops failing, ``litertjs.constant_shapes`` can go."""
    import gencompress as gc
    from gencompress.converters.browser import BrowserSession
    from gencompress.converters.litertjs import constant_shapes, static_batch_tflite
    from gencompress.converters.runners import make_runner
    from gencompress.converters.tflite import convert_tflite

    keras.utils.set_random_seed(5)
    z = keras.Input((10,), name="z")
    model = gc.from_keras(keras.Model(z, keras.layers.Reshape((4, 4, 4))(keras.layers.Dense(64)(z))), name="reshape")
    original = convert_tflite(model, "float32")
    static = tmp_path / "static.tflite"
    static.write_bytes(static_batch_tflite(original))
    folded = tmp_path / "folded.tflite"
    folded.write_bytes(constant_shapes(static.read_bytes())[0])
    x = np.random.default_rng(0).standard_normal((1, 10)).astype(np.float32)
    native = make_runner(static, "tflite", ["z"], [model.outputs[0].name]).run({"z": x})[0]
    with BrowserSession() as browser:
        page = browser.page("tflite")
        wrong, right = _raw_run(page, browser, static, x), _raw_run(page, browser, folded, x)
    assert np.max(np.abs(wrong - native)) > 0.1  # the bug: unwritten shapes, zeros drawn
    assert np.max(np.abs(right - native)) < 1e-6


def test_an_artifact_the_browser_cannot_load_is_said_everywhere(browser_ready, dcgan_h5, tmp_path):
    """LiteRT.js 2.5.3 has no int8 input tensors: an --int8-io .tflite does not load there. A
    browser gate on it fails (exit 3); the terminal, report.json and report.html say why."""
    from click.testing import CliRunner

    from gencompress.cli import cli

    out = tmp_path / "o"
    args = ["quantize", str(dcgan_h5), "-o", str(out), *FAST, "--format", "tflite", "--int8-io", "--min-psnr", "0", "--browser",
            "--max-latency-ms", "browser:10000"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    assert "not in the browser: dcgan.int8.tflite: Element type INT8 is not supported." in result.stdout
    assert "dcgan.int8.tflite: p50 latency in the browser not measured, limit at most 1e+04 (--max-latency-ms browser:)" in result.stderr
    report = json.loads((out / "report.json").read_text())
    float32, int8 = report["artifacts"]
    assert float32["browser"]["loaded"] and not int8["browser"]["loaded"]
    assert int8["browser"]["error"] == "Element type INT8 is not supported."
    assert any(n.startswith("does not load in LiteRT.js 2.5.3") for n in int8["notes"])
    assert "dcgan.int8.tflite does not load: Element type INT8 is not supported." in (out / "report.html").read_text()


def test_a_browser_result_that_differs_names_where(browser_ready, dcgan, tmp_path):
    """Dynamic-range ONNX (DynamicQuantizeLinear + integer MatMul): onnxruntime-web's outputs
    differ from native onnxruntime's by more than 0.5 dB of PSNR; with every tensor exposed the
    two agree, and native onnxruntime at optimization level 'extended' gives the browser's
    outputs: the report names the kernel choice of its full level."""
    import gencompress as gc

    config = gc.QuantizeConfig(modes=("dynamic",), formats=("onnx",), min_psnr=0.0, eval_samples=8, latency_runs=5, browser=True)
    result = gc.quantize(dcgan, config, gc.Calibration.noise(16))
    dynamic = result.artifacts["onnx", "dynamic"]
    run = dynamic.browser
    assert abs(run.fidelity.psnr_db - dynamic.fidelity.psnr_db) > 0.5 and run.native_psnr_db < 80
    assert "at 'extended' (the same graph) its outputs equal the browser's" in run.differing_op
    assert "DynamicQuantizeMatMul" in run.differing_op
    assert any("first op that differs" in n for n in dynamic.notes)
    assert result.artifacts["onnx", "float32"].browser.differing_op is None


def test_the_differing_op_is_the_first_tensor_that_differs():
    from gencompress.pipelines.browser_diff import _differs

    same = np.linspace(-1, 1, 100, dtype=np.float32)
    assert not _differs(same, same + 1e-6)[0]  # float rounding of the same arithmetic
    assert _differs(same, same + 1e-2)[0]
    steps = np.arange(-128, 128, dtype=np.int8)
    assert not _differs(steps, steps.copy())[0]
    off = steps.copy()
    off[3] += 1
    differs, what = _differs(steps, off)
    assert differs and "0.4 % of the values" in what  # one int8 step in 256 values


def test_guard_hook_names_the_int8_ops_a_browser_runs_slow(sample_run):
    """onnxruntime-web runs an int8 MatMul at 0.58x float (1.56x faster natively;
    benchmarks/browser.py --ops): classed slow for the search. LiteRT.js has no such op once the
    copy it runs has static shapes."""
    from gencompress.compress.search import compute_class
    from gencompress.converters.browser_ops import _tflite_int8_ops, browser_slow_ops

    result, folder = sample_run
    slow = {a.name: browser_slow_ops(a.format, (folder / a.name).read_bytes()) for a in result.report.artifacts}
    assert slow["dcgan_digits.float32.tflite"] == slow["dcgan_digits.float32.onnx"] == set()
    assert slow["dcgan_digits.int8.onnx"] & {"MatMul", "Gemm"}  # its Dense (MatMul, or Gemm folded with its bias), in any int8 form
    assert compute_class("int8", (), slow["dcgan_digits.int8.onnx"]) == "slow"
    assert slow["dcgan_digits.int8.tflite"] == set()
    assert "FULLY_CONNECTED" in _tflite_int8_ops((folder / "dcgan_digits.int8.tflite").read_bytes())


def test_without_the_runtimes_browser_says_what_is_missing_in_one_line(dcgan_h5, tmp_path):
    env = {**os.environ, "GENCOMPRESS_BROWSER_RUNTIMES": str(tmp_path / "none"), "GENCOMPRESS_CHROMIUM": str(tmp_path / "no-chromium")}
    result = subprocess.run([sys.executable, "-m", "gencompress", "quantize", str(dcgan_h5), "-o", str(tmp_path / "o"), "--browser"],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gencompress: error: --browser needs Chromium (apt-get install chromium")
    assert "run `gencompress setup-browser`" in lines[0] and "onnxruntime-web 1.31.1" in lines[0]
    assert not (tmp_path / "o").exists()  # found before loading, nothing written


def test_browser_options_are_checked(dcgan_h5, tmp_path):
    from click.testing import CliRunner

    from gencompress.cli import cli
    from gencompress.recipe import parse

    for args, message in (
        (["--min-speedup", "browser:1.2"], "browser gates judge the figures of --browser"),
        (["--browser", "--max-bytes", "browser:100"], "the file is the same in the browser"),
        (["--min-ssim", "webgpu:0.9"], "unknown format 'webgpu'"),
    ):
        result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(tmp_path), *args])
        assert result.exit_code == 2 and message in result.output, result.output
    result = CliRunner().invoke(cli, ["analyze", str(dcgan_h5), "-o", str(tmp_path), "--browser"])
    assert result.exit_code == 2 and "analyze writes no artifacts" in result.output
    doc = {"model": {"path": str(dcgan_h5)}, "steps": [{"quantize": {"browser": True}}],
           "gates": {"browser": {"min_speedup": 1.1, "onnx": {"max_latency_ms": 5.0}}}}
    config = parse(doc, tmp_path).steps[0].config
    assert config.browser and config.gates.browser.min_speedup == 1.1 and config.gates.browser.onnx.max_latency_ms == 5.0


def test_browser_guard_moves_the_onnx_pick_off_the_int8_matmul(dcgan_h5, tmp_path):
    """--browser-guard: the search classes an int8 attempt with an int8 MatMul slow (its browser
    runtime runs it at 0.58x float), so the .onnx speed pick moves to one without it; the .tflite
    pick (LiteRT.js has no such op) and the default picks are unchanged. No browser needed."""
    from gencompress.converters.browser_ops import browser_slow_ops

    picks = {}
    for name, extra in (("plain", []), ("guarded", ["--browser-guard"])):
        out = tmp_path / name
        result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(out), "--method", "ptq", "--calibration-samples", "32",
                                          "--eval-samples", "16", "--latency-runs", "3"] + extra)
        assert result.exit_code == 0, result.output
        report = json.loads((out / "report.json").read_text())
        picks[name] = {a["format"]: a for a in report["artifacts"] if a["precision"] != "float32"}
        picks[name]["bytes"] = {a["format"]: (out / Path(a["path"]).name).read_bytes() for a in report["artifacts"] if a["precision"] != "float32"}
    assert browser_slow_ops("onnx", picks["plain"]["bytes"]["onnx"]) & {"MatMul", "Gemm"}  # the default pick: its Dense in int8
    assert browser_slow_ops("onnx", picks["guarded"]["bytes"]["onnx"]) == set()
    assert picks["guarded"]["onnx"]["fallback"]["chosen"] != picks["plain"]["onnx"]["fallback"]["chosen"]
    assert any(t["compute"] == "slow" and t["precision"] == "int8" for t in picks["guarded"]["onnx"]["fallback"]["attempts"])
    assert picks["guarded"]["bytes"]["tflite"] == picks["plain"]["bytes"]["tflite"]

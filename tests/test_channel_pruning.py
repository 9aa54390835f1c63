"""``prune --structure channels`` and ``distill --init teacher`` end to end on tiny models: a plain
Keras model with fewer filters, smaller artifacts that compute what it computes, the report's
section, the --min-psnr search, option errors in one line, MACs in every report and in inspect."""

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner

from gencompress.cli import cli

FAST = ["--calibration-samples", "32", "--eval-samples", "16", "--latency-runs", "3"]
STEPS = ["--steps", "40", "--batch-size", "16"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pruned_run(dcgan_h5, tmp_path_factory):
    out = tmp_path_factory.mktemp("channels")
    before = _digest(dcgan_h5)
    result = CliRunner().invoke(cli, ["prune", str(dcgan_h5), "-o", str(out / "a"), "--structure", "channels", "--target-macs", "0.5",
                                      "--then", "int8", "--min-psnr", "20", *STEPS, *FAST])
    assert result.exit_code == 0, result.output
    assert _digest(dcgan_h5) == before  # the input model is never written to
    return out, result.output


def test_channels_make_a_plain_smaller_model_and_smaller_files(pruned_run, keras):
    out, output = pruned_run
    folder = out / "a"
    report = json.loads((folder / "report.json").read_text())
    c = report["channel_pruning"]
    assert c["target"] == {"kind": "macs", "value": 0.5} and c["met_target"]
    assert c["pruned_macs"] <= 0.5 * c["original_macs"] and c["original_macs"] == report["model"]["macs"] == 7936
    # A plain Keras model, loaded with nothing but tf-keras, with fewer filters than the original.
    pruned = keras.models.load_model(folder / "dcgan-pruned.h5", compile=False)
    assert pruned.count_params() == c["pruned_params"] < c["original_params"] == 1865
    sizes = {r["name"]: (r["before"], r["after"]) for r in c["layers"]}
    assert sizes["up1"][1] < sizes["up1"][0] or sizes["project"][1] < sizes["project"][0]
    assert {g["kept"] <= g["channels"] for g in c["groups"]} == {True} and all(g["sensitivity"] for g in c["groups"])
    # Every stage measured; the re-fit never loses to the cut, fine-tuning never to its start.
    assert c["psnr_refit_db"] >= c["psnr_removed_db"] and c["final_psnr_db"] >= c["psnr_start_db"]
    files = {a["path"].rsplit("/", 1)[-1]: a for a in report["artifacts"]}
    for fmt in ("tflite", "onnx"):
        assert files[f"dcgan-pruned.float32.{fmt}"]["size_bytes"] < files[f"dcgan.float32.{fmt}"]["size_bytes"]
    rows = {(r["format"], r["precision"]): r for r in c["comparison"]}
    assert set(rows) == {("tflite", "float32"), ("tflite", "int8"), ("onnx", "float32"), ("onnx", "int8")}
    assert all(r["speedup"] > 0 and "interleaved" in r["timing"] for r in rows.values())
    # The float artifacts compute what the saved Keras model computes.
    z = np.random.default_rng(0).standard_normal((1, 8)).astype("float32")
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(folder / "dcgan-pruned.float32.tflite"))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], z)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert np.allclose(got, pruned(z).numpy(), atol=1e-5)
    # Terminal, report.md and report.html say it.
    assert "MACs: 7.94 K ->" in output and "re-fitted" in output
    assert "## Channel pruning" in (folder / "report.md").read_text()
    html = (folder / "report.html").read_text()
    assert 'id="channel-pruning"' in html and 'id="channel-comparison"' in html


def test_same_command_same_bytes(pruned_run, dcgan_h5):
    out, _ = pruned_run
    again = out / "b"
    result = CliRunner().invoke(cli, ["prune", str(dcgan_h5), "-o", str(again), "--structure", "channels", "--target-macs", "0.5",
                                      "--then", "int8", "--min-psnr", "20", *STEPS, *FAST])
    assert result.exit_code == 0, result.output
    for name in ("dcgan-pruned.float32.tflite", "dcgan-pruned.int8.tflite", "dcgan-pruned.float32.onnx"):
        assert _digest(out / "a" / name) == _digest(again / name), name


def test_min_psnr_alone_searches_the_smallest_model(dcgan_h5, tmp_path):
    result = CliRunner().invoke(cli, ["prune", str(dcgan_h5), "-o", str(tmp_path), "--structure", "channels", "--min-psnr", "28",
                                      "--time-budget", "20s", *FAST])
    report = json.loads((tmp_path / "report.json").read_text())
    c = report["channel_pruning"]
    assert c["target"] == {"kind": "psnr", "value": 28.0}
    tried = c["search"]
    assert len(tried) >= 2 and sum(a["picked"] for a in tried) == 1
    picked = next(a for a in tried if a["picked"])
    # Nothing smaller than the pick passed; the pick is what was written.
    assert not any(a["passed"] and a["macs_fraction"] < picked["macs_fraction"] for a in tried)
    assert c["pruned_macs"] == picked["macs"]
    assert "tried" in result.output and ("<- picked" in result.output)
    assert result.exit_code == (0 if c["met_target"] else 3), result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target-macs", "0.5"], "--target-macs applies to --structure channels"),
        (["--structure", "channels", "--target-macs", "1.5"], "between 0 and 1"),
        (["--structure", "channels", "--target-macs", "0.5", "--target-params", "0.5"], "give one size target"),
        (["--structure", "channels", "--importance", "magic"], "Invalid value for '--importance'"),
        (["--structure", "channels", "--skip-last"], "--skip-last applies to weight pruning"),
    ],
)
def test_channel_option_errors_are_one_line(dcgan_h5, tmp_path, args, message):
    result = CliRunner().invoke(cli, ["prune", str(dcgan_h5), "-o", str(tmp_path / "x"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x").exists()


def test_distill_starts_from_the_teacher(dcgan_h5, tmp_path):
    reports = {}
    for init in ("teacher", "random"):
        result = CliRunner().invoke(cli, ["distill", str(dcgan_h5), "-o", str(tmp_path / init), "--width", "0.5", "--init", init,
                                          "--steps", "20", "--batch-size", "16", "--eval-every", "20", "--min-psnr", "0", *FAST])
        assert result.exit_code == 0, result.output
        reports[init] = json.loads((tmp_path / init / "report.json").read_text())["distillation"]
    teacher, random = reports["teacher"], reports["random"]
    assert teacher["student_params"] == random["student_params"] == 861  # the same architecture
    assert teacher["init"]["kind"] == "teacher" and random["init"]["kind"] == "random"
    assert teacher["init"]["psnr_refit_db"] >= teacher["init"]["psnr_removed_db"]
    # Trained from the teacher's channels the student starts far closer to it.
    assert teacher["finetune"]["initial_psnr_db"] > random["finetune"]["initial_psnr_db"] + 5.0
    assert teacher["student_macs"] < teacher["teacher_macs"] == 7936


def test_inspect_counts_macs(dcgan_h5):
    result = CliRunner().invoke(cli, ["inspect", str(dcgan_h5), "--no-int8-check"])
    assert result.exit_code == 0, result.output
    assert "MACs: 7.94 K (7,936) per sample; most in up1" in result.output


def test_a_pruned_model_gets_its_sub_pixel_form(dcgan):
    """A pruned model (or a student) gets the sub-pixel form too: the form is checked against the
    model's own outputs (it was checked against the original's, so rauzan pruned fell back to
    weight-only ONNX int8 at 0.89x the original's int8)."""
    import dataclasses

    from conftest import make_session
    from gencompress.compress.channels.graph import ChannelGraph
    from gencompress.compress.channels.slicing import sliced_model
    from gencompress.pipelines.forms import transformed

    session = make_session(dcgan)
    graph = ChannelGraph(dcgan.keras_model)
    pruned = sliced_model(dcgan.keras_model, graph, {g.root: np.arange(g.channels // 2) for g in graph.prunable()})
    derived = session.derived(dataclasses.replace(dcgan, keras_model=pruned, params=int(pruned.count_params())))
    assert transformed(session, "subpixel") is not None  # the original's: found
    assert transformed(derived, "subpixel") is not None  # the pruned model's, checked against its own outputs

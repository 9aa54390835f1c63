"""Recipes: checked whole before any work (one line naming the key path, exit 2), written by
--save-recipe and recorded in report.json, replayed byte for byte; steps chain."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import REPO
from gencompress import recipe as recipes
from gencompress.calibration import Calibration
from gencompress.cli import cli
from gencompress.config import DistillConfig, FormatGates, Gates, PruneConfig, QuantizeConfig, TrainingConfig, replace

FAST = ["--calibration-samples", "32", "--eval-samples", "8", "--latency-runs", "5"]
ARTIFACT_SUFFIXES = (".tflite", ".onnx", ".h5", ".keras", ".png")

QUANTIZE = """
version = 1
output = "out"
[model]
path = "{model}"
[[steps]]
[steps.quantize]
modes = ["int8"]
min_psnr = 35.0
"""


def _artifacts(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.suffix in ARTIFACT_SUFFIXES}


def _gencompress(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "gencompress", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=900)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("min_psnr = 35.0", 'min_psnr = "high"'), 'recipe steps[0].quantize.min_psnr: expected a number, got "high"'),
    (lambda t: t.replace("min_psnr = 35.0", "min_pnsr = 35.0"), "recipe steps[0].quantize.min_pnsr: unknown key (did you mean min_psnr?)"),
    (lambda t: t.replace('modes = ["int8"]', 'modes = "int8"'), 'recipe steps[0].quantize.modes: expected a list of strings, got "int8"'),
    (lambda t: t.replace("int8", "int4"), "recipe steps[0].quantize: unknown precision 'int4'"),
    (lambda t: t.replace("[steps.quantize]", "[steps.compress]"), "recipe steps[0]: expected one table named after its command (prune, distill, quantize, export, analyze), got compress"),
    (lambda t: t.replace('output = "out"', 'outptu = "out"'), "recipe outptu: unknown key (did you mean output?)"),
    (lambda t: t.replace("version = 1", "version = 2"), "recipe version: this gencompress reads version 1, got 2"),
    (lambda t: t.replace("{model}", "nothere.h5"), "recipe model.path: file not found: nothere.h5"),
    (lambda t: t + '[calibration]\nsource = "latents.npz"\n', "recipe calibration.source: file not found: latents.npz"),
    (lambda t: t + "[gates]\nmin_psnr = 40.0\n", "recipe gates.min_psnr: steps[0].quantize.min_psnr says 35: give it once"),
    (lambda t: t + "[gates.coreml]\nmax_bytes = 10\n", "recipe gates.coreml: unknown key"),
    (lambda t: t + "[gates]\nmax_bytes = 1.5\n", "recipe gates.max_bytes: expected a whole number, got 1.5"),
    (lambda t: t.replace("[[steps]]\n[steps.quantize]", '[[steps]]\n[steps.prune]\nsparsity = 2.0\n[[steps]]\n[steps.quantize]'),
     "recipe steps[0].prune: --sparsity must be between 0 and 1"),
    (lambda t: t.replace("[[steps]]\n[steps.quantize]", "[[steps]]\n[steps.prune]\n[steps.prune.training]\nsteps = 1.5\n[[steps]]\n[steps.quantize]"),
     "recipe steps[0].prune.training.steps: expected a whole number, got 1.5"),
    (lambda t: t.replace("[model]", "[model\n"), "not valid TOML"),
])
def test_bad_recipe_one_line_exit_2_before_any_work(dcgan_h5, tmp_path, edit, message):
    path = tmp_path / "r.toml"
    path.write_text(edit(QUANTIZE).replace("{model}", str(dcgan_h5)))
    result = CliRunner().invoke(cli, ["run", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gencompress: error: ") and message in lines[0], result.output
    assert not (tmp_path / "out").exists()  # nothing was run


def test_written_recipes_read_back_as_the_same_run(tmp_path, dcgan_h5):
    """Every field of each step's config survives --save-recipe and `run` (no run needed)."""
    data = tmp_path / "data" / "z.npz"
    data.parent.mkdir()
    data.write_bytes(b"")
    gates = Gates(max_size_ratio=0.3, onnx=FormatGates(min_psnr=40.0, max_bytes=90_000), tflite=FormatGates(min_speedup=1.5))
    configs = [
        ("quantize", QuantizeConfig(modes=("int8", "float16"), min_psnr=35.0, eval_samples=16, method="qat",
                                    qat=replace(QuantizeConfig().qat, steps=10), gates=gates), None),
        ("prune", PruneConfig(sparsity=0.7, schedule="constant", layers=("up1",), skip_last=True, then=("int8",),
                              training=TrainingConfig(steps=20, batch_size=8), formats=("tflite",), gates=gates), None),
        ("distill", DistillConfig(width=None, then=("qat",), min_psnr=20.0, gates=gates), str(dcgan_h5)),
    ]
    for command, config, student in configs:
        calibration = Calibration.from_spec(str(data), samples=40, input_range=(0.0, 1.0))
        written = recipes.from_command(command, config, calibration, str(dcgan_h5), str(tmp_path / "out"), student=student)
        path = recipes.write(written, tmp_path / "recipes" / f"{command}.toml")
        text = path.read_text()
        assert '"../data/z.npz"' in text and 'output = "../out"' in text  # relative to the recipe's folder
        back = recipes.load(path)
        assert back.steps[0].config == config, command
        assert back.calibration == calibration and back.model == str(dcgan_h5) and back.output == str(tmp_path / "out")
        assert back.steps[0].student == student


def test_save_recipe_run_and_replay_from_the_report(dcgan_h5, tmp_path):
    """The command, its recipe run with -o elsewhere, and the run replayed from report.json
    write the same artifacts, byte for byte; --json is the only thing on stdout."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    result = CliRunner().invoke(cli, ["quantize", str(dcgan_h5), "-o", str(a), *FAST, "--max-bytes", "20000",
                                      "--save-recipe", str(tmp_path / "compress.toml")])
    assert result.exit_code == 0, result.output
    replay = _gencompress("run", tmp_path / "compress.toml", "-o", b, "--json")
    assert replay.returncode == 0, replay.stderr
    summary = json.loads(replay.stdout)
    assert summary["exit_code"] == 0 and [s["output_dir"] for s in summary["steps"]] == [str(b)]
    assert {x["name"] for x in summary["steps"][0]["artifacts"]} == {"dcgan.float32.tflite", "dcgan.int8.tflite", "dcgan.float32.onnx", "dcgan.int8.onnx"}
    report = json.loads((b / "report.json").read_text())
    assert report["recipe"]["document"]["output"] == str(b)  # what ran: the -o given
    assert report["recipe"]["source"].endswith("compress.toml")
    assert report["gates"]["limits"]["onnx"]["max_bytes"] == 20000
    result = CliRunner().invoke(cli, ["run", str(b / "report.json"), "-o", str(c)])
    assert result.exit_code == 0, result.output
    expected = _artifacts(a)
    assert len(expected) == 4 and _artifacts(b) == expected and _artifacts(c) == expected


def test_steps_chain_like_the_commands(dcgan_h5, tmp_path):
    """prune then quantize in one recipe (the pruned model handed over in memory) writes what
    `gencompress prune` then `gencompress quantize <the pruned .h5>` write."""
    recipe = tmp_path / "chain.toml"
    recipe.write_text(f"""
output = "recipe"
[model]
path = "{dcgan_h5}"
[calibration]
samples = 32
[[steps]]
[steps.prune]
sparsity = 0.5
eval_samples = 8
latency_runs = 5
[steps.prune.training]
steps = 20
batch_size = 16
[[steps]]
[steps.quantize]
eval_samples = 8
latency_runs = 5
""")
    result = CliRunner().invoke(cli, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    first, second = tmp_path / "cmd-prune", tmp_path / "cmd-quantize"
    result = CliRunner().invoke(cli, ["prune", str(dcgan_h5), "-o", str(first), *FAST, "--sparsity", "0.5", "--steps", "20", "--batch-size", "16"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["quantize", str(first / "dcgan-pruned.h5"), "-o", str(second), *FAST])
    assert result.exit_code == 0, result.output
    chained = _artifacts(tmp_path / "recipe")
    assert {n for n in chained if n.startswith("1-quantize/")} == {
        "1-quantize/dcgan-pruned.float32.tflite", "1-quantize/dcgan-pruned.int8.tflite",
        "1-quantize/dcgan-pruned.float32.onnx", "1-quantize/dcgan-pruned.int8.onnx",
    }
    assert {k.split("/", 1)[1]: v for k, v in chained.items() if k.startswith("0-prune/")} == _artifacts(first)
    assert {k.split("/", 1)[1]: v for k, v in chained.items() if k.startswith("1-quantize/")} == _artifacts(second)
    report = json.loads((tmp_path / "recipe" / "1-quantize" / "report.json").read_text())
    assert report["model"]["path"] == str(tmp_path / "recipe" / "0-prune" / "dcgan-pruned.h5")
    assert report["recipe"]["step"] == 1 and len(report["recipe"]["document"]["steps"]) == 2


# Each shipped example and the commands that do the same: the replay must write the same bytes.
EXAMPLES = REPO / "examples"
EQUIVALENT = {
    "quantize-dcgan.toml": [
        ["quantize", "sample_models/dcgan_digits.h5", "-o", "{out}", "--mode", "int8", "--min-psnr", "35", "--min-ssim", "0.99",
         "--max-size-ratio", "0.40", "--max-bytes", "tflite:100000"],
    ],
    "prune-then-quantize.toml": [
        ["prune", "sample_models/dcgan_digits.h5", "-o", "{out}/0-prune", "--sparsity", "0.5", "--schedule", "polynomial",
         "--skip-last", "--format", "tflite", "--steps", "200", "--batch-size", "64"],
        ["quantize", "{out}/0-prune/dcgan_digits-pruned.h5", "-o", "{out}/1-quantize", "--mode", "int8", "--format", "tflite",
         "--min-psnr", "30", "--max-size-ratio", "0.3"],
    ],
}


def test_every_example_has_its_equivalent_commands():
    assert {p.name for p in EXAMPLES.glob("*.toml")} == set(EQUIVALENT)
    workflow = (EXAMPLES / "github-actions.yml").read_text()
    assert "gencompress run examples/quantize-dcgan.toml" in workflow and "upload-artifact" in workflow


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EQUIVALENT))
def test_shipped_example_replays_byte_for_byte(name, tmp_path):
    replay = _gencompress("run", EXAMPLES / name, "-o", tmp_path / "recipe", "--json")
    assert replay.returncode == 0, replay.stderr
    summary = json.loads(replay.stdout)
    assert summary["passed"] and all(not s["gate_failures"] for s in summary["steps"])
    for args in EQUIVALENT[name]:
        result = _gencompress(*[a.replace("{out}", str(tmp_path / "cmd")) for a in args])
        assert result.returncode == 0, result.stderr
    produced, expected = _artifacts(tmp_path / "recipe"), _artifacts(tmp_path / "cmd")
    assert produced and produced.keys() == expected.keys()
    for key in expected:
        assert produced[key] == expected[key], key
    for html in (tmp_path / "recipe").rglob("report.html"):
        assert html.stat().st_size < 2 * 1024 * 1024  # the DCGAN sample's visual report: under 2 MB

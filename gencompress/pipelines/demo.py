"""``gencompress demo``: a static web page that draws samples from an artifact of a finished run,
in the browser, with the runtime's files beside it.

The run's folder (``report.json`` and the artifacts) says everything the page needs: the
inputs (latents, labels and their ids, or an image), the output range, the input range images
were scaled to. The folder written holds ``index.html``, ``demo.js``, ``runtimes.js`` (the
loader the measuring page uses too), the artifact, and a ``.b64.js`` copy of every file the page
reads: the artifact and the runtime's WebAssembly and glue from the npm packages
``setup-browser`` installed (base64 of the gzipped bytes, so a page opened from file:// can load
them as scripts). Written whole or not at all (``artifacts.save_files``), the same bytes for the
same inputs.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

from gencompress.artifacts import save_files
from gencompress.converters import browser_setup as setup
from gencompress.errors import InputError
from gencompress.results import ArtifactResult, Report

MANIFEST = "demo.json"
# Samples drawn per button press: a row of them for small outputs, fewer for large ones.
SAMPLE_VALUES = 400_000
MAX_SAMPLES = 8
_KINDS = {"onnx": "onnx", "tflite": "litert"}


def build_demo(folder, out=None, artifact: str | None = None) -> Path:
    """Write the demo of ``folder`` (a gencompress output folder) into ``out`` (default:
    ``folder/demo``), for ``artifact`` (a file name; default: ``pick``'s choice)."""
    folder = Path(folder)
    report = _report(folder)
    chosen = pick(report, artifact)
    setup.check("gencompress demo", needs=("runtimes",))
    path = folder / chosen.name
    if not path.is_file():
        raise InputError(f"{path} is not there: the demo needs the artifact beside report.json")
    out = Path(out) if out is not None else folder / "demo"
    files = demo_files(report, chosen, path.read_bytes())
    previous = out / MANIFEST
    replaces = json.loads(previous.read_text()).get("files", []) if previous.is_file() else []
    save_files(files, out, replaces=replaces)
    return out


def _report(folder: Path) -> Report:
    path = folder / "report.json"
    if not path.is_file():
        raise InputError(f"{folder} has no report.json: give the output folder of a gencompress run")
    try:
        return Report.model_validate_json(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path} is not a gencompress report: {str(exc).splitlines()[0]}") from None


def pick(report: Report, name: str | None = None) -> ArtifactResult:
    """The artifact to demo: ``name``, else among the run's passing deliverables (quantized ones
    first) the one the browser ran fastest (``--browser``), else the first ``.onnx`` of them."""
    artifacts = report.artifacts
    if name is not None:
        found = next((a for a in artifacts if a.name == name), None)
        if found is None:
            raise InputError(f"--artifact {name}: not in this run (it has {', '.join(a.name for a in artifacts)})")
        if found.browser is not None and not found.browser.loaded:
            raise InputError(f"{name} does not load in {found.browser.runtime}: {found.browser.error}")
        return found
    if not artifacts:
        raise InputError("this run wrote no artifacts to demo")
    shipped = [a for a in artifacts if a.passed and a.precision != "float32"] or [a for a in artifacts if a.passed] or list(artifacts)
    measured = [a for a in shipped if a.browser is not None and a.browser.loaded and a.browser.latency_ms is not None]
    if measured:
        return min(measured, key=lambda a: a.browser.latency_ms.p50)
    loadable = [a for a in shipped if a.browser is None or a.browser.loaded]
    if not loadable:
        raise InputError("no artifact of this run loads in its browser runtime: " + "; ".join(f"{a.name}: {a.browser.error}" for a in shipped))
    return next((a for a in loadable if a.format == "onnx"), loadable[0])


def demo_files(report: Report, chosen: ArtifactResult, data: bytes) -> dict[str, bytes]:
    """Every file of the demo folder, by name."""
    from gencompress.converters.litertjs import litertjs_copy

    model_file = chosen.name
    files = {chosen.name: data}
    note = ""
    if chosen.format == "tflite":
        fixed, _ = litertjs_copy(data)
        if fixed is not None:  # LiteRT.js runs static shapes only (converters/litertjs.py)
            model_file = f"{Path(chosen.name).stem}.batch1.tflite"
            files[model_file] = fixed
            note = f" (as {model_file}: the batch fixed to 1 and shapes made constant, which LiteRT.js needs)"
    runtime = setup.runtime_files(chosen.format)
    for name, path in runtime.files.items():
        if name == "ort.wasm.min.js":
            files[name] = path.read_bytes()  # a classic script: loads from file:// as it is
        else:
            files.update(_payload(name, path.read_bytes()))
    files.update(_payload(model_file, files[model_file]))
    assets = setup.ASSETS
    files["runtimes.js"] = (assets / "runtimes.js").read_bytes()
    files["demo.js"] = (assets / "demo.js").read_bytes()
    config = page_config(report, chosen, model_file)
    files["index.html"] = _page(report, chosen, config, note).encode()
    files["NOTICE.txt"] = _notice(chosen.format).encode()
    files[MANIFEST] = json.dumps({"artifact": chosen.name, "files": sorted([*files, MANIFEST]), **config}, indent=2, sort_keys=True).encode()
    return files


def page_config(report: Report, chosen: ArtifactResult, model_file: str) -> dict:
    """What demo.js needs: the runtime, the model file, inputs and outputs, the ranges."""
    import numpy as np

    model = report.model
    inputs = [{"name": t.name, "shape": t.shape, "dtype": t.dtype, "ids": t.ids} for t in model.inputs]
    image = next((t.name for t in model.inputs if len(t.shape) == 4 and not t.ids and "int" not in t.dtype), None)
    values = sum(int(np.prod([d or 1 for d in t.shape[1:]])) for t in model.outputs)
    return {
        "kind": _KINDS[chosen.format],
        "runtime": setup.RUNTIME_NAMES[chosen.format],
        "version": setup.pinned_versions()[chosen.format],
        "model_file": model_file,
        "inputs": inputs,
        "image_input": image,
        "input_range": list(report.settings.get("input_range") or [-1.0, 1.0]),
        "output_range": list(model.output_range),
        "samples": 1 if image else max(1, min(MAX_SAMPLES, SAMPLE_VALUES // max(1, values))),
        "seed": int(report.evaluation.seed),
    }


def _payload(name: str, data: bytes) -> dict[str, bytes]:
    """``name.b64.js``: a script that puts the gzipped, base64 bytes of ``name`` where demo.js
    finds them (gzip without a timestamp: the same bytes every time)."""
    packed = base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode("ascii")
    text = f"(self.GENCOMPRESS_FILES = self.GENCOMPRESS_FILES || {{}})[{json.dumps(name)}] = \"{packed}\";\n"
    return {f"{name}.b64.js": text.encode()}


def _page(report: Report, chosen: ArtifactResult, config: dict, note: str) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(setup.ASSETS), autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    stem = Path(report.model.path).stem
    psnr = chosen.fidelity.psnr_db
    subtitle = (f"{chosen.name}{note}: {chosen.precision}, {chosen.size_bytes / 1024:.1f} KiB"
                + (f", {psnr} dB PSNR against the float model" if psnr is not None else "")
                + f"; runs in {config['runtime']} {config['version']} (WebAssembly) in this browser")
    return env.get_template("demo.html.j2").render(title=f"{stem}: samples drawn in your browser", subtitle=subtitle, config=config)


def _notice(fmt: str) -> str:
    versions = setup.pinned_versions()
    package, license_name = {"onnx": ("onnxruntime-web", "MIT, (c) Microsoft Corporation"),
                             "tflite": ("@litertjs/core, @litertjs/wasm-utils", "Apache-2.0, (c) Google LLC")}[fmt]
    return (f"The runtime files in this folder (ort*.js, *.wasm.b64.js, core.js, wasm-utils.js, litert_wasm_*) come unchanged "
            f"(or gzipped and base64-encoded) from the npm package(s) {package} {versions[fmt]}, license {license_name}.\n")

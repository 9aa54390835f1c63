"""`gencompress demo`: a static folder that draws samples from an artifact in the browser, opened
in headless Chromium from file:// and from a static server: the samples are drawn (pixels on the
screenshot), nothing is logged as an error, nothing is requested from outside the folder."""

import functools
import hashlib
import http.server
import io
import json
import re
import threading

import numpy as np
import pytest

from conftest import SAMPLES


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def demo(sample_run, tmp_path_factory):
    import gencompress as gc

    _, folder = sample_run
    return gc.demo(folder, tmp_path_factory.mktemp("demo") / "site")


def _open(url: str, allowed: str, click: bool = True, image=None):
    """Open ``url`` in headless Chromium, wait for the first samples, optionally choose
    ``image`` and press the button; (status text, screenshot PNG of the first sample, its
    canvas's RGBA pixels, errors, requests outside ``allowed``)."""
    from playwright.sync_api import sync_playwright

    from gencompress.converters.browser import CHROMIUM_ARGS
    from gencompress.converters.browser_setup import chromium

    errors, outside = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: None if r.url.startswith((allowed, "blob:", "data:")) else outside.append(r.url))
        page.goto(url)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('drew') || "
                               "document.getElementById('status').className === 'error'", timeout=60_000)
        if image is not None:
            page.set_input_files("#image", image)
        if click:
            page.click("#draw")
            page.wait_for_function("!document.getElementById('draw').disabled", timeout=60_000)
        status = page.inner_text("#status")
        shot = page.locator("#samples canvas").first.screenshot()
        drawn = page.evaluate("() => { const c = document.querySelector('#samples canvas'); "
                              "return [c.height, c.width, Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data)]; }")
        browser.close()
    height, width, rgba = drawn
    return status, shot, np.array(rgba, np.uint8).reshape(height, width, 4), errors, outside


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64)


def test_the_demo_folder_holds_everything_and_is_the_same_every_time(demo, sample_run, tmp_path):
    import gencompress as gc

    result, folder = sample_run
    manifest = json.loads((demo / "demo.json").read_text())
    chosen = manifest["artifact"]
    # the run's deliverable the browser ran fastest
    measured = [a for a in result.report.artifacts if a.precision != "float32"]
    assert chosen == min(measured, key=lambda a: a.browser.latency_ms.p50).name
    assert (demo / chosen).read_bytes() == (folder / chosen).read_bytes()
    assert sorted(p.name for p in demo.iterdir()) == manifest["files"]
    for name in ("index.html", "demo.js", "runtimes.js", "NOTICE.txt", f"{manifest['model_file']}.b64.js"):
        assert (demo / name).is_file(), name
    for name in ("index.html", "demo.js", "runtimes.js"):  # nothing from a CDN
        assert not re.search(r"https?://", (demo / name).read_text()), name
    again = gc.demo(folder, tmp_path / "again")
    assert _digest(again) == _digest(demo)


def test_the_demo_draws_samples_from_file(demo):
    status, shot, _, errors, outside = _open((demo / "index.html").as_uri(), demo.as_uri() + "/")
    assert status.startswith("drew 8 samples in "), status
    assert not errors and not outside, (errors, outside)
    pixels = _pixels(shot)
    assert pixels.std() > 20  # digits: dark background, bright strokes


def test_the_demo_draws_samples_from_a_static_server(demo):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(demo))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        status, shot, _, errors, outside = _open(origin + "index.html", origin)
    finally:
        server.shutdown()
    assert status.startswith("drew 8 samples in ") and not errors and not outside, (status, errors, outside)
    assert _pixels(shot).std() > 20


def test_a_tflite_demo_runs_litertjs_from_file(sample_run, tmp_path):
    import gencompress as gc

    _, folder = sample_run
    site = gc.demo(folder, tmp_path / "site", artifact="dcgan_digits.int8.tflite")
    assert (site / "dcgan_digits.int8.batch1.tflite.b64.js").is_file()  # LiteRT.js needs a static batch
    status, shot, _, errors, outside = _open((site / "index.html").as_uri(), site.as_uri() + "/", click=False)
    assert status.startswith("drew 8 samples in ") and "LiteRT.js 2.5.3" in status, status
    assert not errors and not outside, (errors, outside)
    assert _pixels(shot).std() > 20


def test_an_image_to_image_demo_runs_on_the_users_image(browser_ready, i2i_keras, tmp_path):
    """The page scales the user's image to the input range, runs the model and draws its output
    over the output range: the pixels are the model's (run natively here) to a level or two."""
    import gencompress as gc
    from PIL import Image

    from gencompress.converters.runners import make_runner

    model = gc.load_model(i2i_keras)
    result = gc.export(model, gc.ExportConfig(formats=("onnx",), eval_samples=4, latency_runs=5), gc.Calibration.noise(8))
    run = result.save(tmp_path / "run")
    site = gc.demo(run, tmp_path / "site")
    stripes = np.zeros((8, 8, 3), np.uint8)  # the input's own size: no resizing in the page
    stripes[:, ::2] = (255, 40, 40)
    Image.fromarray(stripes).save(tmp_path / "photo.png")
    status, _, drawn, errors, outside = _open((site / "index.html").as_uri(), site.as_uri() + "/", image=str(tmp_path / "photo.png"))
    assert status.startswith("drew 1 sample in "), status
    assert not errors and not outside, (errors, outside)
    x = (-1 + 2 * stripes.astype(np.float32) / 255)[None]
    name = result.report.artifacts[0].name
    y = make_runner(run / name, "onnx", model.input_names, [t.name for t in model.outputs]).run({model.input_names[0]: x})[0][0]
    lo, hi = result.report.model.output_range
    expected = np.clip(np.round(255 * (y - lo) / (hi - lo)), 0, 255)
    assert drawn.shape == (16, 16, 4) and np.abs(drawn[..., :3].astype(float) - expected).max() <= 2


def test_demo_errors_are_one_line(sample_run, tmp_path):
    from click.testing import CliRunner

    from gencompress.cli import cli

    _, folder = sample_run
    result = CliRunner().invoke(cli, ["demo", str(folder), "--artifact", "nope.onnx", "-o", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--artifact nope.onnx: not in this run" in result.output
    result = CliRunner().invoke(cli, ["demo", str(SAMPLES), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "has no report.json" in result.output
    result = CliRunner().invoke(cli, ["demo", str(folder), "-o", str(tmp_path / "c")])
    assert result.exit_code == 0 and (tmp_path / "c" / "index.html").is_file(), result.output

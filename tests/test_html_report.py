"""report.html: one self-contained page (data: URIs only), grids of float vs artifact outputs,
line plots for outputs that are not images, the search chart, sections where they apply; opened
in a real headless Chromium: renders, every image loads, no console errors, and the grid's
pixels are on screen where the page puts them."""

import base64
import io
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLES

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_page():
    """A page of a headless Chromium from the system packages (a fresh profile), and the
    console errors it logs."""
    executable = _chromium()
    if executable is None:
        pytest.skip("Chromium not found: apt-get install chromium (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra: pip install -e '.[test]'")
    with sync_api.sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                                                       viewport={"width": 1280, "height": 900}, device_scale_factor=1)
        page = context.new_page()
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: errors.append(f"request: {r.url}") if not r.url.startswith(("file:", "data:")) else None)
        yield page, errors
        context.close()


def _save(result, folder) -> Path:
    return result.save(folder) / "report.html"


@pytest.fixture(scope="module")
def quantized_html(dcgan, tmp_path_factory):
    import gencompress as gc

    result = gc.quantize(dcgan, gc.QuantizeConfig(eval_samples=8, latency_runs=5, min_psnr=40.0, method="ptq"), gc.Calibration.noise(32))
    return _save(result, tmp_path_factory.mktemp("quantized")), result


@pytest.fixture(scope="module")
def signal_html(collapsing_h5, tmp_path_factory):
    """A generator whose output is a 64-value vector, not an image."""
    import gencompress as gc

    result = gc.export(gc.load_model(collapsing_h5), gc.ExportConfig(eval_samples=8, latency_runs=5), gc.Calibration.noise(16))
    return _save(result, tmp_path_factory.mktemp("signal"))


@pytest.fixture(scope="module")
def pruned_html(dcgan, tmp_path_factory):
    import gencompress as gc

    config = gc.PruneConfig(sparsity=0.5, formats=("tflite",), eval_samples=8, latency_runs=5,
                            training=gc.TrainingConfig(steps=20, batch_size=16, eval_every=10))
    return _save(gc.prune(dcgan, config, gc.Calibration.noise(32)), tmp_path_factory.mktemp("pruned"))


@pytest.fixture(scope="module")
def analyzed_html(dcgan, tmp_path_factory):
    import gencompress as gc

    result = gc.analyze(dcgan, gc.AnalyzeConfig(formats=("tflite",), eval_samples=8, latency_runs=5), gc.Calibration.noise(32))
    return _save(result, tmp_path_factory.mktemp("analyzed"))


def _external_references(html: str) -> list[str]:
    return [m for m in re.findall(r'(?:src|href)="([^"]*)"', html) if not m.startswith(("data:", "#"))]


def test_grids_for_every_artifact_and_the_search_chart(quantized_html):
    path, result = quantized_html
    html = path.read_text()
    assert "default-src 'none'; img-src data:" in html and not _external_references(html)
    for i, a in enumerate(result.report.artifacts):
        grid = re.search(rf'<figure class="grid" id="grid-{i}-0" data-artifact="{re.escape(a.name)}".*?</figure>', html, re.S)
        assert grid, a.name
        assert re.findall(r'<th>(.*?)</th><td><img src="data:image/png;base64,', grid.group(0)) == ["float model", "artifact", "|error|"]
    searched = [i for i, a in enumerate(result.report.artifacts) if a.fallback]
    assert searched and all(f'id="search-{i}"' in html for i in searched)
    assert 'id="gates"' in html and "PSNR" in html
    # the grid's artifact row holds the artifact's own outputs on the first held-out samples
    a = result.report.artifacts[1]
    row = re.search(rf'id="grid-1-0".*?<th>artifact</th><td><img src="data:image/png;base64,([^"]+)"', html, re.S).group(1)
    from PIL import Image

    drawn = np.asarray(Image.open(io.BytesIO(base64.b64decode(row))))
    outputs = result.previews.outputs[a.name][0]
    assert drawn.shape[0] > outputs.shape[1] and drawn.shape[1] > len(outputs) * outputs.shape[2]  # enlarged, 8 tiles
    assert path.stat().st_size < 2 * 1024 * 1024


def test_outputs_that_are_not_images_get_a_line_plot(signal_html):
    html = signal_html.read_text()
    assert '<figure class="signal" id="grid-0-0"' in html and 'class="grid"' not in html
    assert "data:image/svg+xml;base64," in html and not _external_references(html)


def test_pruning_and_sensitivity_sections(pruned_html, analyzed_html):
    pruned = pruned_html.read_text()
    assert 'id="pruning"' in pruned and "Requested sparsity 0.5" in pruned and 'alt="pruning fine-tuning"' in pruned
    analyzed = analyzed_html.read_text()
    assert 'id="sensitivity"' in analyzed and 'alt="sensitivity ranking, tflite"' in analyzed


def _open(page, errors, path: Path):
    errors.clear()
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
    return images


@pytest.mark.parametrize("which", ["quantized_html", "signal_html", "pruned_html", "analyzed_html"])
def test_opens_in_chromium_every_image_loads_no_errors(browser_page, which, request):
    page, errors = browser_page
    path = request.getfixturevalue(which)
    path = path[0] if isinstance(path, tuple) else path
    images = _open(page, errors, path)
    assert images and all(complete and width > 0 for complete, width, _ in images), [i for i in images if not i[1]]
    assert page.title().startswith("gencompress ")
    assert errors == []


def test_screenshot_the_grid_is_where_the_page_says(browser_page, quantized_html):
    """The int8 TFLite artifact's grid: inside its article (the table's link target), inside the
    page, and the pixels Chromium draws in its artifact row are the row's picture."""
    from PIL import Image

    page, errors = browser_page
    path, result = quantized_html
    _open(page, errors, path)
    name = result.report.artifacts[1].name
    assert page.get_attribute("#artifact-table a[href='#art-1']", "href") == "#art-1" and page.inner_text("#artifact-table a[href='#art-1']") == name
    grid = page.locator("#grid-1-0")
    assert grid.get_attribute("data-artifact") == name
    grid.scroll_into_view_if_needed()
    box, article = grid.bounding_box(), page.locator("#art-1").bounding_box()
    width, height = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    assert box["width"] > 100 and box["height"] > 100
    assert article["y"] <= box["y"] and box["y"] + box["height"] <= article["y"] + article["height"] + 1
    viewport = page.viewport_size
    assert 0 <= box["x"] and box["x"] + box["width"] <= min(width, viewport["width"])
    row = grid.locator("img").nth(1)
    shot = Image.open(io.BytesIO(row.screenshot())).convert("L")
    pixels = np.asarray(shot, np.float64)
    assert pixels.std() > 10 and (pixels < 250).mean() > 0.3  # not blank
    src = row.get_attribute("src")
    expected = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("L"), np.float64)
    h, w = expected.shape
    assert pixels.shape[0] - h in (0, 1) and pixels.shape[1] - w in (0, 1)  # 1:1, give or take a sub-pixel edge
    offsets = [(dy, dx) for dy in range(pixels.shape[0] - h + 1) for dx in range(pixels.shape[1] - w + 1)]
    assert min(np.abs(pixels[dy:dy + h, dx:dx + w] - expected).mean() for dy, dx in offsets) < 2.0  # the row's picture, where the page puts it
    screenshot = path.with_suffix(".png")
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


@pytest.mark.slow
def test_dcgan_sample_report_under_2_mb_opens_clean(browser_page, tmp_path):
    import gencompress as gc

    result = gc.quantize(gc.load_model(SAMPLES / "dcgan_digits.h5"))
    path = result.save(tmp_path) / "report.html"
    assert path.stat().st_size < 2 * 1024 * 1024
    page, errors = browser_page
    images = _open(page, errors, path)
    assert len(images) >= 4 * 3 and all(width > 0 for _, width, _ in images)
    assert errors == []

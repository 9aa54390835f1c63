"""What ``--browser`` and ``gencompress demo`` need, found or installed: headless Chromium (from
the system's packages), Playwright (the Python package that drives it) and the two browser
runtimes from npm, onnxruntime-web and LiteRT.js (``@litertjs/core``), at the versions
``browser_assets/package-lock.json`` pins.

``gencompress setup-browser`` installs the runtimes with ``npm ci`` into a folder named after
the lockfile's hash (``~/.cache/gencompress/browser-runtimes/<hash>``, or
``$GENCOMPRESS_BROWSER_RUNTIMES``), so a new pin installs beside the old one and nothing is
written into the installed package. Without one of the three, ``missing()`` says in one line
what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gencompress.errors import InputError

ASSETS = Path(__file__).with_name("browser_assets")
LOCKFILE = ASSETS / "package-lock.json"
# The files each runtime needs, relative to node_modules: checked after installing, vendored
# into demos (the measuring page is served them straight from the install).
ONNX_FILES = {
    "ort.wasm.min.js": "onnxruntime-web/dist/ort.wasm.min.js",
    "ort-wasm-simd-threaded.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
}
LITERT_FILES = {
    "core.js": "@litertjs/core/dist/index.js",
    "wasm-utils.js": "@litertjs/wasm-utils/dist/index.js",
    **{f"{glue}.{ext}": f"@litertjs/core/wasm/{glue}.{ext}"
       for glue in ("litert_wasm_internal", "litert_wasm_compat_internal", "litert_wasm_threaded_internal") for ext in ("js", "wasm")},
}
PACKAGES = {"onnx": "onnxruntime-web", "tflite": "@litertjs/core"}
RUNTIME_NAMES = {"onnx": "onnxruntime-web", "tflite": "LiteRT.js"}


class BrowserUnavailable(InputError):
    """Chromium, Playwright or the browser runtimes are missing (the message says which, and how
    to install each)."""


def lock_hash() -> str:
    return hashlib.sha256(LOCKFILE.read_bytes()).hexdigest()[:12]


def runtimes_dir() -> Path:
    """Where ``setup-browser`` installs the runtimes pinned by this gencompress's lockfile."""
    root = os.environ.get("GENCOMPRESS_BROWSER_RUNTIMES")
    base = Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gencompress" / "browser-runtimes"
    return base / lock_hash()


def node_modules() -> Path:
    return runtimes_dir() / "node_modules"


def pinned_versions() -> dict[str, str]:
    """The runtimes' versions the lockfile pins, by format."""
    packages = json.loads(LOCKFILE.read_text())["packages"]
    return {fmt: packages[f"node_modules/{name}"]["version"] for fmt, name in PACKAGES.items()}


def chromium() -> str | None:
    """The Chromium executable: ``$GENCOMPRESS_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH."""
    given = os.environ.get("GENCOMPRESS_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser")) if p), None)


def runtimes_installed() -> bool:
    modules = node_modules()
    return all((modules / rel).is_file() for rel in {**ONNX_FILES, **LITERT_FILES}.values())


NEEDS = ("chromium", "playwright", "runtimes")


def missing(needs=NEEDS) -> list[str]:
    """What of ``needs`` is lacking, each with how to install it (empty: everything is there)."""
    import importlib.util

    lacking = []
    if "chromium" in needs and chromium() is None:
        lacking.append("Chromium (apt-get install chromium, or set GENCOMPRESS_CHROMIUM to its executable)")
    if "playwright" in needs and importlib.util.find_spec("playwright") is None:
        lacking.append("the Python package playwright (pip install 'gencompress[browser]'; it drives the system's Chromium, no `playwright install`)")
    if "runtimes" in needs and not runtimes_installed():
        versions = pinned_versions()
        lacking.append(f"the browser runtimes onnxruntime-web {versions['onnx']} and @litertjs/core {versions['tflite']} "
                       f"(run `gencompress setup-browser`: npm ci into {runtimes_dir()})")
    return lacking


def check(what: str = "--browser", needs=NEEDS) -> None:
    """Raise ``BrowserUnavailable`` (one line) when something of ``needs`` is missing for ``what``."""
    lacking = missing(needs)
    if lacking:
        raise BrowserUnavailable(f"{what} needs " + "; ".join(lacking))


def install(log=print) -> Path:
    """``npm ci`` of the pinned runtimes into ``runtimes_dir()`` (nothing to do when they are
    there); scripts of the packages are not run (none is needed to load the files)."""
    target = runtimes_dir()
    if runtimes_installed():
        log(f"browser runtimes already installed in {target}")
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise BrowserUnavailable("setup-browser needs npm (Node.js 18 or later: apt-get install nodejs npm)")
    target.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "package-lock.json"):
        shutil.copyfile(ASSETS / name, target / name)
    versions = pinned_versions()
    log(f"installing onnxruntime-web {versions['onnx']} and @litertjs/core {versions['tflite']} into {target} (npm ci)")
    done = subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--omit=dev"], cwd=target,
                          capture_output=True, text=True)
    if done.returncode != 0 or not runtimes_installed():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["files missing after npm ci"]
        raise BrowserUnavailable(f"npm ci in {target} failed: {last[0]}")
    return target


@dataclass(frozen=True)
class RuntimeFiles:
    """The files of one runtime a page needs, by the name the page asks for."""

    fmt: str
    files: dict[str, Path]


def runtime_files(fmt: str, threads: bool = False) -> RuntimeFiles:
    """The installed files of the runtime for ``fmt`` (``onnx`` or ``tflite``) a single-threaded
    page needs (``threads``: the threaded LiteRT.js build too)."""
    modules = node_modules()
    table = ONNX_FILES if fmt == "onnx" else LITERT_FILES
    names = [n for n in table if threads or "threaded_internal" not in n]
    return RuntimeFiles(fmt, {n: modules / table[n] for n in names})

"""Browser runtimes as runners: an artifact loaded in headless Chromium by its browser runtime
(onnxruntime-web for ``.onnx``, LiteRT.js for ``.tflite``), run on the same inputs and timed in
the page.

``BrowserSession`` starts Chromium (the system's, driven by Playwright) and a server on
127.0.0.1 that serves only the measuring page, the installed runtimes and the registered
artifacts, with the headers that make the page cross-origin isolated (``SharedArrayBuffer`` for
the threaded builds, and a 5 µs timer instead of 100 µs); every other request is refused, so
the page reaches nothing beyond it. ``BrowserSession.page(fmt, threads)`` is one page per
runtime and thread count (both runtimes keep one WebAssembly instance per page), and
``RuntimePage.runner`` gives a ``BrowserRunner``: ``run``/``run_all`` like the native runners,
and ``timed_runs`` for ``report.latency.measure_latency``, which then times in the page.
"""

from __future__ import annotations

import base64
import functools
import http.server
import itertools
import threading
from pathlib import Path

import numpy as np

from gencompress.converters import browser_setup as setup
from gencompress.converters.litertjs import litertjs_copy
from gencompress.converters.runners import run_in_batches
from gencompress.converters.runners import _dequantize, _match, _quantize, make_runner
from gencompress.errors import ConversionError

# Chromium as the report.html tests run it: headless, no sandbox (containers run as root),
# no GPU, none of its background network traffic.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-extensions"]
# Outputs per call to the page at most this many bytes (base64 travels through Playwright).
CHUNK_BYTES = 8 * 1024 * 1024
_KINDS = {"onnx": "onnx", "tflite": "litert"}


class BrowserLoadError(ConversionError):
    """The browser runtime refused an artifact or failed running it (its one-line error)."""


class _Handler(http.server.BaseHTTPRequestHandler):
    """GET of the files ``routes`` maps (URL prefix → folder, or exact path → file); 404 else."""

    routes: dict = {}
    TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        found = self._file(path)
        if found is None:
            self.send_error(404)
            return
        data = found.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", self.TYPES.get(found.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(data)))
        # cross-origin isolation: threads (SharedArrayBuffer) and a fine-grained timer
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _file(self, path: str) -> Path | None:
        if path in self.routes:
            return self.routes[path]
        for prefix, folder in self.routes.items():
            if prefix.endswith("/") and path.startswith(prefix):
                target = (folder / path[len(prefix):]).resolve()
                if target.is_file() and folder.resolve() in target.parents:
                    return target
        return None

    def log_message(self, *args):  # quiet: the run's progress says what happens
        pass


class BrowserSession:
    """Chromium, the local server and one page per (runtime, threads); ``close()`` ends them."""

    def __init__(self):
        setup.check()
        from playwright.sync_api import sync_playwright

        modules = setup.node_modules()
        self._routes = {
            "/gc/": setup.ASSETS,
            "/ort/": modules / "onnxruntime-web" / "dist",
            "/litert/": modules / "@litertjs" / "core",
            "/litert-utils/": modules / "@litertjs" / "wasm-utils",
        }
        handler = type("Handler", (_Handler,), {"routes": self._routes})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._ids = itertools.count()
        self._pages: dict = {}
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=setup.chromium(), headless=True, args=CHROMIUM_ARGS)
        except Exception as exc:  # Playwright's own error type: the browser did not start
            self._playwright.stop()
            self._server.shutdown()
            raise setup.BrowserUnavailable(f"Chromium did not start ({setup.chromium()}): {str(exc).splitlines()[0]}") from exc
        self.browser = f"Chromium {self._browser.version}"

    def serve(self, path: Path) -> str:
        """A URL for the file at ``path`` (only registered files are served)."""
        url = f"/artifacts/{next(self._ids)}/{Path(path).name}"
        self._routes[url] = Path(path)
        return url

    def page(self, fmt: str, threads: int = 1) -> "RuntimePage":
        """The page of ``fmt``'s runtime with ``threads`` threads (a new one after a crash)."""
        key = (fmt, threads)
        if key not in self._pages or self._pages[key].crashed:
            self._pages[key] = RuntimePage(self, fmt, threads)
        return self._pages[key]

    def close(self) -> None:
        """Chromium, Playwright's driver and the server, each whatever the others do (after a
        Ctrl-C the driver may be gone already)."""
        for step in (self._browser.close, self._playwright.stop, self._server.shutdown, self._server.server_close):
            try:
                step()
            except Exception:  # noqa: BLE001 (closing: nothing left to report to)
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RuntimePage:
    """One page with one runtime loaded (``info``: runtime, version, build, whether the page is
    cross-origin isolated, the cores it sees); ``error`` when the runtime itself did not load."""

    def __init__(self, session: BrowserSession, fmt: str, threads: int):
        self.session, self.fmt, self.threads = session, fmt, threads
        context = session._browser.new_context()
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(session.origin + "/") else route.abort())
        self.page = context.new_page()
        self.crashed = False
        self.page.on("crash", lambda _: setattr(self, "crashed", True))
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.console.append(str(e)))
        self.page.goto(session.origin + "/gc/harness.html")
        version = setup.pinned_versions()[fmt]
        self.info = self.page.evaluate("([k, t, b, v]) => gc.start(k, t, b, v)", [_KINDS[fmt], threads, session.origin + "/", version])
        self.error = self.info.get("error")

    def runner(self, path, input_names: list[str], output_names: list[str], workdir: Path) -> "BrowserRunner":
        """A runner for the artifact at ``path``; ``BrowserLoadError`` with the runtime's one-line
        error when it does not load. A ``.tflite`` is loaded as the copy LiteRT.js can run
        (``litertjs.litertjs_copy``; ``runner.notes`` say what it changed)."""
        if self.error:
            raise BrowserLoadError(f"{setup.RUNTIME_NAMES[self.fmt]} did not start: {self.error}")
        path, notes = Path(path), []
        if self.fmt == "tflite":
            fixed, notes = litertjs_copy(path.read_bytes())
            if fixed is not None:
                path = workdir / f"{path.stem}.batch1{path.suffix}"
                path.write_bytes(fixed)
        model_id = f"m{next(self.session._ids)}"
        loaded = self.evaluate("([i, u]) => gc.load(i, u)", [model_id, self.session.serve(path)])
        if "error" in loaded:
            raise BrowserLoadError(loaded["error"] or (self.console[-1] if self.console else "unknown error"))
        return BrowserRunner(self, model_id, path, input_names, output_names, loaded, notes)

    def evaluate(self, script: str, arg):
        """``page.evaluate``; the page dying under it (out of memory, a crash of the runtime) is
        the artifact's ``BrowserLoadError``, and the next ``BrowserSession.page`` opens a new page."""
        from playwright.sync_api import Error

        try:
            return self.page.evaluate(script, arg)
        except Error as exc:
            self.crashed = True
            raise BrowserLoadError(f"the page failed: {str(exc).splitlines()[0][:300]}") from exc


class BrowserRunner:
    """Runs an artifact in its browser runtime, inputs keyed by the model's input names, outputs
    as float arrays in the model's output order, like the native runners (integer I/O is
    (de)quantized here with the artifact's own scales, read by the native runtime)."""

    def __init__(self, page: RuntimePage, model_id: str, path: Path, input_names, output_names, loaded: dict, notes: list[str]):
        self.page, self.model_id, self.notes = page, model_id, notes
        # the page takes inputs and gives outputs in the runtime's order: matched to the model's
        # names as the native runners match them
        page_in = [d["name"] for d in loaded["inputs"]]
        page_out = [d["name"] for d in loaded["outputs"]]
        by_position = {_position(n, page_in, i, page.fmt): n for i, n in enumerate(input_names)}
        self._input_order = [by_position[j] for j in range(len(page_in))]
        self._order = [_position(n, page_out, i, page.fmt) for i, n in enumerate(output_names)]
        self._in, self._out = {}, None
        if page.fmt == "tflite":  # integer I/O: the artifact's own scales, read by LiteRT
            native = make_runner(path, page.fmt, input_names, output_names)
            self._in = {n: d for n, d in native.inputs}
            self._out = native.outputs
        self._sample_bytes = sum(4 * int(np.prod([max(d, 1) for d in o["shape"][1:]])) for o in loaded["outputs"])

    def _inputs(self, arrays: dict) -> list[dict]:
        sent = []
        for name in self._input_order:
            x = np.asarray(arrays[name])
            if name in self._in:
                x = _quantize(x, self._in[name])
            if x.dtype.kind == "f":
                x = x.astype(np.float32)
            elif x.dtype.itemsize > 1:  # labels: int32 here, the page casts to the model's int64
                x = x.astype(np.int32)
            sent.append({"b64": base64.b64encode(np.ascontiguousarray(x).tobytes()).decode("ascii"), "dtype": str(x.dtype), "shape": list(x.shape)})
        return sent

    def _outputs(self, got: list[dict]) -> list[np.ndarray]:
        arrays = [np.frombuffer(base64.b64decode(o["b64"]), dtype=o["dtype"]).reshape(o["shape"]) for o in got]
        arrays = [arrays[i] for i in self._order]
        if self._out is not None:
            return [_dequantize(a, d) for a, d in zip(arrays, self._out)]
        return [a.astype(np.float32) for a in arrays]

    def _call(self, method: str, *args):
        got = self.page.evaluate(f"(a) => gc.{method}(...a)", [self.model_id, *args])
        if "error" in got:
            raise BrowserLoadError(got["error"])
        return got

    def run(self, sample: dict) -> list[np.ndarray]:
        n = len(next(iter(sample.values())))
        return self._outputs(self._call("run", self._inputs(sample), n)["outputs"])

    def run_all(self, data, on_sample=None) -> list[np.ndarray]:
        """Outputs for every sample of a ``CalibrationSet`` (one at a time in the page, in calls of
        up to ``CHUNK_BYTES`` of outputs); ``on_sample(n)`` after each call (progress)."""
        return run_in_batches(self.run, data, max(1, CHUNK_BYTES // max(1, self._sample_bytes)), on_sample)

    def timed_runs(self, sample: dict, warmup: int, runs: int, max_seconds: float, min_runs: int) -> list[float]:
        """Milliseconds of each timed run, measured in the page (``measure_latency``'s protocol)."""
        return self._call("time", self._inputs(sample), warmup, runs, max_seconds, min_runs)["times"]

    def close(self) -> None:
        self.page.evaluate("(i) => gc.close(i)", self.model_id)


def _position(name: str, names: list[str], i: int, fmt: str) -> int:
    """Where the runtime has the model's ``i``-th tensor ``name``: by name, else as the native
    runners take it (LiteRT: the sorted signature keys; onnxruntime: graph order)."""
    if name in names:
        return names.index(name)
    if fmt == "tflite":
        return names.index(_match(name, dict.fromkeys(names), i))
    return i


@functools.cache
def browser_versions() -> dict[str, str]:
    """The pinned runtime versions, by format, for reports."""
    return setup.pinned_versions()

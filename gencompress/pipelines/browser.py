"""``--browser``: every artifact of a run in its browser runtime in headless Chromium, measured
like its native twin and reported beside it (``ArtifactResult.browser``).

Each artifact is loaded by onnxruntime-web (``.onnx``) or LiteRT.js (``.tflite``), run on the
held-out inputs (fidelity against the float model, agreement with the native runtime on the same
file) and timed with the run's latency protocol in the page: single-threaded, then with threads
where the page is cross-origin isolated. An artifact the runtime refuses gets its one-line error
in the report and a note. When a browser latency gate is set, the gated artifacts and their
float32 references are timed again in interleaved rounds, as the native latency gates are.
"""

from __future__ import annotations

from gencompress.converters.browser import BrowserLoadError, BrowserSession
from gencompress.converters.browser_setup import RUNTIME_NAMES
from gencompress.pipelines.gates import GATE_ROUNDS, interleaved, round_latency, round_speedups
from gencompress.results import ArtifactResult, BrowserRun, Fidelity, Latency

# A quantized artifact's browser PSNR within this many dB of its native PSNR is the same result;
# a float32 artifact's browser outputs must reach this PSNR against the native runtime's.
PSNR_SLACK_DB = 0.5
FLOAT_AGREEMENT_DB = 80.0
# Threads for the threaded build: the cores the page sees, at most this many (onnxruntime-web's
# own default is at most 4).
MAX_THREADS = 4


def measure_in_browser(session, gated: list[ArtifactResult]) -> dict[str, float] | None:
    """Set ``browser`` on every artifact of ``session``; with ``gated`` (browser latency gates),
    time those and their float32 references again in interleaved rounds and return their
    browser speed-ups over float32 by artifact name."""
    with session.progress.phase("browser: starting headless Chromium"):
        browser = BrowserSession()
    try:
        runners = {}
        for fmt in dict.fromkeys(a.format for a in session.artifacts):
            for a in [a for a in session.artifacts if a.format == fmt]:
                a.browser, runners[a.name] = _measure(session, browser, browser.page(fmt), a)  # a new page after a crash
                a.notes = a.notes + _notes(a)
            _threaded(session, browser, browser.page(fmt), [a for a in session.artifacts if a.format == fmt and a.browser.loaded])
        return _retime(session, gated, runners) if gated else None
    finally:
        browser.close()


def _measure(session, browser: BrowserSession, page, a: ArtifactResult):
    """One artifact single-threaded: (``BrowserRun``, its runner or ``None``)."""
    from gencompress.report.metrics import fidelity

    run = BrowserRun(runtime=RUNTIME_NAMES[a.format], version=page.info.get("version") or "", browser=browser.browser,
                     loaded=False, build=page.info.get("build"))
    outputs_names = [t.name for t in session.model.outputs]
    try:
        runner = page.runner(a.path, session.model.input_names, outputs_names, session.workdir)
    except BrowserLoadError as exc:
        return run.model_copy(update={"error": str(exc)}), None
    run.loaded = True
    run.notes = list(runner.notes)
    n = len(session.evaluation)
    label = f"{a.name}: in {run.runtime} (Chromium) on {n} held-out samples"
    try:
        with session.progress.phase(label, total=n, unit="sample") as phase:
            outputs = runner.run_all(session.evaluation, on_sample=phase.update)
        run.latency_ms = Latency(**session.latency(runner, session.evaluation.sample(0)))
    except BrowserLoadError as exc:
        return run.model_copy(update={"error": f"runs fail: {exc}"}), None
    run.fidelity = Fidelity(**fidelity(session.reference, outputs, session.output_range))
    native = session.runner(a.path, a.format).run_all(session.evaluation)
    run.native_psnr_db = fidelity(native, outputs, session.output_range, with_ssim=False)["psnr_db"]
    if _differs(a, run):
        run.differing_op = _first_differing_op(session, page, a)
    return run, runner


def _differs(a: ArtifactResult, run: BrowserRun) -> bool:
    """The browser gives another result than the native runtime (see ``PSNR_SLACK_DB``)."""
    if run.native_psnr_db is None or run.fidelity is None or run.fidelity.psnr_db is None or a.fidelity.psnr_db is None:
        return True
    if a.precision == "float32":
        return run.native_psnr_db < FLOAT_AGREEMENT_DB
    return abs(run.fidelity.psnr_db - a.fidelity.psnr_db) > PSNR_SLACK_DB


def _first_differing_op(session, page, a: ArtifactResult) -> str | None:
    from gencompress.errors import GencompressError
    from gencompress.pipelines.browser_diff import first_differing_op

    try:
        return first_differing_op(session, page, a)
    except (GencompressError, RuntimeError, ValueError) as exc:  # a diagnosis that fails must not fail the run
        return f"not located ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"


def _threaded(session, browser: BrowserSession, single, artifacts: list[ArtifactResult]) -> None:
    """The threaded build's latency of ``artifacts``, when the page allows threads."""
    cores = single.info.get("cores") or 1
    threads = min(MAX_THREADS, cores)
    if not artifacts or not single.info.get("isolated") or threads < 2:
        for a in artifacts:
            a.browser.notes.append(f"no threaded figures: the page sees {cores} core(s)"
                                   + ("" if single.info.get("isolated") else " and is not cross-origin isolated"))
        return
    for a in artifacts:
        page = browser.page(a.format, threads)
        a.browser.threads, a.browser.threads_build = threads, page.info.get("build")
        try:
            runner = page.runner(a.path, session.model.input_names, [t.name for t in session.model.outputs], session.workdir)
            with session.progress.phase(f"{a.name}: in {a.browser.runtime}, {threads} threads: latency", unit="run"):
                a.browser.threads_latency_ms = Latency(**session.latency(runner, session.evaluation.sample(0)))
        except BrowserLoadError as exc:
            a.browser.threads_error = str(exc)


def _retime(session, gated: list[ArtifactResult], runners: dict) -> dict[str, float]:
    """The browser latency of ``gated`` and their float32 references in ``GATE_ROUNDS``
    interleaved rounds (single-threaded); their ``browser.latency_ms`` become the rounds'."""
    references = {a.format: a for a in session.artifacts if a.precision == "float32" and a.variant is None}
    timed = list({id(a): a for a in [references[a.format] for a in gated if a.format in references] + gated}.values())
    timed = [a for a in timed if runners.get(a.name) is not None]
    if not timed:
        return {}
    rounds = interleaved([runners[a.name] for a in timed], session.evaluation.sample(0), session.progress,
                         f"browser latency for the gates: {GATE_ROUNDS} rounds over {len(timed)} artifacts")
    for a, kept in zip(timed, rounds):
        a.browser.latency_ms = round_latency(kept)
    return round_speedups(timed, rounds, references)


def _notes(a: ArtifactResult) -> list[str]:
    """What the terminal and report say about an artifact in the browser, when something is off."""
    run = a.browser
    where = f"{run.runtime} {run.version} ({run.browser})"
    if not run.loaded:
        return [f"does not load in {where}: {run.error}"]
    if run.error:
        return [f"loads in {where} but {run.error}"]
    notes = []
    if run.fidelity is not None and _differs(a, run):
        native = a.fidelity.psnr_db
        op = f"; first op that differs: {run.differing_op}" if run.differing_op else ""
        notes.append(f"in {where}: PSNR {run.fidelity.psnr_db} dB against {native} dB natively "
                     f"(browser vs native outputs: {run.native_psnr_db} dB){op}")
    return notes

"""Charts for report.html, drawn with matplotlib as SVG.

matplotlib: the well-kept standard for plots in Python, and it draws without a display
(``Figure`` + ``savefig``, no pyplot state). SVG keeps charts sharp at any zoom and small; text
stays text (``svg.fonttype = none``), the date is left out and ids are salted with a constant,
so the same report draws the same bytes.
"""

from __future__ import annotations

import io

import numpy as np

_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "gencompress", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}
PASS, FAIL, PICK, FLOAT = "#2a9d4b", "#c8372d", "#1f5fbf", "#444444"


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return buf.getvalue()


def _styled(draw):
    """Draw (and save) under the report's matplotlib settings, leaving the caller's alone."""

    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context(_STYLE):
            return draw(*args, **kwargs)

    wrapper.__doc__ = draw.__doc__
    return wrapper


@_styled
def search_chart(attempts: list[dict], chosen_index: int | None, target: float | None, float_size: int | None) -> bytes:
    """Size against PSNR of every attempt of a fidelity search, numbered in search order; the
    pick ringed, the target a dashed line."""
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    sizes = np.array([a["size_bytes"] for a in attempts], float) / 1024
    psnr = np.array([np.nan if a["psnr_db"] is None else a["psnr_db"] for a in attempts], float)
    ok = np.array([bool(a["passed"]) for a in attempts])
    ax.scatter(sizes[ok], psnr[ok], c=PASS, s=28, label="met the target", zorder=3)
    ax.scatter(sizes[~ok], psnr[~ok], c=FAIL, marker="x", s=28, label="missed it", zorder=3)
    for i, (x, y) in enumerate(zip(sizes, psnr)):
        if np.isfinite(y):
            ax.annotate(str(i + 1), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color=FLOAT)
    if chosen_index is not None and np.isfinite(psnr[chosen_index]):
        ax.scatter([sizes[chosen_index]], [psnr[chosen_index]], s=190, facecolors="none", edgecolors=PICK, linewidths=2,
                   label=f"pick (#{chosen_index + 1})", zorder=4)
    if target:
        ax.axhline(target, color=FAIL, linestyle="--", linewidth=1, label=f"target {target:g} dB")
    if float_size:  # said on the axis, not drawn: a line there would squeeze the attempts into a corner
        ax.set_xlabel(f"size (KiB; float32: {float_size / 1024:,.0f} KiB)")
    else:
        ax.set_xlabel("size (KiB)")
    ax.set_ylabel("PSNR vs float (dB)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return _svg(fig)


@_styled
def sensitivity_chart(units: list[dict], int8_psnr: float | None, top: int = 15) -> bytes:
    """The ``top`` most sensitive units: PSNR with only that unit in int8 (lower hurts more)."""
    shown = units[:top]
    fig = _figure(6.0, 0.8 + 0.24 * len(shown))
    ax = fig.add_subplot()
    values = [np.nan if u["only_quantized_psnr_db"] is None else u["only_quantized_psnr_db"] for u in shown]
    labels = [u["label"] if len(u["label"]) <= 48 else u["label"][:45] + "…" for u in shown]
    y = np.arange(len(shown))[::-1]
    ax.barh(y, values, color=PICK, height=0.6)
    ax.set_yticks(y, labels, fontsize=7)
    if int8_psnr is not None:
        ax.axvline(int8_psnr, color=FAIL, linestyle="--", linewidth=1, label=f"everything int8: {int8_psnr:.1f} dB")
        ax.legend(fontsize=7, loc="lower right", frameon=False)
    ax.set_xlabel("PSNR with only this unit int8 (dB)")
    return _svg(fig)


@_styled
def history_chart(history: list[dict], title: str) -> bytes | None:
    """Held-out PSNR against fine-tuning step."""
    points = [(h["step"], h["psnr_db"]) for h in history if h.get("psnr_db") is not None]
    if len(points) < 2:
        return None
    fig = _figure(6.0, 2.6)
    ax = fig.add_subplot()
    steps, psnr = zip(*points)
    ax.plot(steps, psnr, marker="o", markersize=3, color=PICK)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out PSNR (dB)")
    ax.set_title(title, fontsize=9)
    return _svg(fig)


@_styled
def signal_chart(reference: np.ndarray, test: np.ndarray, samples: int = 3, max_points: int = 1024) -> bytes:
    """Outputs that are not images (audio, 1-D signals, vectors): the float model's and the
    artifact's values for a few samples, and their absolute difference below."""
    fig = _figure(6.0, 3.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[2, 1])
    colors = ["#1f5fbf", "#2a9d4b", "#b5651d"]
    for i in range(min(samples, len(reference))):
        r = reference[i].reshape(-1)[:max_points]
        t = test[i].reshape(-1)[:max_points]
        top.plot(r, color=colors[i % 3], linewidth=1, label=f"sample {i + 1} float")
        top.plot(t, color=colors[i % 3], linewidth=1, linestyle="--", label=f"sample {i + 1} artifact")
        bottom.plot(np.abs(t - r), color=colors[i % 3], linewidth=1)
    top.set_ylabel("value")
    top.legend(fontsize=6, ncol=3, frameon=False, loc="upper right")
    bottom.set_ylabel("|error|")
    bottom.set_xlabel("output element" + (f" (first {max_points})" if reference[0].size > max_points else ""))
    return _svg(fig)

"""The run's plots: matplotlib's Agg renderer, never a display; rendered to bytes, which the
caller writes atomically. matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

from typing import Any


def curves_png(history: dict[str, list[float]], key: str, label: str) -> bytes:
    return _png(curves_figure(history, key, label))


def curves_figure(history: dict[str, list[float]], key: str, label: str) -> Any:
    """Training (dots) and validation (line) curves of one quantity, as the tutorial draws
    them; epochs whose value is not finite are left out, and a run without a finite value
    says so instead of drawing an empty axis."""
    import math

    fig, ax = _figure()
    name = label.lower()
    series = {"train": history.get(key, []), "val": history.get(f"val_{key}", [])}
    points = {k: [(i, v) for i, v in enumerate(values, start=1) if math.isfinite(v)] for k, values in series.items()}
    if not points["train"] and not points["val"]:
        ax.text(0.5, 0.5, f"no epoch with a finite {name} to plot", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_title(f"Training {name}")
        ax.set_xticks([])
        ax.set_yticks([])
        return fig
    ax.plot(*zip(*points["train"]) if points["train"] else ([], []), "bo", label=f"Training {name}")
    if points["val"]:  # one epoch: a line of one point would not show, so it gets a marker
        ax.plot(*zip(*points["val"]), "b-", marker="s" if len(points["val"]) == 1 else None,
                label=f"Validation {name}")
    ax.set_title(f"Training and validation {name}" if points["val"] else f"Training {name}")
    last = max(i for i, _ in points["train"] + points["val"])
    ax.set_xlim(0.5, last + 0.5)
    if last <= 20:  # whole epochs only, even for one (MaxNLocator needs two in view)
        ax.set_xticks(range(1, last + 1))
    ax.set_xlabel("Epochs")
    ax.set_ylabel(label)
    ax.legend()
    return fig


def comparison_png(curves: dict[str, list[float]], title: str, ylabel: str) -> bytes:
    """One line per model."""
    fig, ax = _figure()
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_title(title)
    ax.set_xlabel("Epochs")
    ax.set_ylabel(ylabel)
    ax.legend()
    return _png(fig)


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.8), dpi=100)
    ax = fig.subplots()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    return fig, ax


def _png(fig: Any) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()

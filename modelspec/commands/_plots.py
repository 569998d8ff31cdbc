"""The run's plots: matplotlib's Agg renderer, never a display; rendered to bytes, which the
caller writes atomically. matplotlib is imported only when a plot is drawn."""

from __future__ import annotations

from typing import Any


def curves_png(history: dict[str, list[float]], key: str, label: str) -> bytes:
    """Training (dots) and validation (line) curves of one quantity."""
    fig, ax = _figure()
    train = history.get(key, [])
    epochs = range(1, len(train) + 1)
    ax.plot(epochs, train, "bo", label=f"Training {label.lower()}")
    if f"val_{key}" in history:
        ax.plot(epochs, history[f"val_{key}"], "b", label=f"Validation {label.lower()}")
    ax.set_title(f"Training and validation {label.lower()}")
    ax.set_xlabel("Epochs")
    ax.set_ylabel(label)
    ax.legend()
    return _png(fig)


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

"""PNG figures of an evaluation, drawn with matplotlib's Agg backend (no display needed).

* :func:`metric_bars`: the main test metric per defense (groups) and protection (bars),
  one panel per victim;
* :func:`picture_strip`: a few train items as rows of clean / protected / amplified
  difference at native resolution (volumes: the middle slice of the first axis).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import MissingDependencyError
from ulmed.eval.sources import EvalData, native_pairs
from ulmed.io.atomic import atomic_write_bytes


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("the evaluation figures need matplotlib; "
                                     "install it with: pip install matplotlib") from None
    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def metric_bars(report: dict[str, Any], path: Path) -> Path:
    """Grouped bar chart of the main metric: defenses on the x axis, one bar per protection.

    Args:
        report: The evaluation report (``victims``, ``defenses``, ``cells``, ``main_metric``).
        path: PNG to write.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    victims, defenses, cells = report["victims"], report["defenses"], report["cells"]
    protections = list(dict.fromkeys(c["protection"] for c in cells))
    panel_width = max(4.0, 1.2 * len(defenses) * max(1, len(protections) / 2))
    fig, axes = plt.subplots(1, len(victims), figsize=(panel_width * len(victims), 3.6), squeeze=False)
    width = 0.8 / max(1, len(protections))
    colors = plt.get_cmap("tab10")
    for ax, victim in zip(axes[0], victims):
        values = {(c["defense"], c["protection"]): c.get("value") for c in cells if c["victim"] == victim}
        for j, prot in enumerate(protections):
            ys = [values.get((d, prot)) for d in defenses]
            ys = [float(y) if isinstance(y, (int, float)) and np.isfinite(y) else 0.0 for y in ys]
            xs = np.arange(len(defenses)) + (j - (len(protections) - 1) / 2) * width
            ax.bar(xs, ys, width=width, label=prot, color=colors(j % 10))
        ax.set_xticks(np.arange(len(defenses)), defenses, rotation=20)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"victim {victim}")
        ax.set_ylabel(f"{report['main_metric']} on clean test")
        ax.grid(axis="y", alpha=0.3)
    axes[0][-1].legend(title="training data", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def _view(image: np.ndarray) -> np.ndarray:
    """A 2D view of ``(C, *spatial)``: grey channel 0, RGB as is, volumes at the middle slice."""
    arr = image[:, image.shape[1] // 2] if image.ndim == 4 else image
    return np.moveaxis(arr, 0, -1) if arr.shape[0] == 3 else arr[0]


def picture_strip(data: EvalData, protected_root: Path, path: Path, name: str, items: int = 3) -> Path:
    """Rows of train items: clean, protected, and the difference amplified to full contrast.

    Args:
        data: The clean data (dataset kind, root, train keys).
        protected_root: Root of the protected copy.
        path: PNG to write.
        name: Protection name for the title.
        items: Number of train items (the first ones of the split).

    Returns:
        ``path``.
    """
    plt = _pyplot()
    pairs = list(native_pairs(data, protected_root, limit=max(1, items)))
    h, w = _view(pairs[0][1]).shape[:2]
    fig, axes = plt.subplots(len(pairs), 3, figsize=(9, (3 * h / w + 0.4) * len(pairs)), squeeze=False)
    for row, (key, clean, prot, _) in zip(axes, pairs):
        c, p = _view(clean), _view(prot)
        diff = p - c
        peak = float(np.abs(diff).max())
        amp = 1.0 / peak if peak > 0 else 1.0
        row[0].imshow(np.clip(c, 0, 1), cmap="gray", vmin=0, vmax=1)
        row[1].imshow(np.clip(p, 0, 1), cmap="gray", vmin=0, vmax=1)
        row[2].imshow(np.clip(diff * amp, -1, 1).mean(axis=-1) if diff.ndim == 3 else np.clip(diff * amp, -1, 1),
                      cmap="seismic", vmin=-1, vmax=1)
        where = f" (slice {clean.shape[1] // 2})" if clean.ndim == 4 else ""
        row[0].set_title(f"clean {Path(key).name}{where}", fontsize=8)
        row[1].set_title(f"protected ({name})", fontsize=8)
        row[2].set_title(f"difference x{amp:.0f} (max {peak * 255:.1f}/255)", fontsize=8)
        for ax in row:
            ax.set_axis_off()
    return _save(fig, path)

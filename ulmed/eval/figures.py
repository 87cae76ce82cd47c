"""PNG figures of an evaluation, drawn with matplotlib's Agg backend (no display needed).

* :func:`metric_bars`: the main test metric per defense (groups) and protection (bars),
  one panel per victim;
* :func:`picture_strip`: a few train items as rows of clean / protected / amplified
  difference at native resolution (volumes: the middle slice of the first axis);
* :func:`glance`: what a data owner reads at a glance: per defense, the protected
  victims' metric beside the clean one, and the first victim's predictions of a few clean
  test items when trained on clean and on protected data.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import MissingDependencyError
from ulmed.eval.cells import load_examples
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


def _bars(ax: Any, report: dict[str, Any], victim: str, colors: Any) -> None:
    """The first panel of :func:`glance`: the main metric per defense, clean and each protection."""
    cells = [c for c in report["cells"] if c["victim"] == victim and c["protection"] != "clean_part"]
    protections = list(dict.fromkeys(c["protection"] for c in cells))
    values = {(c["defense"], c["protection"]): c.get("value") for c in cells}
    width = 0.8 / max(1, len(protections))
    for j, prot in enumerate(protections):
        ys = [values.get((d, prot)) for d in report["defenses"]]
        ys = [float(y) if isinstance(y, (int, float)) and np.isfinite(y) else 0.0 for y in ys]
        xs = np.arange(len(report["defenses"])) + (j - (len(protections) - 1) / 2) * width
        ax.bar(xs, ys, width=width, label=prot, color=colors(j % 10))
    ax.set_xticks(np.arange(len(report["defenses"])), report["defenses"], rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{report['main_metric']} on clean test")
    ax.set_title(f"victim {victim}: trained on", fontsize=9)
    ax.legend(fontsize=7)


def _example_panels(report: dict[str, Any], data: EvalData, cells_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(title, label maps) of the first victim and defense: the clean-trained victim first."""
    victim, defense = report["victims"][0], report["defenses"][0]
    names = ["clean", *[p["name"] for p in report["protections"]]]
    panels = []
    for name in names:
        labels = load_examples(cells_dir, victim, defense, name)
        if labels is not None and labels.shape[1:] == data.test_images.shape[2:]:  # not from another grid
            panels.append((f"{victim} trained on {name}", labels))
    return panels


def glance(report: dict[str, Any], data: EvalData, cells_dir: Path, path: Path) -> Path:
    """One picture for a data owner: metric per defense, and example predictions of clean test items.

    Args:
        report: The evaluation report (victims, defenses, cells, protections).
        data: The clean data (its test images and targets, as the victims saw them).
        cells_dir: The grid's ``cells`` folder (example predictions beside each cell).
        path: PNG to write.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    panels = _example_panels(report, data, cells_dir) if data.task == "segmentation" else []
    n_ex = min((len(p[1]) for p in panels), default=0)
    cols = 1 + len(panels) + (1 if n_ex else 0)
    rows = max(1, n_ex)
    fig = plt.figure(figsize=(3.2 * cols, 3.0 * rows))
    grid = fig.add_gridspec(rows, cols)
    _bars(fig.add_subplot(grid[:, 0]), report, report["victims"][0], plt.get_cmap("tab10"))
    for i in range(n_ex):
        image = _view(data.test_images[i])
        truth = data.test_targets[i]
        truth = truth[truth.shape[0] // 2] if truth.ndim == 3 else truth
        shown = [("clean test image, truth", truth)] + [(t, lab[i][lab[i].shape[0] // 2] if lab[i].ndim == 3
                                                         else lab[i]) for t, lab in panels]
        for j, (title, labels) in enumerate(shown, start=1):
            ax = fig.add_subplot(grid[i, j])
            ax.imshow(image, cmap="gray", vmin=0, vmax=1)
            ax.imshow(np.ma.masked_equal(labels, 0), cmap="autumn", alpha=0.45, vmin=0, vmax=max(1, labels.max()))
            ax.set_title(title if i == 0 else "", fontsize=8)
            ax.set_axis_off()
    return _save(fig, path)

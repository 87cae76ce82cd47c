"""An nnU-Net victim as one cell of the evaluation grid: the cell's files in, its test metrics out.

A grid cell of ``nnunet-2d`` / ``nnunet-3d`` hands nnU-Net the *files* a user would give it,
at their native size: the train items of the cell's training data (the clean originals, a
protected copy's files at the same relative paths, or the clean share of a mixing defense)
with their original masks or label maps, and the clean test items. nnU-Net then plans its own
spacing, patch size and normalisation and augments with its own pipeline (:func:`run_nnunet`),
so the grid's defenses other than ``none`` do not apply to it (:func:`applies`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import ConfigError
from ulmed.eval.data import EvalData, protected_file
from ulmed.eval.nnunet.runner import NNUNET_VICTIMS, run_nnunet
from ulmed.eval.nnunet.schedule import NnunetSchedule

#: The defenses an nnU-Net victim trains under: its own pipeline, nothing added.
NNUNET_DEFENSES = ("none",)


def is_nnunet(victim: str) -> bool:
    """Whether ``victim`` names an nnU-Net victim (:data:`NNUNET_VICTIMS`)."""
    return victim in NNUNET_VICTIMS


def applies(victim: str, defense: str) -> bool:
    """Whether the grid trains ``victim`` under ``defense`` (nnU-Net victims: only ``none``)."""
    return not is_nnunet(victim) or defense in NNUNET_DEFENSES


def check_nnunet_victim(victim: str, data: EvalData) -> None:
    """A ConfigError when an nnU-Net victim does not fit the data (classification, other dimensionality)."""
    dims = NNUNET_VICTIMS[victim]
    if data.task != "segmentation":
        raise ConfigError(f"victim {victim!r} segments, but this data set is for {data.task}")
    if dims != data.spatial_dims:
        other = next(v for v, d in NNUNET_VICTIMS.items() if d == data.spatial_dims)
        raise ConfigError(f"victim {victim!r} is for {dims}D data, this data set is {data.spatial_dims}D; "
                          f"use {other}")


def cell_cases(data: EvalData, root: Path | None, keep: np.ndarray | None = None) -> list[tuple[Path, Path]]:
    """(image, target) files of the cell's train items: ``root``'s protected copies, or the originals."""
    items = data.train_items if keep is None else [it for it, k in zip(data.train_items, keep) if k]
    cases = []
    for item in items:
        assert item.target is not None  # segmentation items carry their masks
        cases.append((protected_file(root, item.key) if root is not None else item.image, item.target))
    return cases


def train_nnunet_cell(victim: str, data: EvalData, train: Sequence[tuple[Path, Path]], schedule: NnunetSchedule,
                      workdir: Path) -> dict[str, Any]:
    """Train nnU-Net on ``train``, test it on the clean test items; the grid cell's fields.

    Returns:
        ``metrics`` (``dice`` mean foreground, per class, ``iou``, ``hd95``), timings, ``n_train``,
        ``epochs_run`` and ``nnunet`` (its plans, schedule, version and device).
    """
    check_nnunet_victim(victim, data)
    test = [(item.image, item.target) for item in data.test_items if item.target is not None]
    result = run_nnunet(train, test, spatial_dims=NNUNET_VICTIMS[victim], schedule=schedule, workdir=workdir)
    nnunet = {k: result[k] for k in ("plans", "schedule", "nnunet_default_schedule", "nnunetv2", "device", "plan_s",
                                     "reused") if k in result}
    return {"metrics": result["metrics"], "train_s": result["train_s"], "test_s": result["test_s"],
            "wall_s": result["wall_s"], "epochs_run": schedule.epochs, "final_loss": _last(result.get("train_losses")),
            "n_train": len(train), "nnunet": nnunet}


def _last(values: Any) -> float | None:
    return float(values[-1]) if isinstance(values, list) and values else None


__all__ = ["NNUNET_DEFENSES", "applies", "cell_cases", "check_nnunet_victim", "is_nnunet", "train_nnunet_cell"]

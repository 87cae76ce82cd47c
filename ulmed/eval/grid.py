"""``ulmed evaluate``: victims x defenses x protections, trained on protected data, tested on clean.

One *cell* trains a fresh victim (weights from the run seed) on the train split -- clean or
one protected copy -- after the trainer's defense, and tests it on the *clean* test split.
The clean cell of the same victim and defense is the baseline: ``ratio = metric /
clean metric``. A mixing defense ``mix<p>`` (a share p protected, 1 - p clean) adds one
``clean_part`` cell per victim: the same victim trained on the clean share only, so one
sees whether the protected share still adds anything.

Resume: each finished cell is written to ``out/cells/<victim>__<defense>__<protection>.json``
with a fingerprint of everything that shapes it (settings, training configuration, and a
hash of the exact training and test arrays). A rerun reuses a cell whose fingerprint
matches (``reused: true``, no training) and retrains a stale one.

Learnability (opt-in, ``learnability=True``): each trained victim's sharpness-aware
learnability per layer on the clean test split goes into its cell (``sal``), and the report
gives every cell the Unlearnable Distance ``ud`` to the clean cell of the same victim and
defense (:mod:`ulmed.eval.learnability`, docs/metrics/unlearnable_distance.md).

Determinism: every cell uses the same seed for the victim's initial weights, the defense's
randomness and the training loop, so cells differ only in their training data and defense.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import ConfigError, InputError, OutputError
from ulmed.eval.data import load_protected_like
from ulmed.eval.defenses import build_defense, mix_mask
from ulmed.eval.sources import (
    DATASETS,
    EvalData,
    Protection,
    check_name,
    imperceptibility_summary,
    load_eval_data,
    read_protection,
)
from ulmed.eval.train import TrainConfig, evaluate_victim, train_victim, victim_sal
from ulmed.eval.victims import SIZES, VICTIMS, build_victim, task_of
from ulmed.io.atomic import atomic_write_json, jsonable

log = logging.getLogger("ulmed")
CLEAN = "clean"
CLEAN_PART = "clean_part"
MAIN_METRIC = {"segmentation": "dice", "classification": "accuracy"}
_MIX = re.compile(r"^mix(.+)$")
#: TrainConfig fields that do not change a cell's result (on the same device kind).
_NOT_FINGERPRINTED = ("num_threads",)
#: How ``learnability=True`` measures SAL: on the first batches of the clean test split.
SAL_SETTINGS: dict[str, Any] = {"n_batches": 4, "batch_size": 8, "gamma": 0.05, "steps": 1}


def cell_key(victim: str, defense: str, protection: str) -> str:
    """File stem of a cell: ``<victim>__<defense>__<protection>``."""
    return f"{victim}__{defense}__{protection}"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON (NaN/inf as null) atomically."""
    atomic_write_json(path, data)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:20]


def clean_part(n: int, defense: str, seed: int) -> np.ndarray | None:
    """The clean share of a mixing defense ``mix<p>`` (the samples it leaves clean), or None.

    It is the complement of the mask that :meth:`Defense.apply_data` draws with
    ``numpy.random.default_rng(seed)``; None for other defenses or fewer than 2 clean samples.
    """
    match = _MIX.match(defense)
    if match is None:
        return None
    keep = ~mix_mask(n, float(match.group(1)), np.random.default_rng(seed))
    return keep if keep.sum() >= 2 else None


def _check_out(out: Path, inputs: Sequence[Path]) -> None:
    dst = out.resolve()
    if dst.exists() and not dst.is_dir():
        raise OutputError("exists and is not a folder; choose another -o", dst)
    for src in inputs:
        src = src.resolve()
        src_dir = src if src.is_dir() else src.parent
        if dst == src_dir or src_dir in dst.parents or dst in src_dir.parents:
            raise OutputError(f"output folder overlaps the input {src_dir}; choose an -o outside it (inputs are never written)", dst)


def _check_grid(data: EvalData, victims: Sequence[str], defenses: Sequence[str]) -> None:
    if not victims:
        raise ConfigError("no victim given; pass at least one, e.g. --victim unet")
    if not defenses:
        raise ConfigError("no defense given; pass at least one, e.g. --defense none")
    for name in (*victims, *defenses):
        if "__" in name:
            raise ConfigError(f"name {name!r} may not contain '__' (it separates the parts of a cell file name)")
    for v in victims:
        if task_of(v) != data.task:
            names = [n for n in VICTIMS.names() if task_of(n) == data.task]
            raise ConfigError(f"victim {v!r} does {task_of(v)}, but {data.dataset} needs {data.task}; "
                              f"choose one of: {', '.join(names)}")
    for d in defenses:
        build_defense(d)  # validates the name early
    if len(set(victims)) != len(victims) or len(set(defenses)) != len(defenses):
        raise ConfigError("victims and defenses must not repeat")


def _train_cell(
    victim: str, defense: str, images: np.ndarray, targets: np.ndarray, clean: np.ndarray | None,
    data: EvalData, config: TrainConfig, victim_size: str, learnability: bool = False,
) -> dict[str, Any]:
    """Train one victim and test it on the clean test split (and measure its SAL per layer)."""
    d = build_defense(defense)
    train_images = d.apply_data(images, clean, np.random.default_rng(config.seed))
    model = build_victim(victim, spatial_dims=images.ndim - 2, in_channels=images.shape[1],
                         out_channels=data.num_classes, size=victim_size,
                         img_size=config.patch_size or images.shape[2:], seed=config.seed)
    t0 = time.perf_counter()
    history = train_victim(model, train_images, targets, task=data.task, num_classes=data.num_classes,
                           config=config, augment=d.augment)
    t1 = time.perf_counter()
    metrics = evaluate_victim(model, data.test_images, data.test_targets, task=data.task,
                              num_classes=data.num_classes, config=config)
    t2 = time.perf_counter()
    cell = {"metrics": metrics, "train_s": round(t1 - t0, 3), "test_s": round(t2 - t1, 3),
            "wall_s": round(t2 - t0, 3), "epochs_run": len(history),
            "final_loss": history[-1]["loss"] if history else None, "n_train": int(images.shape[0])}
    if learnability:
        cell["sal"] = victim_sal(model, data.test_images, data.test_targets, task=data.task, config=config,
                                 **SAL_SETTINGS)
        cell["sal_s"] = round(time.perf_counter() - t2, 3)
        cell["wall_s"] = round(time.perf_counter() - t0, 3)
    return cell


def _settings(data: EvalData, config: TrainConfig, victim_size: str, limits: tuple[int | None, int | None]) -> dict[str, Any]:
    cfg = {k: v for k, v in asdict(config).items() if k not in _NOT_FINGERPRINTED}
    return {"dataset": data.dataset, "task": data.task, "num_classes": data.num_classes,
            "loader": data.loader_kwargs, "train_limit": limits[0], "test_limit": limits[1],
            "victim_size": victim_size, "train_config": cfg}


def run_evaluation(
    clean: str | Path,
    protected: Mapping[str, str | Path],
    out: str | Path,
    *,
    dataset: str = "auto",
    victims: Sequence[str] = ("unet",),
    defenses: Sequence[str] = ("none",),
    train_config: TrainConfig | None = None,
    victim_size: str = "small",
    size: Sequence[int] = (64, 64),
    shape: Sequence[int] = (40, 56, 40),
    train_limit: int | None = None,
    test_limit: int | None = None,
    seed: int = 0,
    figures: bool = True,
    learnability: bool = False,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation grid and write ``report.json``, ``report.md`` and PNG figures.

    Args:
        clean: Clean data set folder: ``index.csv`` with a ``split`` column (train/val/test)
            and the files it names, or the PneumoniaMNIST ``.npz`` (or its folder).
        protected: Protection name -> root of a protected copy of (at least) the train split,
            as written by ``ulmed protect`` (same relative paths; its ``manifest.json`` says
            which method and surrogate made it). May be empty (baseline only).
        out: Output folder (created; rerunning into it resumes).
        dataset: ``auto``, ``hc18`` (2D images + masks), ``hippocampus`` (NIfTI + labels) or
            ``pneumonia``.
        victims: Victim names (:data:`ulmed.eval.victims.VICTIMS`) of the data set's task.
        defenses: Defense names (:func:`ulmed.eval.defenses.build_defense`).
        train_config: How victims are trained; default ``TrainConfig()``. Its seed is
            replaced by ``seed``.
        victim_size: ``small`` (CPU) or ``base``.
        size: (height, width) of 2D images for the victims.
        shape: Volume shape for 3D data.
        train_limit: At most this many train items (the first ones of the split).
        test_limit: At most this many test items.
        seed: Seed of the victims' weights, the defenses and training.
        figures: Write the PNG figures (needs matplotlib).
        learnability: Also measure every trained victim's sharpness-aware learnability per
            layer on the clean test split (:data:`SAL_SETTINGS`; one forward and backward per
            layer and batch) into the cell's ``sal``, and give every cell the Unlearnable
            Distance ``ud`` to the clean cell of the same victim and defense
            (docs/metrics/unlearnable_distance.md). Part of the cell fingerprint.
        progress: Called with one line per cell (e.g. the CLI prints it).

    Returns:
        The report (also written to ``out/report.json``), with ``files`` naming what was written.

    Raises:
        ConfigError: Unknown victim/defense/dataset, a victim of the wrong task, bad names.
        InputError: Missing or unreadable clean data or protected copies.
        OutputError: ``out`` overlaps an input or cannot be written.
    """
    from ulmed.eval.report import write_report

    start = time.perf_counter()
    if victim_size not in SIZES:
        raise ConfigError(f"victim size must be one of {', '.join(SIZES)}, got {victim_size!r}")
    if dataset not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    clean_root, out = Path(clean).expanduser(), Path(out).expanduser()
    if not clean_root.exists():
        raise InputError("clean data set not found; check the --clean path", clean_root)
    for name in protected:
        check_name(name, reserved=(CLEAN, CLEAN_PART))
    prot_roots = {name: Path(p).expanduser() for name, p in protected.items()}
    _check_out(out, [clean_root, *prot_roots.values()])
    config = replace(train_config or TrainConfig(), seed=seed)
    say = progress or (lambda line: log.info("%s", line))

    data = load_eval_data(clean_root, dataset, size=size, shape=shape, train_limit=train_limit, test_limit=test_limit)
    _check_grid(data, list(victims), list(defenses))
    infos: dict[str, Protection] = {n: read_protection(n, p, data.task) for n, p in prot_roots.items()}
    train_sets = {CLEAN: data.train_images}
    for name, root in prot_roots.items():
        train_sets[name] = load_protected_like(root, data.train_keys, data.loader_kwargs)
    settings = _settings(data, config, victim_size, (train_limit, test_limit))
    if learnability:  # absent when off, so cells cached without it keep their fingerprints
        settings["learnability"] = dict(SAL_SETTINGS)
    base_fp = {**settings, "test": _digest(data.test_images, data.test_targets)}

    plan: list[tuple[str, str, str]] = []
    for v in victims:
        for d in defenses:
            plan += [(v, d, p) for p in train_sets]
            if clean_part(len(data.train_keys), d, seed) is not None:
                plan.append((v, d, CLEAN_PART))

    cells: list[dict[str, Any]] = []
    trained = 0
    for i, (v, d, p) in enumerate(plan, 1):
        if p == CLEAN_PART:  # the clean share of a mixing defense alone, without mixing
            keep = clean_part(len(data.train_keys), d, seed)
            assert keep is not None  # planned only when there is one
            images, targets, d_train = data.train_images[keep], data.train_targets[keep], "none"
            clean_imgs = images
        else:
            images, targets, clean_imgs, d_train = train_sets[p], data.train_targets, data.train_images, d
        fp = hashlib.sha256(json.dumps(jsonable({**base_fp, "victim": v, "defense": d_train, "protection": p,
                                                  "train": _digest(images, targets)}), sort_keys=True).encode()).hexdigest()[:20]
        path = out / "cells" / f"{cell_key(v, d, p)}.json"
        cell = _load_cell(path, fp)
        if cell is None:
            cell = {"victim": v, "defense": d, "protection": p, "trained_with_defense": d_train,
                    "fingerprint": fp, "reused": False,
                    **_train_cell(v, d_train, images, targets, clean_imgs, data, config, victim_size, learnability)}
            write_json(path, cell)
            trained += 1
        cell["main_metric"] = MAIN_METRIC[data.task]
        cell["value"] = cell["metrics"].get(cell["main_metric"])
        cells.append(cell)
        state = "reused" if cell["reused"] else f"{cell['wall_s']:.1f} s"
        value = cell["value"]
        shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
        say(f"[{i}/{len(plan)}] {v} / {d} / {p}: {cell['main_metric']} {shown} ({state})")

    imperc = {name: imperceptibility_summary(data, root) for name, root in prot_roots.items()}
    report = {
        "ulmed_evaluation": 1, "clean": str(clean_root.resolve()), "out": str(out.resolve()),
        "settings": {**settings, "seed": seed, "n_train": len(data.train_keys), "n_test": int(data.test_images.shape[0])},
        "victims": list(victims), "defenses": list(defenses), "main_metric": MAIN_METRIC[data.task],
        "protections": [{**infos[n].to_dict(), "imperceptibility": imperc[n]} for n in prot_roots],
        "cells": cells, "trained": trained, "reused": len(cells) - trained,
    }
    return write_report(report, out, data=data, protections=prot_roots, figures=figures,
                        started=start)


def _load_cell(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """A finished cell with this fingerprint, marked ``reused``, or None (absent, stale, unreadable)."""
    if not path.is_file():
        return None
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError):
        log.warning("unreadable cell %s; training it again", path)
        return None
    if not isinstance(cell, dict) or cell.get("fingerprint") != fingerprint or "metrics" not in cell:
        log.warning("cell %s was made with other settings or data; training it again", path.name)
        return None
    cell["reused"] = True
    cell["metrics"] = {k: (float("nan") if v is None else v) for k, v in cell["metrics"].items()}
    return cell

"""``ulmed evaluate``: victims x defenses x protections, trained on protected data, tested on clean.

One *cell* trains a fresh victim (weights from the run seed) on the train split -- clean or
one protected copy -- after the trainer's defense, and tests it on the *clean* test split.
The clean cell of the same victim and defense is the baseline: ``ratio = metric /
clean metric``. A mixing defense ``mix<p>`` (a share p protected, 1 - p clean) adds one
``clean_part`` cell per victim: the same victim trained on the clean share only, so one
sees whether the protected share still adds anything.

The run, step by step: :class:`EvalOptions` validates the settings; :func:`prepare` loads
the clean splits and the protected copies; :func:`plan_cells` lists the cells;
:func:`run_cell` resumes or trains each one; :func:`write_report` (:mod:`ulmed.eval.report`)
writes the report. :func:`run_evaluation` does all of it.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.core.device import resolve_device
from ulmed.core.tasks import Task
from ulmed.errors import ConfigError, InputError, OutputError
from ulmed.eval.cells import EXAMPLES, N_EXAMPLES, cell_key, digest, load_cell, write_examples, write_json
from ulmed.eval.data import EvalData, load_eval_data, load_protected, reload_eval_data
from ulmed.eval.defenses import build_defense, mix_mask
from ulmed.eval.nnunet.cell import applies, cell_cases, check_nnunet_victim, is_nnunet, train_nnunet_cell
from ulmed.eval.nnunet.schedule import NnunetSchedule
from ulmed.eval.options import EvalOptions
from ulmed.eval.predict import predict
from ulmed.eval.sources import Protection, check_name, imperceptibility_summary, read_protection
from ulmed.eval.train import TrainConfig, evaluate_victim, train_victim, victim_sal
from ulmed.eval.victims import VICTIMS, build_victim, task_of
from ulmed.io.atomic import jsonable

log = logging.getLogger("ulmed")
CLEAN = "clean"
CLEAN_PART = "clean_part"
MAIN_METRIC = {Task.SEGMENTATION: "dice", Task.CLASSIFICATION: "accuracy"}
_MIX = re.compile(r"^mix(.+)$")
#: TrainConfig fields that do not change a cell's result (on the same device kind).
_NOT_FINGERPRINTED = ("num_threads",)
#: How ``learnability=True`` measures SAL: on the first batches of the clean test split.
SAL_SETTINGS: dict[str, Any] = {"n_batches": 4, "batch_size": 8, "gamma": 0.05, "steps": 1}


@dataclass
class GridRun:
    """A prepared run: the clean data, the train sets, and what every cell's fingerprint holds.

    Args:
        options: The validated options.
        data: The clean splits.
        protections: Protection name -> root of its protected copy.
        train_sets: ``clean`` and each protection -> its train images.
        settings: The settings recorded in the report and fingerprints; ``base_fingerprint``
            adds the hash of the test split.
    """

    options: EvalOptions
    data: EvalData
    protections: dict[str, Path]
    train_sets: dict[str, np.ndarray]
    settings: dict[str, Any]
    base_fingerprint: dict[str, Any]
    views: dict[str, View] = field(default_factory=dict)


@dataclass
class View:
    """The data as one defense's trainer reads it: the clean splits and every train set on that grid."""

    data: EvalData
    train_sets: dict[str, np.ndarray]


def view_of(run: GridRun, defense: str) -> View:
    """The run's data, or, for a defense with its own grid (``resize:N``, ``resample:X,Y,Z``), the
    same items read again from their files on that grid (loaded once per defense)."""
    grid = build_defense(defense).grid
    if not grid:
        return View(run.data, run.train_sets)
    if defense not in run.views:
        data = reload_eval_data(run.data, **grid)
        sets = {CLEAN: data.train_images, **{n: load_protected(data, root) for n, root in run.protections.items()}}
        run.views[defense] = View(data, sets)
    return run.views[defense]


def clean_part(n: int, defense: str, seed: int) -> np.ndarray | None:
    """The clean share of a mixing defense ``mix<p>`` (the samples it leaves clean), or None.

    It is the complement of the mask that :meth:`Defense.apply_data` draws with
    ``numpy.random.default_rng(seed)``; None for other defenses or fewer than 2 clean samples.
    """
    if (match := _MIX.match(defense)) is None:
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
            raise OutputError(f"output folder overlaps the input {src_dir}; choose an -o outside it "
                              "(inputs are never written)", dst)


def _check_plan(data: EvalData, victims: Sequence[str], defenses: Sequence[str]) -> None:
    for d in defenses:
        dims = build_defense(d).spatial_dims
        if dims is not None and dims != data.spatial_dims:
            raise ConfigError(f"defense {d!r} is for {dims}D data, this data set is {data.spatial_dims}D")
    for v in victims:
        if is_nnunet(v):
            check_nnunet_victim(v, data)
        elif task_of(v) != data.task:
            names = [n for n in VICTIMS.names() if task_of(n) == data.task]
            raise ConfigError(f"victim {v!r} does {task_of(v)}, but {data.dataset} needs {data.task}; "
                              f"choose one of: {', '.join(names)}")


def _settings(data: EvalData, options: EvalOptions) -> dict[str, Any]:
    cfg = {k: v for k, v in asdict(options.train_config).items() if k not in _NOT_FINGERPRINTED}
    settings = {"dataset": data.dataset, "task": data.task, "num_classes": data.num_classes,
                "loader": data.loader_kwargs, "train_limit": options.train_limit, "test_limit": options.test_limit,
                "victim_size": options.victim_size, "train_config": cfg}
    if options.learnability:  # absent when off, so cells cached without it keep their fingerprints
        settings["learnability"] = dict(SAL_SETTINGS)
    if any(is_nnunet(v) for v in options.victims):  # likewise for the nnU-Net schedule
        settings["nnunet_schedule"] = nnunet_schedule(options).key_dict()
    return settings


def nnunet_schedule(options: EvalOptions) -> NnunetSchedule:
    """The nnU-Net victims' schedule: the grid's epochs, ``iterations`` per epoch, device, seed and threads."""
    cfg = options.train_config
    device = resolve_device(cfg.device).type  # "auto": CUDA when there is one
    return NnunetSchedule(epochs=cfg.epochs, iterations=options.iterations, device=device, seed=options.seed,
                          threads=cfg.num_threads)


def prepare(clean: Path, protected: Mapping[str, Path], out: Path, options: EvalOptions) -> GridRun:
    """Check the paths, find, split (``out/split.json``) and load the clean data, load the protected train sets.

    Raises:
        InputError: Missing clean data or protected copies.
        OutputError: ``out`` overlaps an input.
    """
    if not clean.exists():
        raise InputError("clean data set not found; check the --clean path", clean)
    for name in protected:
        check_name(name, reserved=(CLEAN, CLEAN_PART))
    _check_out(out, [clean, *protected.values(), *([options.masks] if options.masks else [])])
    data = load_eval_data(clean, masks=options.masks, labels=options.labels, rule=options.split_rule, out=out,
                          preprocess=options.preprocess, train_limit=options.train_limit,
                          test_limit=options.test_limit)
    _check_plan(data, options.victims, options.defenses)
    train_sets = {CLEAN: data.train_images}
    for name, root in protected.items():
        train_sets[name] = load_protected(data, root)
    settings = {**_settings(data, options), "split": data.split, "data": data.record()}
    base = {**settings, "test": digest(data.test_images, data.test_targets)}
    return GridRun(options, data, dict(protected), train_sets, settings, base)


def plan_cells(run: GridRun) -> list[tuple[str, str, str]]:
    """Every (victim, defense, protection) cell, the clean share of a mixing defense last per defense."""
    plan: list[tuple[str, str, str]] = []
    n, seed = len(run.data.train_keys), run.options.seed
    for v in run.options.victims:
        for d in run.options.defenses:
            if not applies(v, d):
                continue
            plan += [(v, d, p) for p in run.train_sets]
            if clean_part(n, d, seed) is not None and not is_nnunet(v):
                plan.append((v, d, CLEAN_PART))
    return plan


def _cell_data(view: View, defense: str, protection: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Train images, targets, clean images and the defense the cell trains with."""
    data = view.data
    if protection != CLEAN_PART:
        return view.train_sets[protection], data.train_targets, data.train_images, defense
    keep = clean_part(len(data.train_keys), defense, seed)  # the clean share alone, without mixing
    assert keep is not None  # planned only when there is one
    return data.train_images[keep], data.train_targets[keep], data.train_images[keep], "none"


def train_cell(
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
    if data.task == Task.SEGMENTATION:
        cell[EXAMPLES] = predict(model, data.test_images[:N_EXAMPLES], task=data.task, config=config).astype(np.uint8)
    if learnability:
        cell["sal"] = victim_sal(model, data.test_images, data.test_targets, task=data.task, config=config,
                                 **SAL_SETTINGS)
        cell["sal_s"] = round(time.perf_counter() - t2, 3)
        cell["wall_s"] = round(time.perf_counter() - t0, 3)
    return cell


def _fingerprint(run: GridRun, view: View, victim: str, defense: str, protection: str,
                 train: tuple[np.ndarray, np.ndarray]) -> str:
    parts = {**run.base_fingerprint, "victim": victim, "defense": defense, "protection": protection,
             "train": digest(*train)}
    if view.data is not run.data:  # a defense on its own grid tests on the clean split read on that grid
        parts["test"] = digest(view.data.test_images, view.data.test_targets)
    return hashlib.sha256(json.dumps(jsonable(parts), sort_keys=True).encode()).hexdigest()[:20]


def _train(run: GridRun, out: Path, cell: tuple[str, str, str], view: View,
           arrays: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Train the cell's victim: ours on the arrays, nnU-Net on the files."""
    (victim, trained_with, protection), opts = cell, run.options
    if is_nnunet(victim):
        cases = cell_cases(view.data, run.protections.get(protection))
        return train_nnunet_cell(victim, view.data, cases, nnunet_schedule(opts), out / "nnunet")
    return train_cell(victim, trained_with, *arrays, view.data, opts.train_config, opts.victim_size,
                      opts.learnability)


def run_cell(run: GridRun, out: Path, victim: str, defense: str, protection: str) -> dict[str, Any]:
    """One cell: reused from ``out/cells`` when its fingerprint matches, else trained and written."""
    view = view_of(run, defense)
    images, targets, clean, trained_with = _cell_data(view, defense, protection, run.options.seed)
    fp = _fingerprint(run, view, victim, trained_with, protection, (images, targets))
    path = out / "cells" / f"{cell_key(victim, defense, protection)}.json"
    cell = load_cell(path, fp)
    if cell is None:
        cell = {"victim": victim, "defense": defense, "protection": protection, "trained_with_defense": trained_with,
                "fingerprint": fp, "reused": False,
                **_train(run, out, (victim, trained_with, protection), view, (images, targets, clean))}
        examples = cell.pop(EXAMPLES, None)
        if examples is not None:
            write_examples(path.with_suffix(".examples.npz"), examples)
        write_json(path, cell)
    cell["main_metric"] = MAIN_METRIC[run.data.task]
    cell["value"] = cell["metrics"].get(cell["main_metric"])
    return cell


def _progress_line(i: int, n: int, cell: dict[str, Any]) -> str:
    state = "reused" if cell["reused"] else f"{cell['wall_s']:.1f} s"
    value = cell["value"]
    shown = f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"
    return (f"[{i}/{n}] {cell['victim']} / {cell['defense']} / {cell['protection']}: "
            f"{cell['main_metric']} {shown} ({state})")


def raw_report(run: GridRun, clean: Path, out: Path, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The grid's report before :func:`~ulmed.eval.report.write_report` completes it."""
    data, opts = run.data, run.options
    infos: dict[str, Protection] = {n: read_protection(n, p, data.task) for n, p in run.protections.items()}
    imperc = {name: imperceptibility_summary(data, root) for name, root in run.protections.items()}
    trained = sum(not c["reused"] for c in cells)
    return {
        "ulmed_evaluation": 1, "clean": str(clean.resolve()), "out": str(out.resolve()),
        "settings": {**run.settings, "seed": opts.seed, "n_train": len(data.train_keys),
                     "n_test": int(data.test_images.shape[0])},
        "victims": list(opts.victims), "defenses": list(opts.defenses), "main_metric": MAIN_METRIC[data.task],
        "protections": [{**infos[n].to_dict(), "imperceptibility": imperc[n]} for n in run.protections],
        "cells": cells, "trained": trained, "reused": len(cells) - trained,
    }


def evaluate_grid(
    clean: str | Path, protected: Mapping[str, str | Path], out: str | Path, options: EvalOptions,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the evaluation grid with validated ``options``; see :func:`run_evaluation`."""
    from ulmed.eval.report import write_report

    start = time.perf_counter()
    clean_root, out = Path(clean).expanduser(), Path(out).expanduser()
    roots = {name: Path(p).expanduser() for name, p in protected.items()}
    say = progress or (lambda line: log.info("%s", line))
    run = prepare(clean_root, roots, out, options)
    plan = plan_cells(run)
    cells = []
    for i, (v, d, p) in enumerate(plan, 1):
        cells.append(run_cell(run, out, v, d, p))
        say(_progress_line(i, len(plan), cells[-1]))
    report = raw_report(run, clean_root, out, cells)
    return write_report(report, out, data=run.data, protections=roots, figures=options.figures, started=start)


def run_evaluation(
    clean: str | Path,
    protected: Mapping[str, str | Path],
    out: str | Path,
    *,
    progress: Callable[[str], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the evaluation grid and write ``report.json``, ``report.md`` and PNG figures.

    Args:
        clean: Clean data set folder: ``index.csv`` with a ``split`` column (train/val/test)
            and the files it names, or the PneumoniaMNIST ``.npz`` (or its folder).
        protected: Protection name -> root of a protected copy of (at least) the train split,
            as written by ``ulmed protect`` (same relative paths; its ``manifest.json`` says
            which method and surrogate made it). May be empty (baseline only).
        out: Output folder (created; rerunning into it resumes).
        progress: Called with one line per cell (e.g. the CLI prints it).
        **options: The fields of :class:`EvalOptions` (``dataset``, ``victims``,
            ``defenses``, ``train_config``, ``victim_size``, ``size``, ``shape``,
            ``train_limit``, ``test_limit``, ``seed``, ``figures``, ``learnability``).

    Returns:
        The report (also written to ``out/report.json``), with ``files`` naming what was written.

    Raises:
        ConfigError: Unknown option, victim/defense/dataset, a victim of the wrong task, bad names.
        InputError: Missing or unreadable clean data or protected copies.
        OutputError: ``out`` overlaps an input or cannot be written.
    """
    unknown = sorted(set(options) - set(EvalOptions.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"unknown evaluation options {unknown}; known: {', '.join(EvalOptions.__dataclass_fields__)}")
    if options.get("train_config") is None:
        options.pop("train_config", None)
    return evaluate_grid(clean, protected, out, EvalOptions(**options), progress)

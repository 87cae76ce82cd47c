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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.core.tasks import Task
from ulmed.errors import ConfigError, InputError, OutputError
from ulmed.eval.cells import EXAMPLES, N_EXAMPLES, cell_key, digest, load_cell, write_examples, write_json
from ulmed.eval.data import EvalData, load_eval_data, load_protected
from ulmed.eval.defenses import build_defense, mix_mask
from ulmed.eval.loading import Preprocess
from ulmed.eval.predict import predict
from ulmed.eval.sources import Protection, check_name, imperceptibility_summary, read_protection
from ulmed.eval.split import DEFAULT_TEST_FRACTION, SplitRule
from ulmed.eval.train import TrainConfig, evaluate_victim, train_victim, victim_sal
from ulmed.eval.victims import SIZES, VICTIMS, build_victim, task_of
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


@dataclass(frozen=True)
class EvalOptions:
    """What the grid trains and how (validated on construction).

    Args:
        masks: Folder of masks/label maps at the images' relative paths (else ``masks/`` or
            ``labels/`` beside ``images/``, as ``ulmed protect`` finds them).
        labels: Labels CSV (``image``, ``label``) of a classification set.
        subject: Regular expression over file name stems that finds the subject (group 1 or
            the whole match; default the whole stem): the split keeps a subject on one side.
        test_fraction: Share of subjects that goes to test (no fixed ``index.csv`` split).
        victims: Victim names (:data:`ulmed.eval.victims.VICTIMS`) of the data set's task.
        defenses: Defense names (:func:`ulmed.eval.defenses.build_defense`).
        train_config: How victims are trained; default ``TrainConfig()``. Its seed is
            replaced by ``seed``.
        victim_size: ``small`` (CPU) or ``base``.
        size: (height, width) of 2D images for the victims.
        shape: Volume shape for 3D data.
        keep_aspect: Letterbox 2D images (True) or stretch them.
        kernel: 2D resize kernel: ``pil``, ``torch``, ``cv-area``, ``cv-linear``
            (:class:`~ulmed.eval.loading.ResizeKernel`).
        spacing: Voxel size (mm per stored axis) volumes are resampled to first; None: native.
        train_limit: At most this many train items (the first ones of the split).
        test_limit: At most this many test items.
        seed: Seed of the victims' weights, the defenses and training.
        figures: Write the PNG figures (needs matplotlib).
        learnability: Also measure each victim's sharpness-aware learnability per layer on
            the clean test split (:data:`SAL_SETTINGS`) into its cell's ``sal``, and give every
            cell the Unlearnable Distance ``ud`` to the clean cell (part of the fingerprint).
    """

    masks: str | Path | None = None
    labels: str | Path | None = None
    subject: str | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    victims: Sequence[str] = ("unet",)
    defenses: Sequence[str] = ("none",)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    victim_size: str = "small"
    size: Sequence[int] = (64, 64)
    shape: Sequence[int] = (40, 56, 40)
    keep_aspect: bool = True
    kernel: str = "pil"
    spacing: Sequence[float] | None = None
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    figures: bool = True
    learnability: bool = False

    def __post_init__(self) -> None:
        if self.victim_size not in SIZES:
            raise ConfigError(f"victim size must be one of {', '.join(SIZES)}, got {self.victim_size!r}")
        normal = {"masks": None if self.masks is None else Path(self.masks),
                  "labels": None if self.labels is None else Path(self.labels), "victims": tuple(self.victims),
                  "defenses": tuple(self.defenses),
                  "train_config": replace(self.train_config or TrainConfig(), seed=self.seed)}
        for name, value in normal.items():
            object.__setattr__(self, name, value)  # frozen: normalised once, here
        if not self.victims:
            raise ConfigError("no victim given; pass at least one, e.g. --victim unet")
        if not self.defenses:
            raise ConfigError("no defense given; pass at least one, e.g. --defense none")
        for name in (*self.victims, *self.defenses):
            if "__" in name:
                raise ConfigError(f"name {name!r} may not contain '__' (it separates the parts of a cell file name)")
        for d in self.defenses:
            build_defense(d)  # validates the name early
        if len(set(self.victims)) != len(self.victims) or len(set(self.defenses)) != len(self.defenses):
            raise ConfigError("victims and defenses must not repeat")
        self.preprocess, self.split_rule  # noqa: B018 -- validate the data options early

    @property
    def preprocess(self) -> Preprocess:
        """How the items are loaded (:class:`~ulmed.eval.loading.Preprocess`)."""
        return Preprocess(self.size, self.keep_aspect, self.kernel, self.shape, self.spacing)

    @property
    def split_rule(self) -> SplitRule:
        """How a data set without a fixed split is split (:class:`~ulmed.eval.split.SplitRule`)."""
        return SplitRule(self.subject, self.test_fraction)


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


def _check_victims(data: EvalData, victims: Sequence[str]) -> None:
    for v in victims:
        if task_of(v) != data.task:
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
    return settings


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
    _check_victims(data, options.victims)
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
            plan += [(v, d, p) for p in run.train_sets]
            if clean_part(n, d, seed) is not None:
                plan.append((v, d, CLEAN_PART))
    return plan


def _cell_data(run: GridRun, defense: str, protection: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Train images, targets, clean images and the defense the cell trains with."""
    data = run.data
    if protection != CLEAN_PART:
        return run.train_sets[protection], data.train_targets, data.train_images, defense
    keep = clean_part(len(data.train_keys), defense, run.options.seed)  # the clean share alone, without mixing
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


def run_cell(run: GridRun, out: Path, victim: str, defense: str, protection: str) -> dict[str, Any]:
    """One cell: reused from ``out/cells`` when its fingerprint matches, else trained and written."""
    images, targets, clean, trained_with = _cell_data(run, defense, protection)
    fp = hashlib.sha256(json.dumps(jsonable({**run.base_fingerprint, "victim": victim, "defense": trained_with,
                                             "protection": protection, "train": digest(images, targets)}),
                                   sort_keys=True).encode()).hexdigest()[:20]
    path = out / "cells" / f"{cell_key(victim, defense, protection)}.json"
    cell = load_cell(path, fp)
    if cell is None:
        opts = run.options
        cell = {"victim": victim, "defense": defense, "protection": protection, "trained_with_defense": trained_with,
                "fingerprint": fp, "reused": False,
                **train_cell(victim, trained_with, images, targets, clean, run.data, opts.train_config,
                             opts.victim_size, opts.learnability)}
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

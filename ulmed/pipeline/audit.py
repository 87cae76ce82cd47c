"""A measured protection card: victims trained on the owner's own data, clean and protected.

An audit is an evaluation (:func:`ulmed.eval.grid.run_evaluation`) with a fixed plan per
level (:data:`AUDIT_PLANS`): it trains the plan's victims on the train split of the
original data set and of its protected copy, under the plan's defenses, tests every victim
on the clean test split and keeps, per victim and defense, the clean and the protected
victim's metric and their ratio. :class:`AuditResult` renders that as lines of
``DATACARD.md`` and as the ``audit`` part of ``manifest.json``, so a data-set author
publishes the protection measured on the very data, with the victim, schedule and split.

Two callers: ``ulmed audit -i ORIGINAL -p PROTECTED -o OUT`` (any pair; the full evaluation
report lands in ``OUT``) and ``ulmed release ... --audit quick|full`` (the release's card,
manifest and an ``AUDIT.png`` figure carry the result).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.choices import StrEnum, look_up, names
from ulmed.core.tasks import Task
from ulmed.errors import ConfigError, InputError

log = logging.getLogger("ulmed")

#: Name of the protected copy in the audit's evaluation.
PROTECTED = "protected"
#: The figure a release carries beside its card.
AUDIT_FIGURE = "AUDIT.png"


class AuditLevel(StrEnum):
    """How much an audit trains."""

    #: One small victim, two defenses, a short schedule: about 10 minutes for a few hundred 2D images on 2 cores.
    QUICK = "quick"
    #: Two victims, the trainer's defenses, a longer schedule at a larger working size (hours on a CPU).
    FULL = "full"


#: The level values, in definition order.
AUDIT_LEVELS: tuple[str, ...] = names(AuditLevel)


@dataclass(frozen=True)
class AuditPlan:
    """What one audit level trains.

    Args:
        victims: Victim names (:data:`ulmed.eval.victims.VICTIMS`).
        defenses: Defense names (:func:`ulmed.eval.defenses.build_defense`).
        epochs: Training epochs per victim.
        batch_size: Batch size.
        size: Working size of 2D images (the victims read the files and resize them to ``size x size``).
        limit: At most this many train and this many test items (None: all).
        grid_2d: More defenses for 2D data: trainers that read the files at other working sizes.
        nnunet: Also train nnU-Net v2 (``nnunet-2d``/``nnunet-3d``) with ``iterations`` per epoch,
            when nnunetv2 is installed (``pip install "ulmed[nnunet]"``).
        iterations: nnU-Net iterations per epoch.

    Volumes are padded/cropped to the median shape of the data set (each axis rounded up to a
    multiple of 8, at most :data:`MAX_VOLUME_AXIS`).
    """

    victims: tuple[str, ...]
    defenses: tuple[str, ...]
    epochs: int
    batch_size: int = 8
    size: int = 64
    limit: int | None = None
    grid_2d: tuple[str, ...] = ()
    nnunet: bool = False
    iterations: int = 25

    def __post_init__(self) -> None:
        if not self.victims or not self.defenses:
            raise ConfigError("an audit plan needs at least one victim and one defense")
        if self.epochs < 1 or self.batch_size < 1 or self.size < 8:
            raise ConfigError(f"audit plan has a bad schedule: epochs {self.epochs}, batch {self.batch_size}, "
                              f"size {self.size}")


#: Each axis of the audit's volume shape is at most this (a CPU-sized victim).
MAX_VOLUME_AXIS = 96
#: The trainer's defenses of a full audit (besides the working sizes of 2D trainers).
FULL_DEFENSES = ("none", "flip_jitter", "augmentation", "nnunet-aug", "jpeg10", "lowpass", "ueraser")

#: The plan of each level and task.
AUDIT_PLANS: dict[tuple[AuditLevel, Task], AuditPlan] = {
    (AuditLevel.QUICK, Task.SEGMENTATION): AuditPlan(("unet",), ("none", "flip_jitter"), epochs=8, size=64,
                                                     limit=300, grid_2d=("resize:128",)),
    (AuditLevel.FULL, Task.SEGMENTATION): AuditPlan(("unet", "segresnet"), FULL_DEFENSES, epochs=20, size=128,
                                                    grid_2d=("resize:64", "resize:256", "resize:128:cv-area"),
                                                    nnunet=True),
    (AuditLevel.QUICK, Task.CLASSIFICATION): AuditPlan(("resnet18",), ("none", "flip_jitter"), epochs=8, size=64,
                                                       limit=300),
    (AuditLevel.FULL, Task.CLASSIFICATION): AuditPlan(("resnet18", "densenet121"),
                                                      ("none", "flip_jitter", "augmentation", "jpeg10", "lowpass"),
                                                      epochs=20, size=128, grid_2d=("resize:64", "resize:256")),
}


def task_of_data(original: Path, labels: Path | None = None) -> Task:
    """The task an audit of ``original`` measures: classification with a labels CSV, else segmentation."""
    if not original.exists():
        raise InputError("original data set not found; check the -i path", original)
    return Task.CLASSIFICATION if labels is not None else Task.SEGMENTATION


def audit_plan(level: str | AuditLevel, task: Task) -> AuditPlan:
    """The plan of ``level`` for ``task`` (a ConfigError naming the levels when unknown)."""
    return AUDIT_PLANS[(look_up(level, AuditLevel, "audit level"), task)]


def volume_shape(images: Sequence[Path]) -> tuple[int, int, int]:
    """The audit's volume shape: the per-axis median of the volumes' shapes (from their headers), rounded up
    to a multiple of 8 and capped at :data:`MAX_VOLUME_AXIS`."""
    import nibabel as nib

    shapes = np.array([nib.load(str(p)).shape[:3] for p in images])  # type: ignore[attr-defined]
    median = np.median(shapes, axis=0)
    return tuple(int(min(MAX_VOLUME_AXIS, 8 * math.ceil(v / 8))) for v in median)  # type: ignore[return-value]


@dataclass(frozen=True)
class AuditGrid:
    """What an audit trains on this data: victims, defenses and the volume shape."""

    victims: tuple[str, ...]
    defenses: tuple[str, ...]
    spatial_dims: int
    shape: tuple[int, int, int] = (40, 56, 40)


def audit_grid(plan: AuditPlan, original: Path, data_options: dict[str, Any]) -> AuditGrid:
    """The plan applied to the data set: 2D working sizes, nnU-Net when installed, the volume shape."""
    from ulmed.eval.folders import find_eval_items
    from ulmed.eval.nnunet.runner import nnunet_version

    folder = find_eval_items(original, masks=data_options.get("masks"), labels=data_options.get("labels"))
    dims, victims = folder.spatial_dims, list(plan.victims)
    if plan.nnunet and folder.task == "segmentation":
        if nnunet_version() is not None:
            victims.append(f"nnunet-{dims}d")
        else:
            log.warning('the full audit trains nnU-Net too when it is installed: pip install "ulmed[nnunet]"')
    defenses = plan.defenses + (plan.grid_2d if dims == 2 else ())
    shape = volume_shape([item.image for item in folder.items]) if dims == 3 else (40, 56, 40)
    return AuditGrid(tuple(victims), defenses, dims, shape)


@dataclass
class AuditResult:
    """What an audit measured.

    Args:
        level: The audit level.
        metric: The main metric (``dice`` or ``accuracy``).
        rows: One per victim and defense: ``victim``, ``defense``, ``clean``, ``protected``, ``ratio``.
        settings: Victims, defenses, schedule, working size, split and item counts.
        imperceptibility: PSNR/SSIM of the protected train items against the originals.
        wall_s: Wall time of the audit.
        figure: The at-a-glance figure (clean vs protected victim per defense, example predictions), if drawn.
    """

    level: str
    metric: str
    rows: list[dict[str, Any]]
    settings: dict[str, Any]
    imperceptibility: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    figure: Path | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The ``audit`` part of ``manifest.json`` (no local paths)."""
        out = {k: v for k, v in asdict(self).items() if k != "figure"}
        out["figure"] = self.figure.name if self.figure is not None else None
        return out

    def worst_ratio(self) -> float | None:
        """The largest (weakest) ratio over the rows, or None when none is finite."""
        ratios = [r["ratio"] for r in self.rows if _finite(r.get("ratio"))]
        return max(ratios) if ratios else None

    def card_lines(self, figure_name: str | None = None) -> list[str]:
        """The ``## Measured protection`` section of ``DATACARD.md``."""
        s, label = self.settings, "Dice" if self.metric == "dice" else self.metric
        lines = ["## Measured protection (audit)", "",
                 (f"`ulmed` trained {', '.join(f'`{v}`' for v in s['victims'])} on this data set's train split, "
                  f"once on the original images and once on the protected ones, and tested each on the original "
                  f"test split ({s['n_train']} train, {s['n_test']} test item(s); split: {s['split']}). "
                  f"Schedule: {s['epochs']} epochs, batch {s['batch_size']}, {s['grid']}. Ratio = protected "
                  f"{label} / original {label} (1 = no protection, lower = stronger)."), "",
                 f"| victim | trainer's defense | {label} (original) | {label} (protected) | ratio |",
                 "|---|---|---|---|---|"]
        lines += [f"| {r['victim']} | {r['defense']} | {_num(r['clean'])} | {_num(r['protected'])} | "
                  f"{_num(r['ratio'], 2)} |" for r in self.rows]
        worst = self.worst_ratio()
        lines += ["", (f"Audit level `{self.level}`, {self.wall_s / 60:.1f} min. "
                       + (f"The weakest measured ratio is {worst:.2f}. " if worst is not None else "")
                       + "These victims and defenses are the ones measured here; a trainer with another network, "
                       "schedule or preprocessing may learn more from the protected images.")]
        if figure_name:
            lines += ["", f"![audit]({figure_name})"]
        return lines + [""]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "-"


def audit_rows(cells: Sequence[dict[str, Any]], protection: str = PROTECTED) -> list[dict[str, Any]]:
    """Per victim and defense: the clean cell's and the protected cell's metric and their ratio."""
    clean = {(c["victim"], c["defense"]): c.get("value") for c in cells if c["protection"] == "clean"}
    rows = []
    for c in cells:
        if c["protection"] != protection:
            continue
        base = clean.get((c["victim"], c["defense"]))
        value = c.get("value")
        ratio = value / base if _finite(value) and _finite(base) and base > 0 else None
        rows.append({"victim": c["victim"], "defense": c["defense"], "clean": base, "protected": value,
                     "ratio": ratio})
    return rows


def _settings(report: dict[str, Any], plan: AuditPlan, grid: AuditGrid) -> dict[str, Any]:
    s = report["settings"]
    where = (f"volumes padded/cropped to {'x'.join(str(v) for v in grid.shape)}" if grid.spatial_dims == 3
             else f"images resized to {plan.size}x{plan.size} (letterbox, antialiased) unless the defense says")
    out = {"victims": list(grid.victims), "defenses": list(grid.defenses), "epochs": plan.epochs,
           "batch_size": plan.batch_size, "grid": where, "limit": plan.limit, "seed": s.get("seed"),
           "n_train": s["n_train"], "n_test": s["n_test"], "split": _split_text(s)}
    if any(v.startswith("nnunet") for v in grid.victims):
        out["nnunet"] = {"epochs": plan.epochs, "iterations": plan.iterations}
    return out


def _split_text(settings: dict[str, Any]) -> str:
    """The split in words: the data set's fixed split, or the subject-hash rule with its counts."""
    split = settings.get("split") or {}
    if split.get("source") != "subject-hash":
        return "the data set's fixed split (index.csv)"
    rule, subjects = split.get("rule", {}), split.get("subjects", {})
    key = f"regex `{rule['subject']}` over the file stem" if rule.get("subject") else "the file stem"
    return (f"by a stable hash of the subject ({key}), {rule.get('test_fraction')} of "
            f"{subjects.get('train', 0) + subjects.get('test', 0)} subject(s) in test")


def run_audit(
    original: str | Path,
    protected: str | Path,
    out: str | Path,
    level: str | AuditLevel = AuditLevel.QUICK,
    *,
    seed: int = 0,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    **data_options: Any,
) -> AuditResult:
    """Train the level's victims on the original and the protected train split; test them on clean data.

    Args:
        original: The original data set (any folder ``ulmed evaluate`` reads).
        protected: Its protected copy (``ulmed protect``/``release`` output, same relative paths).
        out: Folder of the audit's evaluation report (rerunning into it resumes).
        level: :class:`AuditLevel`.
        seed: Seed of the victims, defenses and training.
        device: ``cpu`` or ``cuda``.
        progress: Called with one line per trained cell.
        **data_options: How the data set is read (``masks``, ``labels``, ``subject``, ``test_fraction``), as
            :func:`ulmed.eval.grid.run_evaluation` takes them.

    Returns:
        The :class:`AuditResult`; ``figure`` is the report's ``glance.png``.
    """
    from ulmed.eval.grid import run_evaluation
    from ulmed.eval.report import GLANCE
    from ulmed.eval.train import TrainConfig

    original, protected, out = Path(original).expanduser(), Path(protected).expanduser(), Path(out).expanduser()
    if not protected.exists():
        raise InputError("protected copy not found; check the -p path", protected)
    task = task_of_data(original, data_options.get("labels"))
    plan = audit_plan(level, task)
    grid = audit_grid(plan, original, data_options)
    start = time.perf_counter()
    config = TrainConfig(epochs=plan.epochs, batch_size=plan.batch_size, device=device)
    report = run_evaluation(original, {PROTECTED: protected}, out, victims=list(grid.victims),
                            defenses=list(grid.defenses), train_config=config, size=(plan.size, plan.size),
                            shape=grid.shape, train_limit=plan.limit, test_limit=plan.limit, seed=seed,
                            iterations=plan.iterations, progress=progress, **data_options)
    imperc = next((p["imperceptibility"] for p in report["protections"] if p["name"] == PROTECTED), {})
    figure = out / GLANCE if GLANCE in report.get("files", []) else None
    return AuditResult(str(look_up(level, AuditLevel, "audit level")), report["main_metric"],
                       audit_rows(report["cells"]), _settings(report, plan, grid), imperc,
                       round(time.perf_counter() - start, 1), figure)


def attach_figure(result: AuditResult, folder: Path) -> str | None:
    """Copy the audit's figure into ``folder`` as :data:`AUDIT_FIGURE`; its name there, or None."""
    if result.figure is None or not result.figure.is_file():
        return None
    from ulmed.io.atomic import atomic_write_bytes

    atomic_write_bytes(folder / AUDIT_FIGURE, result.figure.read_bytes())
    return AUDIT_FIGURE


def audit_card(result: AuditResult, out: Path) -> Path:
    """Write ``out/AUDIT.md`` (the card section) and ``out/audit.json``; return the Markdown path."""
    from ulmed.io.atomic import atomic_write_bytes, atomic_write_json

    figure = result.figure.name if result.figure is not None else None
    atomic_write_json(out / "audit.json", result.to_manifest())
    path = out / "AUDIT.md"
    atomic_write_bytes(path, "\n".join(["# Protection audit", "", *result.card_lines(figure)]).encode())
    return path


def remove_work(folder: Path) -> None:
    """Remove an audit's working folder (a release keeps only the card, manifest part and figure)."""
    shutil.rmtree(folder, ignore_errors=True)


__all__ = ["AUDIT_FIGURE", "AUDIT_LEVELS", "AUDIT_PLANS", "AuditLevel", "AuditPlan", "AuditResult", "attach_figure",
           "audit_card", "audit_plan", "audit_rows", "run_audit", "task_of_data"]

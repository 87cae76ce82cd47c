"""Data-set-level protection by the min-min loop: the shared body of EM and SALM.

:class:`OptimisedMethod` turns records into the tensors the bilevel loop needs and back:

1. records are grouped by (spatial dims, channels), one surrogate per group;
2. targets become class indices (:mod:`ulmed.core.targets`); records without a target get
   label-free pseudo-targets;
3. images are padded to a common shape (or cut into tiles when ``tile_size`` is set, so
   memory is bounded whatever the volume size); padded positions get a zero budget;
4. :func:`ulmed.core.bilevel.min_min` optimises the noise; each record's noise is cropped
   (or untiled) back and served by :meth:`perturbation`.

Subclasses only choose the policy: which positions may move (:meth:`position_policy`) and
the defaults. There is no second PGD loop here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from ulmed.core.augment import AugmentPolicy, build_augment
from ulmed.core.bilevel import MinMinConfig, PositionPolicy, min_min
from ulmed.core.budget import Budget
from ulmed.core.canvas import TileLayout, crop, pad_stack, tile, untile
from ulmed.core.device import resolve_device
from ulmed.core.method import ProtectionMethod
from ulmed.core.objectives import BayesErrorObjective
from ulmed.core.patterns import mask_coded, nyquist_coded
from ulmed.core.selection import ClasswiseAugment, chosen_augment, select_policies
from ulmed.core.surrogates import (
    SURROGATE_TASK,
    UNET_MULTIPLE,
    build_surrogate,
    feature_layer,
)
from ulmed.core.targets import TargetSet, prepare_targets
from ulmed.core.tasks import task_loss
from ulmed.errors import ConfigError
from ulmed.io.record import Record

log = logging.getLogger("ulmed")
INITS = ("zero", "lsp", "nyquist")
#: What the PGD steps optimise: the surrogate's training loss (error-minimising) or minus
#: a Bayes-error estimate on the surrogate's features (:mod:`ulmed.core.objectives`).
OBJECTIVES = ("loss", "bayes")


def dice_metric(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean foreground Dice of the argmax of ``output`` against ``target`` (B, 1, ...)."""
    k = output.shape[1]
    pred = one_hot(output.argmax(1, keepdim=True), k)
    dice = compute_dice(pred, one_hot(target, k), include_background=False, ignore_empty=True)
    value = torch.nanmean(dice)
    return torch.nan_to_num(value, nan=1.0)


def accuracy_metric(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Share of correct class predictions."""
    return (output.argmax(1) == target).float().mean()


class _RealPositions:
    """A position policy that only freezes padded positions (their L-inf budget is 0; L2 needs this)."""

    def __init__(self, valid: torch.Tensor) -> None:
        self.valid = valid

    def __call__(self, indices: torch.Tensor, x: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        mask = self.valid[indices.to(self.valid.device)]
        return (mask if x is None else mask.to(x.device)), None


@dataclass
class Group:
    """Records optimised together, with what is needed to map their noise back.

    ``images``/``targets`` are the tensors given to the loop; ``valid`` marks real (not
    padded) positions; ``eps`` is the per-position L-inf budget map, or for an L2 budget
    one radius per row; ``layouts`` holds each record's tiles (tiled mode) as
    ``(first row, TileLayout)``.
    """

    records: list[Record]
    targets_info: TargetSet
    images: torch.Tensor
    targets: torch.Tensor
    valid: torch.Tensor
    eps: torch.Tensor
    init: torch.Tensor
    layouts: list[tuple[int, TileLayout]] | None = None


class OptimisedMethod(ProtectionMethod):
    """Error-minimising noise from the bilevel min-min loop (base of ``em`` and ``salm``).

    Args:
        budget: L-inf budget (``"8/255"``, ``"20HU"``) or L2 budget (``"l2:0.5"``): the PGD
            core then takes normalised-gradient steps and projects each record's noise
            onto its L2 ball (a tiled record's ball is shared out over its tiles).
        seed: Seed of the whole optimisation.
        device: ``auto``, ``cpu``, ``cuda``...
        surrogate: MONAI surrogate by name; default ``unet`` for masks/label maps and
            label-free data, ``resnet18`` for class labels.
        rounds: Most min-min rounds.
        train_steps: Surrogate steps per round (M).
        pgd_steps: PGD steps per round (N).
        step_size: PGD step in [0, 1] units; default ``eps / 5``.
        stop_threshold: Stop when the surrogate's Dice (segmentation) or accuracy
            (classification) on the perturbed data reaches this.
        batch_size: Batch size of training and PGD (bounds memory).
        lr: Adam learning rate of the surrogate.
        classwise: One noise per class (classification only).
        tile_size: Cut images into tiles of this size (per spatial axis) instead of
            padding them to a common shape; bounds memory for large volumes.
        pseudo_classes: Bands of the label-free pseudo-targets.
        init: ``"zero"``, ``"lsp"`` to start from the mask-coded patterns of
            :mod:`ulmed.core.patterns` (each position its class's code, at full budget),
            a shortcut the loop then refines, or ``"nyquist"`` to start from its Nyquist
            patterns (foreground classes only).
        amp: Mixed precision on CUDA.
        augment: The trainer's augmentation to optimise against (expectation over
            transformations): a preset of :mod:`ulmed.core.augment` (``none``,
            ``flip_jitter``, ``standard``, ``robust``), a mapping of its fields, or
            ``armor``: after one plain round, the candidate of :mod:`ulmed.core.selection`
            with the best gradient alignment is chosen per class (per data set for masks).
        eot_samples: Augmentation draws averaged per PGD step.
        step_schedule: PGD step sizes, ``constant`` or ``dynamic`` (large, then small).
        objective: ``loss`` (error-minimising: PGD lowers the surrogate's training loss) or
            ``bayes`` (PGD raises a leave-one-out kernel estimate of the Bayes error of the
            surrogate's last hidden features, per sampled pixel for segmentation, per image
            for classification), aimed at trainers who mix protected with clean data.
        bayes_per_class: Pixels sampled per class and batch for the segmentation estimate.
    """

    needs_fit: ClassVar[bool] = True
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")

    def __init__(
        self,
        budget: Budget | str | float = "8/255",
        seed: int = 0,
        device: str = "auto",
        *,
        surrogate: str | None = None,
        rounds: int = 10,
        train_steps: int = 20,
        pgd_steps: int = 10,
        step_size: float | None = None,
        stop_threshold: float | None = None,
        batch_size: int = 8,
        lr: float = 1e-3,
        classwise: bool = False,
        tile_size: Sequence[int] | int | None = None,
        pseudo_classes: int = 3,
        init: str = "zero",
        amp: bool = False,
        augment: AugmentPolicy | str | dict[str, Any] | None = "none",
        eot_samples: int = 1,
        step_schedule: str = "constant",
        objective: str = "loss",
        bayes_per_class: int = 64,
    ) -> None:
        super().__init__(budget, seed, device)
        if surrogate is not None and surrogate not in SURROGATE_TASK:
            raise ConfigError(f"unknown surrogate {surrogate!r}; choose one of {', '.join(SURROGATE_TASK)}")
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if bayes_per_class < 1:
            raise ConfigError(f"bayes_per_class must be >= 1, got {bayes_per_class}")
        if init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if pseudo_classes < 2:
            raise ConfigError(f"pseudo_classes must be >= 2, got {pseudo_classes}")
        if tile_size is not None and (np.ndim(tile_size) == 0 and int(tile_size) < UNET_MULTIPLE):
            raise ConfigError(f"tile_size must be >= {UNET_MULTIPLE}, got {tile_size}")
        self.surrogate_name = surrogate
        self.loop = MinMinConfig(
            eps=1.0, step_size=None, train_steps=train_steps, pgd_steps=pgd_steps, max_rounds=rounds,
            stop_threshold=0.0 if stop_threshold is None else stop_threshold, batch_size=batch_size, lr=lr, seed=seed,
            eot_samples=eot_samples, step_schedule=step_schedule,
        )
        self.armor = augment == "armor"
        self.augment = AugmentPolicy.from_spec(None if self.armor else augment)
        self.selected: dict[str, dict[str, Any]] = {}
        self.objective = objective
        self.bayes_per_class = bayes_per_class
        self.step_size = step_size
        self.stop_threshold = stop_threshold
        self.classwise = classwise
        self.tile_size = tile_size
        self.pseudo_classes = pseudo_classes
        self.init = init
        self.amp = amp
        self.history: dict[str, list[dict[str, float]]] = {}
        self._deltas: dict[str, np.ndarray] = {}
        #: Surrogate and optimiser per group, carried from one :meth:`fit` (chunk) to the next.
        self._carry: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer, int]] = {}
        #: Carried states loaded by :meth:`load_state_dict`, applied when the group is next fitted.
        self._pending: dict[str, dict[str, Any]] = {}
        self._fits = 0

    # -- policy hooks -------------------------------------------------------------------
    def position_policy(self, group: Group) -> PositionPolicy | None:
        """Which positions may move (None: all real positions). SALM overrides this."""
        return None

    # -- fitting ------------------------------------------------------------------------
    def _tiles(self, spatial_dims: int) -> tuple[int, ...] | None:
        if self.tile_size is None:
            return None
        size = (int(self.tile_size),) * spatial_dims if np.ndim(self.tile_size) == 0 else tuple(int(t) for t in self.tile_size)
        if len(size) != spatial_dims or any(t % UNET_MULTIPLE for t in size):
            raise ConfigError(f"tile_size {size} needs {spatial_dims} sizes, each a multiple of {UNET_MULTIPLE}")
        return size

    def _build_group(self, records: list[Record]) -> Group:
        units = [r.unit_image() for r in records]
        info = prepare_targets([r.target for r in records], units, self.pseudo_classes)
        if self.classwise and info.task != "classification":
            raise ConfigError("class-wise noise needs class labels; use sample-wise noise for masks and label maps")
        eps = [self.budget.in_unit(r.mapping) for r in records]
        starts = [self._start(r, t, e) for r, t, e in zip(records, info.targets if info.task == "segmentation" else [None] * len(records), eps, strict=True)]
        tiles = self._tiles(records[0].spatial_dims)
        layouts = None
        if tiles is not None and info.task == "segmentation":
            parts, targets, valid, row_eps, layouts, inits = [], [], [], [], [], []
            for u, t, e, d0 in zip(units, info.targets, eps, starts, strict=True):
                img_tiles, layout = tile(u, tiles)
                inits.append(tile(d0, tiles)[0])
                tgt_tiles, _ = tile(np.asarray(t)[None], tiles)
                ok_tiles, _ = tile(np.ones((1, *u.shape[1:]), dtype=bool), tiles)
                layouts.append((sum(len(p) for p in parts), layout))
                parts.append(img_tiles), targets.append(tgt_tiles), valid.append(ok_tiles)
                row_eps += self._tile_radii(e, ok_tiles)
            images, tgt, ok = np.concatenate(parts), np.concatenate(targets), np.concatenate(valid)
            init = np.concatenate(inits)
            eps_rows = np.asarray(row_eps, dtype=np.float32)
        else:
            multiple = UNET_MULTIPLE if info.task == "segmentation" else 1
            images, ok = pad_stack(units, multiple)
            init, _ = pad_stack(starts, multiple)
            if info.task == "segmentation":
                tgt, _ = pad_stack([np.asarray(t)[None].astype(np.float32) for t in info.targets], multiple)
            else:
                tgt = np.asarray(info.targets)
            eps_rows = np.asarray(eps, dtype=np.float32)
        target_tensor = torch.as_tensor(tgt).long()
        valid = torch.as_tensor(ok)
        if self.budget.norm == "l2":  # one radius per row (clamp_l2); padded positions are frozen instead
            eps_map = torch.as_tensor(eps_rows)
        else:
            eps_map = torch.as_tensor(eps_rows).view(-1, *([1] * (images.ndim - 1))) * valid.float()
        return Group(records, info, torch.as_tensor(images), target_tensor, valid, eps_map, torch.as_tensor(init), layouts)

    def _tile_radii(self, eps: float, valid_tiles: np.ndarray) -> list[float]:
        """Budget of each tile of one record: ``eps`` for L-inf; for L2 ``eps * sqrt(share)``.

        An L2 tile gets the share of the record's real positions it holds, so the squared
        radii add up to ``eps**2`` and the untiled noise stays inside the record's ball.
        """
        if self.budget.norm != "l2":
            return [eps] * len(valid_tiles)
        counts = valid_tiles.reshape(len(valid_tiles), -1).sum(1).astype(np.float64)
        return [float(eps * np.sqrt(c / counts.sum())) for c in counts]

    def _start(self, record: Record, target: np.ndarray | None, eps: float) -> np.ndarray:
        """Initial noise of one record (zeros, or its mask-coded pattern at full budget)."""
        if self.init == "zero" or self.classwise:
            return np.zeros(record.image.shape, dtype=np.float32)
        if self.init == "nyquist":
            return (eps * nyquist_coded(target, record.channels, record.spatial_shape)).astype(np.float32)
        return (eps * mask_coded(target, record.channels, record.spatial_shape, 8, 1, self.seed)).astype(np.float32)

    def _surrogate(self, key: str, name: str, dims: int, channels: int, num_classes: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, int]:
        """The group's surrogate and optimiser: carried from the last chunk, loaded, or new.

        A carried surrogate with fewer outputs than this chunk needs is replaced (with a warning).
        """
        carried = self._carry.get(key)
        if carried is not None and carried[2] >= num_classes:
            return carried
        if carried is not None:
            log.warning("%s: this chunk has %d classes, the carried surrogate %d; starting a new surrogate", key, num_classes, carried[2])
        pending = self._pending.pop(key, None)
        if pending is not None:
            num_classes = max(num_classes, int(pending["num_classes"]))
        torch.manual_seed(self.seed)
        model = build_surrogate(name, dims, channels, num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.loop.lr)
        if pending is not None:
            model.load_state_dict(pending["model"])
            optimizer.load_state_dict(pending["optimizer"])
        self._carry[key] = (model, optimizer, num_classes)
        return self._carry[key]

    def fit(self, records: Sequence[Record]) -> None:
        """Optimise the noise of ``records`` (one surrogate per group of equal rank/channels).

        Called again with the next chunk of a large run, it continues training the same
        surrogates (:meth:`state_dict` saves them between chunks) and forgets the noise of
        the previous chunk.
        """
        groups: dict[tuple[int, int], list[Record]] = {}
        for r in records:
            groups.setdefault((r.spatial_dims, r.channels), []).append(r)
        device = resolve_device(self.device)
        self._deltas.clear()
        for (dims, channels), recs in sorted(groups.items()):
            group = self._build_group(recs)
            info = group.targets_info
            name = self.surrogate_name or ("unet" if info.task == "segmentation" else "resnet18")
            if SURROGATE_TASK[name] != info.task:
                raise ConfigError(f"surrogate {name!r} is for {SURROGATE_TASK[name]}, but these targets need {info.task}")
            model, optimizer, num_classes = self._surrogate(f"{dims}d-{channels}ch", name, dims, channels, info.num_classes)
            info = replace(info, num_classes=num_classes)
            seg = info.task == "segmentation"
            loss_fn = task_loss("segmentation" if seg else "classification")
            config = MinMinConfig(**{
                **self.loop.__dict__,
                "eps": float(group.eps.max()),
                "norm": self.budget.norm,
                "step_size": self.step_size or float(group.eps.max()) / 5,
                "stop_threshold": self.stop_threshold if self.stop_threshold is not None else (0.9 if seg else 0.99),
                "seed": self.loop.seed + 7919 * self._fits,  # each chunk draws its own batches
            })
            classes = torch.as_tensor(np.asarray(info.targets)) if self.classwise else None
            common: dict[str, Any] = dict(
                eps_map=self._classwise_eps(group, classes) if classes is not None else group.eps,
                position_policy=self._policy(group), classwise=self.classwise, class_ids=classes,
                device=device, amp=self.amp, pgd_objective=self._objective(name, model, info.task, info.num_classes),
            )
            metric = dice_metric if seg else accuracy_metric
            delta = None if self.classwise else group.init
            history: list[dict[str, float]] = []
            augment: torch.nn.Module | None = build_augment(self.augment, dims, info.num_classes)
            if self.armor:
                # ARMOR: one plain round trains the surrogate a little, then the augmentation is chosen.
                first = replace(config, max_rounds=1)
                delta, history = min_min(model, optimizer, group.images, group.targets, delta, loss_fn, metric, first, **common)
                augment = self._select(model, loss_fn, group, dims, info.num_classes, device, f"{dims}d-{channels}ch")
                config = replace(config, max_rounds=max(config.max_rounds - 1, 1), seed=config.seed + 1)
            delta, more = min_min(model, optimizer, group.images, group.targets, delta, loss_fn, metric, config,
                                  augment=augment, **common)
            history += more
            self.history[f"{dims}d-{channels}ch"] = history
            self._store(group, delta.cpu().numpy(), classes)
        self._fits += 1

    def _policy(self, group: Group) -> PositionPolicy | None:
        """:meth:`position_policy`; with an L2 budget and none, padded positions are frozen."""
        policy = self.position_policy(group)
        if policy is None and self.budget.norm == "l2" and not self.classwise:
            return _RealPositions(group.valid)
        return policy

    def state_dict(self) -> dict[str, Any]:
        """The carried surrogates and optimisers, for resuming a chunked run (tensors only)."""
        groups = {key: {"model": m.state_dict(), "optimizer": o.state_dict(), "num_classes": n}
                  for key, (m, o, n) in self._carry.items()}
        return {"fits": self._fits, "groups": {**self._pending, **groups}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the next :meth:`fit` trains the saved surrogates on."""
        self._fits = int(state["fits"])
        self._carry.clear()
        self._pending = dict(state["groups"])

    def _select(self, model: torch.nn.Module, loss_fn: Any, group: Group, dims: int, num_classes: int,
                device: torch.device, key: str) -> ClasswiseAugment:
        """ARMOR's per-class choice of the augmentation (one choice for segmentation)."""
        labels = group.targets if group.targets_info.task == "classification" else None
        choice, scores = select_policies(model.to(device), loss_fn, group.images, group.targets, dims,
                                         max(num_classes, 2), class_ids=labels, seed=self.seed)
        log.info("ARMOR augmentation choice for %s: %s", key, {str(k): v for k, v in choice.items()})
        self.selected[key] = {"choice": {str(k): v for k, v in choice.items()},
                              "alignment": {str(k): v for k, v in scores.items()}}
        return chosen_augment(choice, dims, max(num_classes, 2))

    def _objective(self, name: str, model: torch.nn.Module, task: str, num_classes: int) -> BayesErrorObjective | None:
        """The PGD objective for ``objective="bayes"`` (None: the training loss)."""
        if self.objective == "loss":
            return None
        return BayesErrorObjective(max(num_classes, 2), task, feature_layer(name, model),
                                   per_class=self.bayes_per_class, seed=self.seed)

    @staticmethod
    def _classwise_eps(group: Group, classes: torch.Tensor) -> torch.Tensor:
        """One budget per class noise: the smallest record budget, so every record's holds."""
        per_record = group.eps.flatten(1).amax(1) if group.eps.dim() > 1 else group.eps
        shape = (int(classes.max()) + 1, *([1] * (group.images.dim() - 1)))
        return torch.full(shape, float(per_record.min()))

    def _store(self, group: Group, delta: np.ndarray, classes: torch.Tensor | None) -> None:
        for i, rec in enumerate(group.records):
            if classes is not None:
                d = crop(delta[int(classes[i])], rec.spatial_shape)
            elif group.layouts is not None:
                first, layout = group.layouts[i]
                d = untile(delta[first : first + layout.count], layout)
            else:
                d = crop(delta[i], rec.spatial_shape)
            self._deltas[rec.key] = d.astype(np.float32)

    # -- serving ------------------------------------------------------------------------
    def perturbation(self, record: Record, unit_image: np.ndarray, eps: float) -> np.ndarray:
        """The optimised noise of a record seen by :meth:`fit`."""
        try:
            return self._deltas[record.key]
        except KeyError:
            raise ConfigError(f"{self.name} has no noise for {record.key!r}; it must be in the records given to fit()") from None

    def fit_report(self) -> dict[str, Any]:
        """The min-min history per group and, with ``augment="armor"``, the augmentation chosen."""
        report: dict[str, Any] = {"history": self.history}
        if self.selected:
            report["augment_choice"] = self.selected
        return report

    def params(self) -> dict[str, Any]:
        """Parameters that define the output."""
        return {
            **super().params(), "surrogate": self.surrogate_name or "auto", "rounds": self.loop.max_rounds,
            "train_steps": self.loop.train_steps, "pgd_steps": self.loop.pgd_steps, "step_size": self.step_size or "eps/5",
            "stop_threshold": self.stop_threshold or "auto", "batch_size": self.loop.batch_size, "lr": self.loop.lr,
            "classwise": self.classwise, "tile_size": self.tile_size, "pseudo_classes": self.pseudo_classes,
            "init": self.init, "augment": "armor" if self.armor else self.augment.to_dict(), "eot_samples": self.loop.eot_samples,
            "step_schedule": self.loop.step_schedule, "objective": self.objective,
            **({"bayes_per_class": self.bayes_per_class} if self.objective == "bayes" else {}),
        }

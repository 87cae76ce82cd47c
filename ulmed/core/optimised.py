"""Data-set-level protection by the min-min loop: the shared body of EM and SALM.

:class:`OptimisedMethod` composes small parts, one job each:

1. :func:`ulmed.core.groups.group_records` groups records by (spatial dims, channels), one
   surrogate per group, and :func:`~ulmed.core.groups.build_group` turns each group into the
   loop's tensors (targets, padding or tiles, per-row budgets);
2. :class:`ulmed.core.surrogates.SurrogateState` carries each group's surrogate from one chunk
   of a run to the next;
3. :func:`ulmed.core.bilevel.min_min` optimises the noise, with the PGD objective of
   :func:`ulmed.core.objectives.pgd_objective` and, for ``augment="armor"``, the augmentation
   chosen by :func:`ulmed.core.selection.armor_augment`;
4. :class:`~ulmed.core.groups.NoiseStore` keeps each record's noise for :meth:`perturbation`.

Its options are one validated dataclass, :class:`OptimisedOptions`. Subclasses only choose
the policy: which positions may move (:meth:`OptimisedMethod.position_policy`) and the
defaults. There is no second PGD loop here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import torch

from ulmed.core.augment import build_augment
from ulmed.core.bilevel import MinMinConfig, MinMinHooks, PositionPolicy, min_min
from ulmed.core.budget import DEFAULT_BUDGET, Budget
from ulmed.core.device import resolve_device
from ulmed.core.groups import Group, NoiseStore, RealPositions, build_group, classwise_eps, group_records
from ulmed.core.method import ProtectionMethod, takes_options
from ulmed.core.objectives import pgd_objective
from ulmed.core.optimised_options import ARMOR, OptimisedOptions
from ulmed.core.pgd import METHOD_STEP_DIVISOR, default_step
from ulmed.core.selection import armor_augment
from ulmed.core.surrogates import DEFAULT_SURROGATE, SURROGATE_TASK, TASK_METRIC, SurrogateState
from ulmed.core.targets import TargetSet
from ulmed.core.tasks import NORMS, Norm, Task, task_loss
from ulmed.errors import ConfigError
from ulmed.io.record import Record

__all__ = ["Group", "OptimisedMethod", "OptimisedOptions"]

log = logging.getLogger("ulmed")
#: The surrogate's metric on the perturbed data at which the loop stops, when not given.
STOP_THRESHOLD = {Task.SEGMENTATION: 0.9, Task.CLASSIFICATION: 0.99}
#: Chunk ``k`` of a run draws its batches from seed ``seed + CHUNK_SEED_STRIDE * k``.
CHUNK_SEED_STRIDE = 7919


@takes_options(OptimisedOptions)
class OptimisedMethod(ProtectionMethod):
    """Error-minimising noise from the bilevel min-min loop (base of ``em`` and ``salm``).

    Args:
        budget: L-inf budget (``"8/255"``, ``"20HU"``) or L2 budget (``"l2:0.5"``): the PGD
            core then takes normalised-gradient steps and projects each record's noise
            onto its L2 ball (a tiled record's ball is shared out over its tiles).
        seed: Seed of the whole optimisation.
        device: ``auto``, ``cpu``, ``cuda``...
        **options: The fields of :class:`OptimisedOptions` (``rounds``, ``pgd_steps``, ...).
    """

    needs_fit: ClassVar[bool] = True
    norms: ClassVar[tuple[str, ...]] = NORMS

    def __init__(self, budget: Budget | str | float = DEFAULT_BUDGET, seed: int = 0, device: str = "auto",
                 **options: Any) -> None:
        super().__init__(budget, seed, device)
        self.options = OptimisedOptions(**options)
        self.armor = self.options.augment == ARMOR
        self.augment = self.options.policy()
        self.selected: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, float]]] = {}
        self.surrogates = SurrogateState(seed, self.options.lr)
        self.noise = NoiseStore()

    @property
    def classwise(self) -> bool:
        """One noise per class (classification only)."""
        return self.options.classwise

    # -- policy hooks -------------------------------------------------------------------
    def position_policy(self, group: Group) -> PositionPolicy | None:
        """Which positions may move (None: all real positions). SALM overrides this."""
        return None

    # -- fitting ------------------------------------------------------------------------
    def fit(self, records: Sequence[Record]) -> None:
        """Optimise the noise of ``records`` (one surrogate per group of equal rank/channels).

        Called again with the next chunk of a large run, it continues training the same
        surrogates (:meth:`state_dict` saves them between chunks) and forgets the noise of
        the previous chunk.
        """
        device = resolve_device(self.device)
        self.noise.clear()
        for (dims, channels), recs in group_records(records):
            eps = [self.budget.in_unit(r.mapping) for r in recs]
            group = build_group(recs, eps, self.budget.norm, self.options.tile_size, self.options.pseudo_classes)
            if self.classwise and group.targets_info.task != Task.CLASSIFICATION:
                raise ConfigError("class-wise noise needs class labels; use sample-wise noise for masks and label maps")
            self._fit_group(f"{dims}d-{channels}ch", group, device)
        self.surrogates.fits += 1

    def _surrogate_name(self, info: TargetSet) -> str:
        """The named surrogate, or the task's default; refused when it serves another task."""
        name = self.options.surrogate or DEFAULT_SURROGATE[Task(info.task)]
        if SURROGATE_TASK[name] != info.task:
            raise ConfigError(f"surrogate {name!r} is for {SURROGATE_TASK[name]}, but these targets need {info.task}")
        return name

    def loop_config(self, group: Group, task: Task, device: torch.device) -> MinMinConfig:
        """The min-min settings of one group: its largest budget, the options, this chunk's seed."""
        o = self.options
        eps = float(group.eps.max())
        return MinMinConfig(
            eps=eps, step_size=o.step_size or default_step(eps, METHOD_STEP_DIVISOR), train_steps=o.train_steps,
            pgd_steps=o.pgd_steps, max_rounds=o.rounds, batch_size=o.batch_size, lr=o.lr,
            stop_threshold=o.stop_threshold if o.stop_threshold is not None else STOP_THRESHOLD[task],
            seed=self.seed + CHUNK_SEED_STRIDE * self.surrogates.fits,  # each chunk draws its own batches
            norm=self.budget.norm, eot_samples=o.eot_samples, step_schedule=o.step_schedule,
            classwise=o.classwise, device=device, amp=o.amp, cell=o.cell,
        )

    def _fit_group(self, key: str, group: Group, device: torch.device) -> None:
        """Optimise one group's noise (after one plain round and ARMOR's choice, with ``armor``)."""
        info = group.targets_info
        task, dims = Task(info.task), group.records[0].spatial_dims
        name = self._surrogate_name(info)
        model, optimizer, num_classes = self.surrogates.get(key, name, dims, group.records[0].channels,
                                                            info.num_classes)
        loss_fn, metric = task_loss(task), TASK_METRIC[task]
        config = self.loop_config(group, task, device)
        classes = torch.as_tensor(np.asarray(info.targets)) if self.classwise else None
        hooks = MinMinHooks(
            eps_map=classwise_eps(group, classes) if classes is not None else group.eps,
            position_policy=self._policy(group), class_ids=classes,
            objective=pgd_objective(self.options.objective, name, model, task, num_classes,
                                    per_class=self.options.bayes_per_class, seed=self.seed),
        )
        delta: torch.Tensor | None = None
        history: list[dict[str, float]] = []
        augment = build_augment(self.augment, dims, num_classes)
        if self.armor:
            # ARMOR: one plain round trains the surrogate a little, then the augmentation is chosen.
            delta, history = min_min(model, optimizer, group.images, group.targets, delta, loss_fn, metric,
                                     replace(config, max_rounds=1), hooks=hooks)
            labels = group.targets if task is Task.CLASSIFICATION else None
            augment, self.selected[key] = armor_augment(model.to(device), loss_fn, group.images, group.targets, dims,
                                                        num_classes, class_ids=labels, seed=self.seed)
            log.info("ARMOR augmentation choice for %s: %s", key, self.selected[key]["choice"])
            config = replace(config, max_rounds=max(config.max_rounds - 1, 1), seed=config.seed + 1)
        delta, more = min_min(model, optimizer, group.images, group.targets, delta, loss_fn, metric, config,
                              hooks=hooks, augment=augment)
        self.history[key] = history + more
        self.noise.store(group, delta.cpu().numpy(), classes)

    def _policy(self, group: Group) -> PositionPolicy | None:
        """:meth:`position_policy`; with an L2 budget and none, padded positions are frozen."""
        policy = self.position_policy(group)
        if policy is None and self.budget.norm == Norm.L2 and not self.classwise:
            return RealPositions(group.valid)
        return policy

    def state_dict(self) -> dict[str, Any]:
        """The carried surrogates and optimisers, for resuming a chunked run (tensors only)."""
        return self.surrogates.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`: the next :meth:`fit` trains the saved surrogates on."""
        self.surrogates.load_state_dict(state)

    # -- serving ------------------------------------------------------------------------
    def perturbation(self, record: Record, unit_image: np.ndarray, eps: float) -> np.ndarray:
        """The optimised noise of a record seen by :meth:`fit`."""
        if record.key not in self.noise:
            raise ConfigError(f"{self.name} has no noise for {record.key!r}; it must be in the records given to fit()")
        return self.noise[record.key]

    def fit_report(self) -> dict[str, Any]:
        """The min-min history per group and, with ``augment="armor"``, the augmentation chosen."""
        report: dict[str, Any] = {"history": self.history}
        if self.selected:
            report["augment_choice"] = self.selected
        return report

    def params(self) -> dict[str, Any]:
        """Parameters that define the output."""
        return {**super().params(), **self.options.params(self.augment)}

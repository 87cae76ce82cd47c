"""How long and where nnU-Net trains: :class:`NnunetSchedule` (validated on construction).

nnU-Net's own schedule is 1000 epochs of 250 iterations with 50 validation iterations per
epoch, a GPU budget of about a day per fold. A victim in the evaluation grid trains the same
network, plans, loss and data augmentation for ``epochs x iterations`` steps instead;
nnU-Net's poly learning rate decays over ``epochs``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from ulmed.choices import StrEnum, look_up
from ulmed.errors import ConfigError

#: nnU-Net's own schedule (nnUNetTrainer): for comparison in reports.
NNUNET_DEFAULT = {"epochs": 1000, "iterations": 250, "val_iterations": 50}
#: Fields that do not change a run's result (left out of the reuse key).
NOT_KEYED = ("threads",)


class Device(StrEnum):
    """Where nnU-Net trains and predicts."""

    #: CPU: slow but everywhere; augmentation runs in the training process (deterministic).
    CPU = "cpu"
    #: The first visible CUDA GPU (pick one with ``CUDA_VISIBLE_DEVICES``), with nnU-Net's mixed precision.
    CUDA = "cuda"


def _check_int(name: str, value: Any, low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = f"an integer >= {low}" + (" or None" if allow_none else "")
        raise ConfigError(f"nnU-Net schedule: {name} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class NnunetSchedule:
    """A short nnU-Net training schedule and where it runs.

    Args:
        epochs: nnU-Net epochs (``num_epochs``); the learning rate decays over them.
        iterations: Training iterations per epoch (``num_iterations_per_epoch``).
        val_iterations: nnU-Net's pseudo-Dice validation iterations per epoch
            (``num_val_iterations_per_epoch``, on the training cases: fold ``all``).
        device: ``cpu`` or ``cuda`` (:class:`Device`).
        seed: Seeds Python, NumPy and torch in the worker before nnU-Net builds the network
            (nnU-Net itself takes no seed); on CPU with ``workers=0`` a rerun is repeatable.
        threads: torch threads in the worker (None: torch's default).
        workers: nnU-Net's augmentation processes (``nnUNet_n_proc_DA``); None: 0 on CPU
            (augmentation in the training process), ``min(8, cores)`` on CUDA.
        mirroring: Test-time mirroring in prediction (nnU-Net's default; 8 passes per 3D patch).
    """

    epochs: int = 10
    iterations: int = 25
    val_iterations: int = 2
    device: str = Device.CPU
    seed: int = 0
    threads: int | None = None
    workers: int | None = None
    mirroring: bool = True

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_int("iterations", self.iterations, 1)
        _check_int("val_iterations", self.val_iterations, 1)
        _check_int("seed", self.seed, 0)
        _check_int("threads", self.threads, 1, allow_none=True)
        _check_int("workers", self.workers, 0, allow_none=True)
        if not isinstance(self.mirroring, bool):
            raise ConfigError(f"nnU-Net schedule: mirroring must be True or False, got {self.mirroring!r}")
        object.__setattr__(self, "device", look_up(self.device, Device, "nnU-Net device").value)

    @property
    def steps(self) -> int:
        """Training iterations in all (``epochs * iterations``)."""
        return self.epochs * self.iterations

    def resolved_workers(self) -> int:
        """The augmentation processes the worker starts (``workers``, or the device's default)."""
        if self.workers is not None:
            return self.workers
        return 0 if self.device == Device.CPU else min(8, os.cpu_count() or 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what the result records)."""
        return asdict(self)

    def key_dict(self) -> dict[str, Any]:
        """The fields that shape the result (the reuse key's part of the schedule)."""
        return {k: v for k, v in asdict(self).items() if k not in NOT_KEYED}

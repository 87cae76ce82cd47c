"""What a protection or a victim learns (and the budget norms, defined in io/base.py): one place for each.

``Task`` is what the targets are (label maps or class indices) and :func:`task_loss` is the
one training loss per task, used by the surrogates, the victims and the PGD objective.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ulmed.choices import StrEnum, look_up
from ulmed.io.base import NORMS, Norm  # the budget norms live below io, for quantisation

__all__ = ["NORMS", "TASKS", "Norm", "Task", "task_loss"]

if TYPE_CHECKING:  # torch is imported by task_loss only: budgets and tasks stay cheap to import
    from torch import nn


class Task(StrEnum):
    """What the targets of a data set are."""

    #: Label maps ``(N, *spatial)``; loss DiceCE.
    SEGMENTATION = "segmentation"
    #: Class indices ``(N,)``; loss cross-entropy.
    CLASSIFICATION = "classification"


#: The task values, in definition order.
TASKS: tuple[str, ...] = tuple(t.value for t in Task)


def task_loss(task: str | Task) -> nn.Module:
    """The training loss of a task: DiceCE (one-hot targets, softmax) or cross-entropy.

    Raises:
        ConfigError: ``task`` is not a :class:`Task`.
    """
    from monai.losses import DiceCELoss
    from torch import nn

    if look_up(task, Task, "task") is Task.SEGMENTATION:
        return DiceCELoss(to_onehot_y=True, softmax=True)
    return nn.CrossEntropyLoss()

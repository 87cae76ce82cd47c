import pytest
import torch
from monai.losses import DiceCELoss

from ulmed.core.tasks import NORMS, TASKS, Norm, Task, task_loss
from ulmed.errors import ConfigError


def test_one_loss_per_task():
    assert isinstance(task_loss("segmentation"), DiceCELoss)
    ce = task_loss(Task.CLASSIFICATION)
    logits, labels = torch.tensor([[4.0, -4.0], [-4.0, 4.0]]), torch.tensor([0, 1])
    assert ce(logits, labels).item() < 0.01 < ce(logits, 1 - labels).item()
    with pytest.raises(ConfigError, match="segmentation"):
        task_loss("detection")


def test_the_constants_are_the_enum_values():
    assert TASKS == ("segmentation", "classification") and NORMS == ("linf", "l2")
    assert [n.value for n in Norm] == list(NORMS)

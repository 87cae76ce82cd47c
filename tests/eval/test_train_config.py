"""TrainConfig, its optimiser choice and the data checks of ulmed/eval/train_config.py."""

import numpy as np
import pytest
import torch

from ulmed.core.tasks import Task
from ulmed.errors import ConfigError
from ulmed.eval.train_config import Optimizer, TrainConfig, as_target_batch, check_data


@pytest.mark.parametrize(
    "kwargs",
    [{"optimizer": "rmsprop"}, {"epochs": 0}, {"patience": 2}, {"lr": 0}, {"device": "gpu"},
     {"val_fraction": 1.0}, {"patch_size": (8,)}],
)
def test_bad_configs_are_refused(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_the_optimiser_is_a_choice_and_builds_the_named_one():
    with pytest.raises(ConfigError, match="adam"):  # the message lists the choices
        TrainConfig(optimizer="rmsprop")
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = TrainConfig(optimizer="SGD", lr=0.5, momentum=0.5)
    assert sgd.optimizer is Optimizer.SGD
    opt = sgd.build_optimizer(params)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.5 and opt.defaults["lr"] == 0.5
    assert isinstance(TrainConfig(weight_decay=0.1).build_optimizer(params), torch.optim.Adam)


def test_check_data_returns_the_task_and_names_what_is_wrong():
    images = np.zeros((2, 1, 4, 4), dtype=np.float32)
    assert check_data(images, np.zeros((2, 4, 4), dtype=np.int64), "Segmentation", 2) is Task.SEGMENTATION
    assert check_data(images, np.array([0, 1]), "classification", 2) is Task.CLASSIFICATION
    with pytest.raises(ConfigError, match="task"):
        check_data(images, None, "detection", None)
    with pytest.raises(ConfigError, match="shape"):
        check_data(images, np.zeros((2, 4), dtype=np.int64), "segmentation", 2)
    with pytest.raises(ConfigError, match="integer"):
        check_data(images, np.zeros(2), "classification", 2)
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        check_data(images, np.array([0, 2]), "classification", 2)
    with pytest.raises(ConfigError, match="float"):
        check_data(images.astype(np.uint8), None, "classification", None)


def test_label_maps_get_a_channel_axis():
    y = torch.zeros(3, 4, 4)
    assert as_target_batch(y, Task.SEGMENTATION).shape == (3, 1, 4, 4)
    assert as_target_batch(torch.zeros(3), Task.CLASSIFICATION).shape == (3,)

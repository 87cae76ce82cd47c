"""The min-min settings and hooks: validation when built, enum look-ups, the device, frozen values."""

import dataclasses

import pytest
import torch

from ulmed.core.bilevel_config import MinMinConfig, MinMinHooks
from ulmed.core.pgd import Schedule
from ulmed.core.tasks import Norm
from ulmed.errors import ConfigError


@pytest.mark.parametrize(
    "kwargs",
    [{"eps": 0}, {"eps": 2.0}, {"pgd_steps": 0}, {"max_rounds": 0}, {"batch_size": 0}, {"train_steps": -1},
     {"norm": "l1"}, {"seed": -1}, {"step_size": 0.0}, {"lr": 0}, {"step_schedule": "cyclic"}, {"device": "tpu"}],
)
def test_config_validates(kwargs):
    with pytest.raises(ConfigError):
        MinMinConfig(**kwargs)
    assert MinMinConfig(eps=2.0, norm="l2").eps == 2.0
    assert MinMinConfig(norm="L2", eps=2.0).norm == "l2"  # looked up in any case


def test_config_is_frozen_and_resolves_its_device():
    config = MinMinConfig(step_schedule="DYNAMIC", classwise=True)
    assert config.norm is Norm.LINF and config.step_schedule is Schedule.DYNAMIC and config.classwise
    assert config.torch_device() == torch.device("cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.eps = 0.1  # type: ignore[misc]
    assert MinMinHooks().eps_map is None and MinMinHooks().progress is None

"""Surrogates by name, their feature layers and metrics, and the state carried across chunks."""

import pytest
import torch

from ulmed.core.surrogates import (
    DEFAULT_SURROGATE,
    SURROGATE_TASK,
    SurrogateState,
    accuracy_metric,
    build_surrogate,
    dice_metric,
    feature_layer,
)
from ulmed.core.tasks import Task
from ulmed.errors import ConfigError


def test_surrogates_build_by_name_and_serve_their_task():
    unet = build_surrogate("unet", 2, 1, 3)
    assert unet(torch.zeros(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    net = build_surrogate("resnet18", 2, 1, 4)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 4)
    assert SURROGATE_TASK[DEFAULT_SURROGATE[Task.SEGMENTATION]] == "segmentation"
    assert isinstance(feature_layer("resnet18", net), torch.nn.Module)
    with pytest.raises(ConfigError, match="unknown surrogate"):
        build_surrogate("vgg", 2, 1, 2)


@pytest.mark.parametrize("dims", [2, 3])
def test_the_dynunet_surrogate_keeps_the_input_size_at_multiples_of_its_strides(dims):
    net = build_surrogate("dynunet", dims, 1, 3)
    out = net(torch.zeros((1, 1) + (8,) * dims))
    assert out.shape == (1, 3) + (8,) * dims and SURROGATE_TASK["dynunet"] == Task.SEGMENTATION
    first = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Conv3d))
    assert first.stride == (1,) * dims  # nnU-Net's full-resolution first stage, unlike the UNet's strided one
    seen = []
    feature_layer("dynunet", net).register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    net(torch.zeros((1, 1) + (8,) * dims))
    assert seen == [(1, 16) + (8,) * dims]  # the features the Bayes objective reads: full resolution


def test_metrics():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert float(accuracy_metric(logits, torch.tensor([0, 1, 1]))) == pytest.approx(2 / 3)
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[..., :2] = 1
    perfect = torch.cat([1 - target, target], 1).float()
    assert float(dice_metric(perfect, target)) == pytest.approx(1.0)
    assert float(dice_metric(perfect.flip(1), target)) == pytest.approx(0.0)


def test_state_carries_a_surrogate_and_restores_it():
    state = SurrogateState(seed=0, lr=1e-3)
    model, optimizer, k = state.get("2d-1ch", "unet", 2, 1, 2)
    assert state.get("2d-1ch", "unet", 2, 1, 2)[0] is model and k == 2
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    state.fits = 3
    saved = state.state_dict()
    fresh = SurrogateState(seed=0, lr=1e-3)
    fresh.load_state_dict(saved)
    again, _, _ = fresh.get("2d-1ch", "unet", 2, 1, 2)
    assert fresh.fits == 3 and again is not model
    assert torch.equal(next(again.parameters()), next(model.parameters()))
    bigger, _, k = state.get("2d-1ch", "unet", 2, 1, 3)  # more classes than the carried one has
    assert bigger is not model and k == 3

"""The Bayes-error objective on models (a UNet layer, input patches, logits), its validation, the choice."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from tests.core.conftest import gen
from ulmed.core.bayes_error import bayes_error
from ulmed.core.features import patch_features
from ulmed.core.objectives import BayesErrorObjective, Objective, pgd_objective
from ulmed.errors import ConfigError

torch.set_num_threads(1)
E = math.exp


def test_bayes_error_gradient_reaches_the_input_via_a_monai_unet_layer() -> None:
    torch.manual_seed(0)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8), strides=(2,))
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    y = torch.zeros(2, 1, 16, 16)
    y[..., 4:12, 4:12] = 1.0
    # model.model[1] is the skip block at half resolution: targets are nearest-resized
    objective = BayesErrorObjective(2, "segmentation", layer=model.model[1], per_class=16, seed=0)
    loss = objective(model, x, y)
    assert loss.dim() == 0 and -0.5 <= float(loss.detach()) <= 0.0
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert not model.model[1]._forward_hooks  # the tap is gone


def test_objective_segmentation_without_layer_uses_input_patches_3d() -> None:
    x = torch.rand(1, 1, 6, 6, 6, requires_grad=True)
    y = torch.zeros(1, 6, 6, 6, dtype=torch.long)
    y[:, 2:5, 2:5, 2:5] = 1
    objective = BayesErrorObjective(2, per_class=8, patch=3, bandwidth=1.0, seed=5)
    loss = objective(nn.Identity(), x, y)
    feats, labels = patch_features(x, y, 8, 3, gen(5))
    assert float(loss.detach()) == pytest.approx(-bayes_error(feats, labels, 2, 1.0).item(), abs=1e-6)
    (grad,) = torch.autograd.grad(loss, x)
    assert grad.abs().sum() > 0


def test_objective_classification_logits_and_pooled_layer() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 3, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
    x = torch.rand(6, 1, 8, 8, requires_grad=True)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    logits_loss = BayesErrorObjective(2, "classification")(model, x, y)
    assert float(logits_loss.detach()) == pytest.approx(-bayes_error(model(x), y, 2).item(), abs=1e-6)
    pooled_loss = BayesErrorObjective(2, "classification", layer=conv, bandwidth=0.5)(model, x, y[:, None])
    assert float(pooled_loss.detach()) == pytest.approx(-bayes_error(conv(x).mean((2, 3)), y, 2, 0.5).item(), abs=1e-6)
    (grad,) = torch.autograd.grad(pooled_loss, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": True}, "num_classes"),
        ({"num_classes": 2, "task": "detection"}, "task"),
        ({"num_classes": 2, "layer": "conv1"}, "layer"),
        ({"num_classes": 2, "per_class": 0}, "per_class"),
        ({"num_classes": 2, "patch": 2}, "odd"),
        ({"num_classes": 2, "bandwidth": 0}, "bandwidth"),
        ({"num_classes": 2, "seed": -1}, "seed"),
    ],
)
def test_bad_objective_arguments_raise(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        BayesErrorObjective(**kwargs)


def test_objective_rejects_mismatched_targets() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ConfigError, match="classification targets"):
        BayesErrorObjective(2, "classification")(model, torch.rand(4, 1, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        BayesErrorObjective(2, "classification")(model, torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ConfigError, match="shape"):
        BayesErrorObjective(2)(model, torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_pgd_objective_is_none_for_the_loss_and_taps_the_feature_layer_for_bayes() -> None:
    from ulmed.core.surrogates import build_surrogate, feature_layer

    torch.manual_seed(0)
    model = build_surrogate("unet", 2, 1, 2)
    assert pgd_objective("loss", "unet", model, "segmentation", 2, per_class=8, seed=0) is None
    chosen = pgd_objective(Objective.BAYES, "unet", model, "segmentation", 1, per_class=8, seed=3)
    assert isinstance(chosen, BayesErrorObjective)
    assert chosen.layer is feature_layer("unet", model) and chosen.num_classes == 2 and chosen.per_class == 8
    with pytest.raises(ConfigError, match="objective"):
        pgd_objective("entropy", "unet", model, "segmentation", 2, per_class=8, seed=0)

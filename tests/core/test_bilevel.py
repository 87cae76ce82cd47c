"""The min-min loop on a tiny real segmentation set (8 HC18 images at 32x32)."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet

from ulmed.core.bilevel import MinMinConfig, MinMinHooks, min_min
from ulmed.errors import ConfigError

DICE_CE = DiceCELoss(sigmoid=True)


def unet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=(4, 8), strides=(2,))


def dice(out: torch.Tensor, target: torch.Tensor) -> float:
    pred = (out.sigmoid() > 0.5).float()
    inter = (pred * target).sum((1, 2, 3))
    return float((2 * inter / (pred.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1e-6)).mean())


def run(x, y, config, **kwargs):
    model = unet(0)
    return min_min(model, torch.optim.Adam(model.parameters(), 1e-2), x, y, None, DICE_CE, dice, config, **kwargs)


def victim_loss_after(x_train: torch.Tensor, y: torch.Tensor, steps: int = 30, seed: int = 1) -> float:
    """Training loss of a freshly initialised victim after ``steps`` full-batch Adam steps."""
    model = unet(seed)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(steps):
        loss = DICE_CE(model(x_train), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_min_min_noise_makes_training_loss_fall_faster(hc18_eight):
    x, y = hc18_eight
    eps = 16 / 255  # a larger budget than the default, so three CPU rounds suffice
    config = MinMinConfig(eps=eps, step_size=eps / 4, train_steps=10, pgd_steps=10, max_rounds=3, batch_size=8, seed=0)
    seen = []
    delta, history = run(x, y, config, hooks=MinMinHooks(progress=seen.append))
    assert delta.shape == x.shape and (delta.abs() <= eps).all()
    assert ((x + delta) >= 0).all() and ((x + delta) <= 1).all()
    assert [h["round"] for h in history] == [0, 1, 2] and seen == history
    assert set(history[0]) == {"round", "train_loss", "loss", "metric", "mean_abs_delta"}
    clean = victim_loss_after(x, y)
    noise = (torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1) * eps
    random = victim_loss_after((x + noise).clamp(0, 1), y)
    protected = victim_loss_after((x + delta).clamp(0, 1), y)
    assert protected < clean - 0.1
    assert protected < random - 0.1  # the optimisation, not just any noise


def test_min_min_is_deterministic_for_a_seed(hc18_eight):
    x, y = hc18_eight
    config = MinMinConfig(train_steps=3, pgd_steps=3, max_rounds=2, batch_size=3, seed=7, random_start=True)
    first, h1 = run(x, y, config)
    second, h2 = run(x, y, config)
    assert torch.equal(first, second) and h1 == h2
    other, _ = run(x, y, MinMinConfig(train_steps=3, pgd_steps=3, max_rounds=2, batch_size=3, seed=8,
                                      random_start=True))
    assert not torch.equal(first, other)


def test_min_min_stops_at_the_threshold(hc18_eight):
    x, y = hc18_eight
    _, history = run(x, y, MinMinConfig(train_steps=1, pgd_steps=1, max_rounds=5, stop_threshold=0.0, batch_size=8))
    assert len(history) == 1


def test_classwise_noise_has_one_delta_per_class(hc18_eight):
    x, _ = hc18_eight
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    torch.manual_seed(0)
    classifier = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 3),
    )
    ce = torch.nn.CrossEntropyLoss()

    def accuracy(out, target):
        return float((out.argmax(1) == target).float().mean())

    with torch.no_grad():
        clean_loss = ce(classifier(x), labels).item()
    eps = 8 / 255
    # PGD only (a fixed surrogate), one noise per class
    config = MinMinConfig(eps=eps, train_steps=0, pgd_steps=5, max_rounds=1, batch_size=3, classwise=True)
    delta, history = min_min(classifier, None, x, labels, None, ce, accuracy, config)
    assert delta.shape == (3, 1, 32, 32)
    assert (delta.abs() <= eps).all() and not torch.equal(delta[0], delta[1])
    assert history[0]["loss"] < clean_loss  # the averaged class gradients minimise the loss
    with torch.no_grad():
        after = ce(classifier((x + delta[labels]).clamp(0, 1)), labels).item()
    assert history[0]["loss"] == pytest.approx(after, rel=1e-5)


def test_classwise_refuses_missing_class_rows(hc18_eight):
    x, y = hc18_eight
    with pytest.raises(ConfigError, match="class"):
        run(x, y, MinMinConfig(max_rounds=1, classwise=True))  # targets are masks, not class ids
    with pytest.raises(ConfigError, match="rows"):
        labels = torch.arange(8) % 3
        min_min(unet(0), None, x, y, torch.zeros(2, 1, 32, 32), DICE_CE, dice,
                MinMinConfig(max_rounds=1, classwise=True), hooks=MinMinHooks(class_ids=labels))


def test_an_eps_map_bounds_each_position(hc18_eight):
    x, y = hc18_eight
    emap = torch.where(y > 0, torch.tensor(16 / 255), torch.tensor(2 / 255))  # one row per image
    config = MinMinConfig(eps=16 / 255, step_size=4 / 255, train_steps=1, pgd_steps=3, max_rounds=1, batch_size=4)
    delta, _ = run(x, y, config, hooks=MinMinHooks(eps_map=emap))
    assert (delta.abs() <= emap + 1e-7).all()
    assert delta[(y == 0).expand_as(delta)].abs().max() <= 2 / 255 + 1e-7
    assert delta.abs().max() > 8 / 255  # the larger budget was used inside the head

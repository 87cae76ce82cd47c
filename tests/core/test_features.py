"""Features for the Bayes-error objective: sampled positions, input patches, gradients, the tap."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.core.conftest import gen
from ulmed.core.bayes_error import bayes_error
from ulmed.core.features import FeatureTap, patch_features, pixel_features
from ulmed.errors import ConfigError

torch.set_num_threads(1)
E = math.exp


# ----------------------------------------------------------------------------- ascent through patches


def test_one_pgd_step_on_the_input_through_patch_features_raises_the_error() -> None:
    torch.manual_seed(0)
    x = torch.zeros(2, 1, 12, 12, dtype=torch.float64)
    x[:, :, :, 6:] = 1.0
    x += 0.05 * torch.randn_like(x)
    y = torch.zeros(2, 1, 12, 12, dtype=torch.long)
    y[:, :, :, 6:] = 1
    x.requires_grad_()
    feats, labels = patch_features(x, y, per_class=16, patch=3, generator=gen(1))
    before = bayes_error(feats, labels, 2, bandwidth=1.0)
    (grad,) = torch.autograd.grad(before, x)
    x_adv = (x.detach() + 8 / 255 * grad.sign()).clamp(0, 1)
    feats, labels2 = patch_features(x_adv, y, per_class=16, patch=3, generator=gen(1))
    assert torch.equal(labels, labels2)
    assert float(bayes_error(feats, labels2, 2, bandwidth=1.0)) > float(before.detach())


# ----------------------------------------------------------------------------- (e) sampling


def coordinate_map(batch: int, spatial: tuple[int, ...]) -> torch.Tensor:
    """Channels = (b, *coords): the feature of a position says where it came from."""
    grids = torch.meshgrid(torch.arange(batch), *[torch.arange(s) for s in spatial], indexing="ij")
    return torch.stack(grids, dim=1).double()


@pytest.mark.parametrize("spatial", [(7, 9), (4, 5, 6)])
def test_pixel_features_labels_counts_and_reproducibility(spatial: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    targets = torch.randint(0, 3, (2, 1, *spatial))
    targets[targets == 2] = 4  # classes 0, 1, 4 (a gap)
    targets.view(-1)[0] = 2  # class 2 occurs once: fewer positions than per_class
    fmap = coordinate_map(2, spatial)
    per_class = 10
    feats, labels = pixel_features(fmap, targets, per_class, gen(3))
    assert feats.shape == (labels.numel(), 1 + len(spatial))
    where = feats.long()
    assert torch.equal(targets[:, 0][tuple(where.T)], labels)  # each label is its position's class
    assert len({tuple(r) for r in where.tolist()}) == labels.numel()  # no position twice
    counts = {c: int((labels == c).sum()) for c in (0, 1, 2, 4)}
    assert counts == {0: per_class, 1: per_class, 2: 1, 4: per_class}
    assert torch.equal(labels, labels.sort().values)  # classes ascending
    again, labels_again = pixel_features(fmap, targets.squeeze(1), per_class, gen(3))  # (B, *S) targets too
    assert torch.equal(feats, again) and torch.equal(labels, labels_again)
    other, _ = pixel_features(fmap, targets, per_class, gen(4))
    assert not torch.equal(feats, other)


def test_pixel_features_takes_all_positions_when_few_and_accepts_float_masks() -> None:
    fmap = coordinate_map(1, (3, 3))
    mask = torch.zeros(1, 1, 3, 3)
    mask[0, 0, 1, 1] = 1.0
    feats, labels = pixel_features(fmap, mask, per_class=100)
    assert labels.tolist() == [0] * 8 + [1]
    assert feats[-1].tolist() == [0.0, 1.0, 1.0]


def test_patch_features_match_unfold_in_2d() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 3, 8, 7, dtype=torch.float64)
    y = torch.randint(0, 2, (2, 1, 8, 7))
    feats, labels = patch_features(x, y, per_class=12, patch=5, generator=gen(7))
    where, labels_px = pixel_features(coordinate_map(2, (8, 7)), y, 12, gen(7))
    assert torch.equal(labels, labels_px)
    unfolded = F.unfold(x, kernel_size=5, padding=2)  # (B, C*25, H*W), zero padded
    b, i, j = where.long().T
    assert feats.shape == (labels.numel(), 3 * 25)
    assert torch.equal(feats, unfolded[b, :, i * 7 + j])


def test_patch_features_in_3d_zero_pad_at_the_border() -> None:
    torch.manual_seed(0)
    x = torch.rand(1, 2, 5, 6, 4, dtype=torch.float64)
    y = torch.zeros(1, 5, 6, 4, dtype=torch.long)
    y[0, 0, 0, 0] = 1  # a corner voxel
    y[0, 2, 3, 1] = 2  # an interior voxel
    feats, labels = patch_features(x, y, per_class=1, patch=3, generator=gen(0))
    assert labels.tolist() == [0, 1, 2]
    padded = F.pad(x, (1, 1, 1, 1, 1, 1))
    assert torch.equal(feats[1], padded[0, :, 0:3, 0:3, 0:3].reshape(-1))
    assert torch.equal(feats[2], padded[0, :, 2:5, 3:6, 1:4].reshape(-1))
    assert int((feats[1] == 0).sum()) == 2 * (27 - 8)  # outside the volume: zeros


# ----------------------------------------------------------------------------- (f) gradients


def test_gradients_reach_the_feature_map_at_the_sampled_positions_only() -> None:
    fmap = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(2, 6, 6, dtype=torch.long)
    y[:, 3:] = 1
    feats, _ = pixel_features(fmap, y, per_class=5, generator=gen(0))
    feats.sum().backward()
    touched = fmap.grad.abs().sum(1) > 0
    assert int(touched.sum()) == 10
    assert torch.equal(fmap.grad, touched[:, None].expand_as(fmap).double())


def test_gradients_reach_the_input_through_patch_features_inside_the_volume() -> None:
    x = torch.rand(1, 1, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    y = torch.zeros(1, 1, 6, 6, 6, dtype=torch.long)
    y[0, 0, 0, 0, 0] = 1
    feats, labels = patch_features(x, y, per_class=1, patch=3, generator=gen(0))
    feats[labels == 1].sum().backward()
    expected = torch.zeros_like(x)
    expected[0, 0, :2, :2, :2] = 1.0  # the in-volume part of the corner's 3x3x3 patch
    assert torch.equal(x.grad, expected)


# ----------------------------------------------------------------------------- (g) tap


def test_feature_tap_captures_a_submodule_and_removes_its_hook() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    with FeatureTap(model[0]) as tap:
        assert tap.attached and len(model[0]._forward_hooks) == 1
        with pytest.raises(ConfigError, match="captured nothing"):
            _ = tap.output
        model(x)
        assert torch.equal(tap.output, model[0](x))
        assert tap.output.requires_grad  # not detached
    assert not tap.attached and not model[0]._forward_hooks
    model(x + 1)  # after removal the stored output no longer changes
    assert torch.equal(tap.output, model[0](x))


def test_feature_tap_removes_its_hook_on_error() -> None:
    layer = nn.Linear(3, 3)
    with pytest.raises(RuntimeError), FeatureTap(layer):
        layer(torch.randn(2, 4))
    assert not layer._forward_hooks


def test_bad_sampling_inputs_raise() -> None:
    fmap = torch.zeros(2, 3, 4, 4)
    y = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="shape"):
        pixel_features(fmap, torch.zeros(2, 1, 4, 5, dtype=torch.long), 4)
    with pytest.raises(ConfigError, match="shape"):
        pixel_features(fmap, torch.zeros(2, 2, 4, 4, dtype=torch.long), 4)
    with pytest.raises(ConfigError, match="integer"):
        pixel_features(fmap, torch.full((2, 1, 4, 4), 0.5), 4)
    with pytest.raises(ConfigError, match=">= 0"):
        pixel_features(fmap, -torch.ones(2, 4, 4, dtype=torch.long), 4)
    with pytest.raises(ConfigError, match="per_class"):
        pixel_features(fmap, y, 0)
    with pytest.raises(ConfigError, match="generator"):
        pixel_features(fmap, y, 4, generator=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="feature_map"):
        pixel_features(torch.zeros(2, 3), y, 4)
    with pytest.raises(ConfigError, match="odd"):
        patch_features(fmap, y, 4, patch=4)
    with pytest.raises(ConfigError, match="patch"):
        patch_features(fmap, y, 4, patch=0)
    with pytest.raises(ConfigError, match="nn.Module"):
        FeatureTap("layer")  # type: ignore[arg-type]

"""The Bayes-error objective: hand-computed posteriors, sampling, gradients, the tap, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import UNet
from torch import nn

from ulmed.core.objectives import (
    BayesErrorObjective,
    FeatureTap,
    bayes_error,
    loo_kernel_posterior,
    patch_features,
    pixel_features,
)
from ulmed.errors import ConfigError

torch.set_num_threads(1)
E = math.exp


def t64(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- (a) separable


def test_separable_clusters_give_one_hot_posterior_and_zero_error() -> None:
    feats = t64([[0.0, 0.0], [0.0, 1.0], [50.0, 0.0], [50.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    post = loo_kernel_posterior(feats, labels, 2, bandwidth=1.0)
    # the other-class kernel is at most exp(-2500 / 2) relative to exp(-1/2): ~0
    assert torch.allclose(post, F.one_hot(labels, 2).double(), atol=1e-6)
    assert float(bayes_error(feats, labels, 2, bandwidth=1.0)) == pytest.approx(0.0, abs=1e-6)


def test_far_points_in_log_space_take_nearest_neighbour_label() -> None:
    # exp(-99**2 / (2 * 0.01**2)) underflows to 0 in linear space: log space still gives 1-NN
    feats = t64([[0.0], [1.0], [100.0]])
    post = loo_kernel_posterior(feats, torch.tensor([0, 1, 1]), 2, bandwidth=0.01)
    assert torch.isfinite(post).all()
    assert torch.allclose(post, t64([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), atol=1e-12)


def test_infinitely_far_point_gets_uniform_posterior_and_no_nan_gradient() -> None:
    # (1e150)**2 / (2 * 1e-12) overflows float64: every log-kernel of row 2 is -inf
    feats = t64([[0.0], [1e-5], [1e150]]).requires_grad_()
    labels = torch.tensor([0, 1, 0])
    post = loo_kernel_posterior(feats, labels, 2, bandwidth=1e-6)
    assert torch.allclose(post, t64([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]), atol=1e-12)
    bayes_error(feats, labels, 2, bandwidth=1e-6).backward()
    assert torch.isfinite(feats.grad).all()


# ----------------------------------------------------------------------------- (b) by hand


def test_three_points_on_a_line_match_hand_computation() -> None:
    # x = 0, 1, 3; labels 0, 0, 1; h = 1:  K01 = e^-1/2, K02 = e^-9/2, K12 = e^-2
    feats = t64([[0.0], [1.0], [3.0]])
    labels = torch.tensor([0, 0, 1])
    k01, k02, k12 = E(-0.5), E(-4.5), E(-2.0)
    expected = t64([
        [k01 / (k01 + k02), k02 / (k01 + k02)],
        [k01 / (k01 + k12), k12 / (k01 + k12)],
        [1.0, 0.0],  # both neighbours of point 2 are class 0
    ])
    post = loo_kernel_posterior(feats, labels, 2, bandwidth=1.0)
    assert torch.allclose(post, expected, atol=1e-6)
    err = (k02 / (k01 + k02) + k12 / (k01 + k12) + 0.0) / 3
    assert float(bayes_error(feats, labels, 2, bandwidth=1.0)) == pytest.approx(err, abs=1e-6)


def test_median_heuristic_uses_median_pairwise_distance() -> None:
    # pairwise distances 1, 3, 2 -> median h = 2: K01 = e^-1/8, K02 = e^-9/8, K12 = e^-4/8
    feats = t64([[0.0], [1.0], [3.0]])
    labels = torch.tensor([0, 1, 0])
    k01, k02, k12 = E(-1 / 8), E(-9 / 8), E(-4 / 8)
    expected = t64([
        [k02 / (k01 + k02), k01 / (k01 + k02)],
        [(k01 + k12) / (k01 + k12), 0.0],
        [k02 / (k02 + k12), k12 / (k02 + k12)],
    ])
    assert torch.allclose(loo_kernel_posterior(feats, labels, 2), expected, atol=1e-6)
    assert torch.allclose(loo_kernel_posterior(feats, labels, 2), loo_kernel_posterior(feats, labels, 2, 2.0))


def test_three_classes_and_float32_dtype_round_trip() -> None:
    feats = torch.tensor([[0.0], [1.0], [2.0]])
    labels = torch.tensor([0, 1, 2])
    post = loo_kernel_posterior(feats, labels, 3, bandwidth=1.0)
    assert post.dtype == torch.float32
    k1, k4 = E(-0.5), E(-2.0)  # distance 1 and 2 at h = 1
    expected = torch.tensor([
        [0.0, k1 / (k1 + k4), k4 / (k1 + k4)],
        [0.5, 0.0, 0.5],
        [k4 / (k1 + k4), k1 / (k1 + k4), 0.0],
    ])
    assert torch.allclose(post, expected, atol=1e-6)
    assert torch.allclose(post.sum(1), torch.ones(3))


# ----------------------------------------------------------------------------- (c) identical


@pytest.mark.parametrize("n", [1, 2, 50])
def test_identical_points_balanced_classes(n: int) -> None:
    # leave-one-out: n - 1 same-class and n other-class neighbours, all with kernel 1
    feats = torch.zeros(2 * n, 3)
    labels = torch.tensor([0] * n + [1] * n)
    expected = (n - 1) / (2 * n - 1)
    for bandwidth in (None, 1.0):
        assert float(bayes_error(feats, labels, 2, bandwidth)) == pytest.approx(expected, abs=1e-6)
    if n == 50:
        assert expected == pytest.approx(0.5, abs=0.01)


def test_identical_points_many_more_than_half_keep_a_usable_bandwidth() -> None:
    # 6 of the 10 pairs coincide: the median falls back to the non-zero distances (all 5)
    feats = t64([[0.0], [0.0], [0.0], [0.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1, 0])
    assert torch.allclose(loo_kernel_posterior(feats, labels, 2), loo_kernel_posterior(feats, labels, 2, 5.0))


# ----------------------------------------------------------------------------- (d) ascent


def test_one_gradient_ascent_step_on_features_raises_the_error() -> None:
    feats = t64([[0.0, 0.0], [0.5, 0.2], [1.5, 0.1], [2.0, 0.3]]).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1])
    before = bayes_error(feats, labels, 2, bandwidth=1.0)
    (grad,) = torch.autograd.grad(before, feats)
    assert grad.abs().sum() > 0
    after = bayes_error(feats.detach() + 0.05 * grad / grad.norm(), labels, 2, bandwidth=1.0)
    assert float(after) > float(before.detach())


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


# ----------------------------------------------------------------------------- (h) validation


@pytest.mark.parametrize(
    ("features", "labels", "k", "bandwidth", "match"),
    [
        (torch.zeros(3), torch.tensor([0, 1, 0]), 2, None, "features"),
        (torch.zeros(3, 2, dtype=torch.long), torch.tensor([0, 1, 0]), 2, None, "floating"),
        (torch.zeros(1, 2), torch.tensor([0]), 2, None, "at least 2"),
        (torch.zeros(3, 2), torch.tensor([0, 1]), 2, None, "labels"),
        (torch.zeros(3, 2), torch.tensor([0.0, 1.0, 0.0]), 2, None, "integer"),
        (torch.zeros(3, 2), torch.tensor([0, 2, 0]), 2, None, r"\[0, 2\)"),
        (torch.zeros(3, 2), torch.tensor([0, -1, 0]), 2, None, r"\[0, 2\)"),
        (torch.zeros(3, 2), torch.tensor([0, 1, 0]), 0, None, "num_classes"),
        (torch.zeros(3, 2), torch.tensor([0, 1, 0]), 2, 0.0, "bandwidth"),
        (torch.zeros(3, 2), torch.tensor([0, 1, 0]), 2, -1.0, "bandwidth"),
        (torch.zeros(3, 2), torch.tensor([0, 1, 0]), 2, math.nan, "bandwidth"),
        (torch.tensor([[0.0], [math.inf], [1.0]]), torch.tensor([0, 1, 0]), 2, None, "finite"),
    ],
)
def test_bad_estimator_inputs_raise(features, labels, k, bandwidth, match) -> None:
    with pytest.raises(ConfigError, match=match):
        bayes_error(features, labels, k, bandwidth)


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

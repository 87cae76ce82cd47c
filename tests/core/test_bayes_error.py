"""The leave-one-out kernel estimate of the Bayes error: hand-computed posteriors, ascent, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.core.conftest import t64
from ulmed.core.bayes_error import bayes_error, loo_kernel_posterior
from ulmed.errors import ConfigError

torch.set_num_threads(1)
E = math.exp


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

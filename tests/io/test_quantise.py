"""Tests of :mod:`ulmed.io.quantise`: perturbations on the stored grid, never larger than the budget."""

from __future__ import annotations

import numpy as np
import pytest

from ulmed.errors import ConfigError
from ulmed.io.quantise import quantise_perturbation, whole_steps


def test_whole_steps_is_exact_where_floats_are_not() -> None:
    assert float(whole_steps(8 / 255 * 255, 1.0)) == 8  # 8/255*255 is 7.999...; floor would give 7
    n = float(whole_steps(0.3, 0.1))  # 3 * 0.1 is 0.30000000000000004 > 0.3
    assert n == 2 and n * 0.1 <= 0.3 < (n + 1) * 0.1
    assert whole_steps(1.0, np.array([1.0, 0.5, 0.25])).tolist() == [1, 2, 4]
    assert float(whole_steps(-1.0, 1.0)) == 0  # never negative


@pytest.mark.parametrize("step", [1.0, 0.5, 0.3])
def test_quantised_linf_perturbation_never_exceeds_the_budget(step):
    """Round-to-nearest alone would write floor(eps / step) + 1 steps where eps has a large remainder."""
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 200, size=(1, 64, 64)) * step
    eps = 7.7 * step
    delta = rng.uniform(-eps, eps, size=clean.shape)
    q = quantise_perturbation(clean, delta, step, eps=eps, norm="linf")
    assert np.abs(q).max() <= eps and np.abs(q).max() == pytest.approx(7 * step)
    np.testing.assert_allclose(q / step, np.rint(q / step), atol=1e-9)  # whole stored steps
    inside = np.abs(delta) <= 7 * step
    assert np.abs(q - delta)[inside].max() <= step / 2 + 1e-12  # nearest step where the budget allows


def test_quantised_l2_perturbation_keeps_the_norm_and_most_of_it():
    rng = np.random.default_rng(1)
    clean = rng.integers(0, 255, size=(1, 50, 60)).astype(np.float64)
    delta = rng.normal(size=clean.shape)
    eps = float(np.linalg.norm(delta))  # on the sphere: plain rounding exceeds it about half the time
    q = quantise_perturbation(clean, delta, 1.0, eps=eps, norm="l2")
    assert np.linalg.norm(q) <= eps and np.linalg.norm(q) > 0.9 * eps
    assert np.array_equal(q, np.rint(q))


def test_values_stay_inside_the_bounds_by_rounding_toward_zero() -> None:
    clean = np.array([0.0, 10.0, 255.0])
    q = quantise_perturbation(clean, np.array([-0.6, 0.6, 0.6]), 1.0, bounds=(0.0, 255.0))
    assert q.tolist() == [0.0, 1.0, 0.0]  # 0 - 1 and 255 + 1 would leave the range: rounded toward zero
    q = quantise_perturbation(clean, np.array([0.6, -0.6, -0.6]), 1.0, bounds=(0.0, 255.0))
    assert q.tolist() == [1.0, -1.0, -1.0]  # inside: the nearest step
    assert quantise_perturbation(np.zeros(3), np.full(3, 2.6), 1.0).tolist() == [3.0, 3.0, 3.0]  # no budget


def test_float_storage_keeps_the_budget_and_the_dtype() -> None:
    clean = np.linspace(0, 1, 50, dtype=np.float32)
    delta = np.full(50, 0.3)
    q = quantise_perturbation(clean, delta, 0.0, eps=0.1, norm="linf")
    assert np.all(np.abs(q) <= 0.1)  # clipped to the budget, then never larger after float32 rounding
    np.testing.assert_array_equal((clean.astype(np.float64) + q).astype(np.float32).astype(np.float64) - clean, q)
    scaled = quantise_perturbation(np.zeros(4), np.full(4, 3.0), 0.0, eps=1.0, norm="l2")  # float64: kept
    assert np.linalg.norm(scaled) <= 1.0 and np.linalg.norm(scaled) == pytest.approx(1.0)


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="budget norm must be linf or l2, got 'l1'"):
        quantise_perturbation(np.zeros(2), np.zeros(2), 1.0, norm="l1")
    with pytest.raises(ConfigError, match="all be > 0 .* or all 0"):
        quantise_perturbation(np.zeros((2, 1)), np.zeros((2, 1)), np.array([[1.0], [0.0]]))
    with pytest.raises(ValueError):
        quantise_perturbation(np.zeros((2, 3)), np.zeros((2, 3)), np.ones(2))  # steps that do not broadcast


def test_toward_zero_never_moves_a_value_further_than_asked():
    """Under a PSNR floor the changes are rounded toward zero: each stored change is at most the asked one."""
    rng = np.random.default_rng(7)
    clean = rng.integers(0, 255, size=4000).astype(np.float64)
    delta = rng.uniform(-6.0, 6.0, size=4000)
    nearest = quantise_perturbation(clean, delta, 1.0, eps=8.0, bounds=(0.0, 255.0))
    toward = quantise_perturbation(clean, delta, 1.0, eps=8.0, bounds=(0.0, 255.0), toward_zero=True)
    assert np.all(np.abs(toward) <= np.abs(delta)) and np.all(toward == np.round(toward))
    assert np.sum(toward**2) <= np.sum(delta**2) < np.sum(nearest**2) * 1.5
    assert np.any(np.abs(nearest) > np.abs(delta))  # rounding to the nearest step does move some further
    assert np.all(np.abs(toward - nearest) <= 1.0)

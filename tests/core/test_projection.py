"""Property tests of the torch projection helpers used by the PGD loop."""

from __future__ import annotations

import math
from fractions import Fraction

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ulmed.core.projection import clamp_l2, clamp_linf, clamp_valid, l0_mask_topk, topk_count
from ulmed.errors import ConfigError

SETTINGS = settings(max_examples=60, deadline=None)
shapes = st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))


def tensors(shape: tuple[int, ...], lo: float, hi: float) -> st.SearchStrategy[torch.Tensor]:
    floats = st.floats(lo, hi, width=32, allow_nan=False, allow_infinity=False)
    return hnp.arrays(np.float32, shape, elements=floats).map(torch.from_numpy)


@SETTINGS
@given(data=st.data(), shape=shapes, eps=st.floats(0.0, 1.0))
def test_clamp_linf_scalar_bounds_and_keeps_inside(data, shape, eps):
    delta = data.draw(tensors(shape, -2.0, 2.0))
    out = clamp_linf(delta, eps)
    assert (out.abs() <= eps).all()
    inside = delta.abs() <= eps
    assert torch.equal(out[inside], delta[inside])


@SETTINGS
@given(data=st.data(), shape=shapes, per_channel=st.booleans())
def test_clamp_linf_per_position_map(data, shape, per_channel):
    delta = data.draw(tensors(shape, -2.0, 2.0))
    b, c, h, w = shape
    eps = data.draw(tensors((b, c if per_channel else 1, h, w), 0.0, 1.0))
    out = clamp_linf(delta, eps)
    assert out.shape == delta.shape
    assert (out.abs() <= eps).all()
    assert torch.equal(clamp_linf(out, eps), out)  # idempotent


@SETTINGS
@given(data=st.data(), shape=shapes, eps=st.floats(1e-3, 5.0))
def test_clamp_l2_bounds_each_sample(data, shape, eps):
    delta = data.draw(tensors(shape, -2.0, 2.0))
    out = clamp_l2(delta, eps)
    norms = out.double().flatten(1).norm(dim=1)
    assert (norms <= eps).all()
    before = delta.double().flatten(1).norm(dim=1)
    for i in range(shape[0]):
        if before[i] <= eps * (1 - 1e-5):  # inside the ball: unchanged
            assert torch.equal(out[i], delta[i])


def test_clamp_l2_per_sample_radius():
    delta = torch.ones(3, 1, 4, 4)  # norm 4 each
    out = clamp_l2(delta, torch.tensor([1.0, 2.0, 8.0]))
    assert out.flatten(1).norm(dim=1).tolist() == pytest.approx([1.0, 2.0, 4.0], rel=1e-5)
    with pytest.raises(ConfigError):
        clamp_l2(delta, torch.tensor([1.0, 2.0]))


@SETTINGS
@given(data=st.data(), shape=shapes)
def test_clamp_valid_keeps_image_in_range(data, shape):
    x = data.draw(tensors(shape, 0.0, 1.0))
    delta = data.draw(tensors(shape, -1.0, 1.0))
    out = clamp_valid(x, delta)
    adv = x + out
    assert (adv >= 0).all() and (adv <= 1).all()
    ok = ((x + delta) >= 0) & ((x + delta) <= 1)
    assert torch.equal(out[ok], delta.expand_as(out)[ok])
    assert (out.abs() <= delta.abs()).all()  # never grows, so any budget still holds


@SETTINGS
@given(data=st.data(), shape=shapes)
def test_clamp_valid_clips_outside_positions_to_the_bound(data, shape):
    x = data.draw(tensors(shape, 0.0, 1.0))
    delta = data.draw(tensors(shape, -1.0, 1.0))
    adv, out = x + delta, clamp_valid(x, delta)
    for wrong, bound in ((adv > 1, 1.0), (adv < 0, 0.0)):
        # as little as the float grid allows: at the bound, or one step of delta's grid short of it
        assert bool((((x + out)[wrong] - bound).abs() <= 1e-6).all())


def test_clamp_valid_returns_a_new_tensor_in_the_promoted_dtype():
    x = torch.full((2, 3), 0.5, dtype=torch.float64)
    delta = torch.full((1, 3), 0.1, dtype=torch.float32)
    out = clamp_valid(x, delta)  # nothing to clip
    assert out.dtype == torch.float64 and out.shape == (2, 3)
    out[0, 0] = 0.0
    assert float(delta[0, 0]) == pytest.approx(0.1)
    clipped = clamp_valid(x, delta * 6)  # 0.5 + 0.6 leaves [0, 1]
    assert clipped.dtype == torch.float64 and float((x + clipped).max()) <= 1.0


@SETTINGS
@given(data=st.data(), shape=shapes, fraction=st.floats(0.0, 1.0), shared_allowed=st.booleans())
def test_l0_mask_topk_counts_and_stays_allowed(data, shape, fraction, shared_allowed):
    b, c, h, w = shape
    score = data.draw(tensors(shape, 0.0, 1.0))
    allowed = torch.from_numpy(data.draw(hnp.arrays(np.bool_, (1 if shared_allowed else b, 1, h, w))))
    mask = l0_mask_topk(score, fraction, allowed)
    assert mask.shape == (b, 1, h, w) and mask.dtype == torch.bool
    assert not (mask & ~allowed).any()
    n_allowed = allowed.expand(b, 1, h, w).flatten(1).sum(1)
    for i in range(b):
        assert int(mask[i].sum()) == math.ceil(Fraction(fraction) * int(n_allowed[i]))
        kept, pos = score[i].sum(0)[mask[i, 0]], score[i].sum(0)[(allowed.expand(b, 1, h, w)[i, 0]) & ~mask[i, 0]]
        if kept.numel() and pos.numel():
            assert kept.min() >= pos.max()  # really the top positions


def test_l0_mask_topk_without_allowed_and_ties():
    score = torch.zeros(2, 3, 4, 5)
    mask = l0_mask_topk(score, 0.25)
    assert mask.flatten(1).sum(1).tolist() == [5, 5]
    # equal scores: the lowest flat indices win, the same way every time
    assert mask.flatten(1)[:, :5].all() and not mask.flatten(1)[:, 5:].any()
    assert torch.equal(mask, l0_mask_topk(score, 0.25))
    assert topk_count(0.7, 10) == 7 and topk_count(0.71, 10) == 8 and topk_count(1.0, 3) == 3
    with pytest.raises(ConfigError):
        l0_mask_topk(score, 1.5)

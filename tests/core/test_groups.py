"""Groups of records: grouping, padding or tiling with their budgets, class budgets, the noise store."""

import numpy as np
import pytest
import torch

from ulmed.core.groups import (
    NoiseStore,
    RealPositions,
    build_group,
    classwise_eps,
    group_records,
    tile_radii,
    tile_shape,
)
from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping, Record


def _record(key: str, shape: tuple[int, ...], target=None, channels: int = 1) -> Record:
    image = np.arange(np.prod(shape) * channels).reshape(channels, *shape) % 256
    return Record(key, image.astype(np.uint8), IntensityMapping(0, 255, 0, 255, 1), len(shape), "image", target=target)


def test_records_group_by_dims_and_channels_in_input_order():
    recs = [_record("a", (4, 4)), _record("b", (4, 4), channels=3), _record("c", (6, 5))]
    assert [(k, [r.key for r in rs]) for k, rs in group_records(recs)] == [((2, 1), ["a", "c"]), ((2, 3), ["b"])]


def test_padded_group_has_zero_budget_on_padding_and_the_store_crops_back():
    recs = [_record("a", (5, 7), np.ones((5, 7), int)), _record("b", (8, 6), np.zeros((8, 6), int))]
    group = build_group(recs, [0.1, 0.2], "linf", None, 3)
    assert group.images.shape == (2, 1, 8, 8) and group.targets.shape == (2, 1, 8, 8)
    assert group.eps[0].max() == pytest.approx(0.1) and group.eps[0, 0, 5:, :].abs().sum() == 0
    assert torch.equal(group.valid[0, 0, :5, :7], torch.ones(5, 7, dtype=torch.bool))
    store = NoiseStore()
    store.store(group, np.ones((2, 1, 8, 8), dtype=np.float32), None)
    assert store["a"].shape == (1, 5, 7) and store["b"].shape == (1, 8, 6) and "c" not in store


def test_tiles_share_an_l2_ball_and_untile_exactly():
    rec = _record("a", (8, 12), np.zeros((8, 12), int))
    group = build_group([rec], [0.5], "l2", 4, 3)
    assert group.images.shape == (6, 1, 4, 4) and group.eps.shape == (6,)
    assert float((group.eps**2).sum()) == pytest.approx(0.25)
    noise = np.random.default_rng(0).normal(size=(6, 1, 4, 4)).astype(np.float32)
    store = NoiseStore()
    store.store(group, noise, None)
    assert np.array_equal(store["a"][:, :4, :4], noise[0])


def test_tile_helpers_and_class_budgets():
    assert tile_shape(None, 2) is None and tile_shape(8, 3) == (8, 8, 8)
    with pytest.raises(ConfigError, match="multiple of 4"):
        tile_shape((8, 6), 2)
    assert tile_radii(0.3, np.ones((3, 1, 2, 2), bool), "linf") == [0.3] * 3
    recs = [_record("a", (4, 4), 0), _record("b", (4, 4), 1)]
    group = build_group(recs, [0.1, 0.05], "linf", None, 3)
    budgets = classwise_eps(group, torch.tensor([0, 1]))
    assert budgets.shape == (2, 1, 1, 1) and torch.all(budgets == 0.05)


def test_real_positions_freeze_padding_only():
    valid = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    valid[0, :, :2] = True
    mask, select = RealPositions(valid)(torch.tensor([0]), torch.zeros(1, 1, 4, 4))
    assert select is None and torch.equal(mask, valid[:1])

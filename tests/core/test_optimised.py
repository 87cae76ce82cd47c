"""OptimisedMethod: options shown as keyword parameters, one loop config per group, fit and serve."""

import inspect

import numpy as np
import pytest
import torch

from ulmed.baselines import ErrorMinimising
from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping, Record

TINY = dict(rounds=1, train_steps=1, pgd_steps=1, batch_size=2, device="cpu")


def _records(n: int = 2, size: int = 8) -> list[Record]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        mask = np.zeros((size, size), dtype=np.uint8)
        mask[2:6, 2:6] = 1
        image = rng.integers(0, 256, size=(1, size, size)).astype(np.uint8)
        out.append(Record(f"r{i}.png", image, IntensityMapping(0, 255, 0, 255, 1), 2, "image", target=mask))
    return out


def test_the_constructor_shows_every_option_as_a_keyword_parameter():
    params = inspect.signature(ErrorMinimising.__init__).parameters
    assert list(params)[:4] == ["self", "budget", "seed", "device"]
    assert params["rounds"].default == 10 and params["rounds"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "init" not in params and "options" not in params
    with pytest.raises(TypeError):
        ErrorMinimising("8/255", init="lsp")
    with pytest.raises(ConfigError, match="rounds"):
        ErrorMinimising("8/255", rounds=0)


def test_fit_serves_noise_within_the_budget_and_the_loop_config_is_built_once_per_group():
    records = _records()
    m = ErrorMinimising("8/255", seed=0, **TINY)
    m.fit(records)
    for rec in records:
        d = m.perturbation(rec, rec.unit_image(), 8 / 255)
        assert d.shape == rec.image.shape and np.abs(d).max() <= 8 / 255 + 1e-7 and np.abs(d).max() > 0
    assert [h["round"] for h in m.history["2d-1ch"]] == [0] and m.state_dict()["fits"] == 1
    from ulmed.core.groups import build_group
    from ulmed.core.tasks import Task

    group = build_group(records, [8 / 255] * 2, "linf", None, 3)
    config = m.loop_config(group, Task.SEGMENTATION, torch.device("cpu"))
    assert config.eps == pytest.approx(8 / 255) and config.step_size == float(group.eps.max()) / 5
    assert config.stop_threshold == 0.9 and config.seed == 7919  # the second chunk's seed
    with pytest.raises(ConfigError, match="fit"):
        m.perturbation(_records(3)[2], records[0].unit_image(), 8 / 255)


def test_noise_in_cells_is_one_value_per_cell_away_from_the_valid_range():
    records = _records(size=16)
    m = ErrorMinimising("8/255", seed=0, cell=4, **{**TINY, "pgd_steps": 3})
    m.fit(records)
    from ulmed.core.tasks import Task

    assert m.loop_config(_group(records), Task.SEGMENTATION, torch.device("cpu")).cell == 4 and m.params()["cell"] == 4
    for rec in records:
        d = m.perturbation(rec, rec.unit_image(), 8 / 255)[0]
        x = rec.unit_image()[0]
        cells = d.reshape(4, 4, 4, 4).swapaxes(1, 2).reshape(16, 16)
        clear = ((x + d > 0) & (x + d < 1)).reshape(4, 4, 4, 4).swapaxes(1, 2).reshape(16, 16).all(1)
        assert np.abs(d).max() > 0 and clear.sum() >= 8
        assert np.ptp(cells[clear], axis=1).max() < 1e-7  # every cell the range clamp left alone is one value


def _group(records: list[Record]):
    from ulmed.core.groups import build_group

    return build_group(records, [8 / 255] * len(records), "linf", None, 3)


def test_classwise_noise_needs_class_labels():
    m = ErrorMinimising("8/255", classwise=True, **TINY)
    with pytest.raises(ConfigError, match="class labels"):
        m.fit(_records())

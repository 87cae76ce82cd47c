"""ARMOR-style selection: gradient alignment, per-class choice, per-class augmentation, and the em options."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ulmed.baselines import ErrorMinimising
from ulmed.core.augment import AugmentPolicy, DifferentiableAugment
from ulmed.core.selection import (
    ALL,
    ClasswiseAugment,
    SelectionConfig,
    gradient_alignment,
    select_policies,
)
from ulmed.errors import ConfigError

FAST = dict(rounds=2, train_steps=4, pgd_steps=3, batch_size=8, device="cpu")


def linear_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2))


def test_alignment_is_one_for_a_transformation_that_changes_nothing_the_loss_sees():
    model = linear_model()
    x = torch.rand(6, 1, 8, 8)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    loss = torch.nn.CrossEntropyLoss()
    # contrast 1 +- 1e-9 is the identity up to float rounding
    same = DifferentiableAugment(AugmentPolicy(contrast=1e-9, p=1.0), 2)
    assert gradient_alignment(model, loss, x, y, same) == pytest.approx(1.0, abs=1e-5)
    # a strong transformation turns the gradient away
    strong = DifferentiableAugment(AugmentPolicy(flips=True, rot90=True, noise=0.5, p=1.0), 2)
    torch.manual_seed(1)
    assert gradient_alignment(model, loss, x, y, strong) < 0.99
    assert all(p.grad is None for p in model.parameters())  # the model's .grad untouched


def test_selection_picks_the_best_aligned_candidate_per_class():
    model = linear_model()
    x = torch.rand(8, 1, 8, 8)
    y = torch.tensor([0, 1] * 4)
    candidates = {"mild": AugmentPolicy(brightness=0.01, p=1.0), "wild": AugmentPolicy(noise=0.8, flips=True, p=1.0)}
    config = SelectionConfig(candidates=candidates)
    choice, scores = select_policies(model, torch.nn.CrossEntropyLoss(), x, y, 2, 2, class_ids=y, config=config)
    assert set(choice) == {0, 1} and all(v == "mild" for v in choice.values())
    assert all(scores[c]["mild"] > scores[c]["wild"] for c in (0, 1))
    one, _ = select_policies(model, torch.nn.CrossEntropyLoss(), x, y, 2, 2, config=config)
    assert set(one) == {ALL}
    with pytest.raises(ConfigError, match="candidate"):
        SelectionConfig(candidates={})
    with pytest.raises(ConfigError, match="per_class"):
        SelectionConfig(per_class=0)


def test_classwise_augment_applies_each_class_its_own_policy():
    x = torch.full((4, 1, 8, 8), 0.5)
    y = torch.tensor([0, 1, 0, 1])
    aug = ClasswiseAugment({0: DifferentiableAugment(AugmentPolicy(brightness=0.3, p=1.0), 2),
                            1: DifferentiableAugment(AugmentPolicy(flips=True, p=1.0), 2)})
    torch.manual_seed(0)
    out, labels = aug(x, y)
    assert torch.equal(labels, y)
    assert torch.equal(out[1], x[1]) and torch.equal(out[3], x[3])  # flips leave a constant image alone
    assert not torch.equal(out[0], x[0]) or not torch.equal(out[2], x[2])
    masks = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    with pytest.raises(ConfigError, match="key -1"):
        aug(x[:2], masks)


@pytest.fixture(scope="module")
def hc18_records(hc18_train_records):
    return hc18_train_records(32)


@pytest.mark.parametrize("options", [{"augment": "armor"}, {"augment": "standard", "eot_samples": 2},
                                     {"objective": "bayes"}, {"step_schedule": "dynamic"}])
def test_robust_em_options_keep_the_budget_and_are_deterministic(hc18_records, options):
    first = ErrorMinimising("8/255", seed=0, **FAST, **options)
    first.fit(hc18_records)
    second = ErrorMinimising("8/255", seed=0, **FAST, **options)
    second.fit(hc18_records)
    for rec in hc18_records:
        a, b = first.protect(rec).image, second.protect(rec).image
        assert np.array_equal(a, b)
        assert np.abs(a.astype(np.float64) - rec.image).max() <= 8 + 1e-6
    if options.get("augment") == "armor":
        choice = first.selected["2d-1ch"]["choice"]
        assert list(choice) == ["-1"] and choice["-1"] in first.selected["2d-1ch"]["alignment"]["-1"]
        assert first.params()["augment"] == "armor" and first.fit_report()["augment_choice"] == first.selected
    plain = ErrorMinimising("8/255", seed=0, **FAST)
    plain.fit(hc18_records)
    assert not np.array_equal(plain.protect(hc18_records[0]).image, first.protect(hc18_records[0]).image)


def test_robust_options_validate():
    for bad in ({"objective": "max"}, {"augment": "strong"}, {"step_schedule": "cyclic"}, {"bayes_per_class": 0},
                {"eot_samples": 0}):
        with pytest.raises(ConfigError):
            ErrorMinimising("8/255", **bad)

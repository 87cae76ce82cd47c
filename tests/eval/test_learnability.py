"""SAL per layer and the Unlearnable Distance on cases computable by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ulmed.errors import ConfigError
from ulmed.eval.learnability import sal_per_layer, unlearnable_distance, weight_layers


def _regression() -> tuple[nn.Linear, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Linear(2, 1), w = (1, 2), one sample x = (3, -1), y = 0.5: residual w.x - y = 0.5."""
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 2.0]], dtype=torch.float64))
    return model, [(torch.tensor([[3.0, -1.0]], dtype=torch.float64), torch.tensor([[0.5]], dtype=torch.float64))]


def _sal_by_hand(gamma: float) -> float:
    # L(w) = (w.x - y)^2 = 0.25; g = 2 * 0.5 * x = (3, -1), ||g|| = sqrt(10); ||w|| = sqrt(5).
    # e = gamma ||w|| g / ||g||, so e.x = gamma sqrt(5) * 10 / sqrt(10) = gamma sqrt(50).
    return (0.5 + gamma * math.sqrt(50.0)) ** 2 - 0.25


class ZeroBranch(nn.Module):
    """out = b(x) + 0 * a(x): no perturbation of a's weight can change the output."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(3, 2)
        self.b = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(x) + 0.0 * self.a(x)


def test_first_order_step_matches_hand_computation():
    model, batches = _regression()
    (row,) = sal_per_layer(model, nn.MSELoss(), batches, gamma=0.05)
    assert row["layer"] == "" and row["loss"] == pytest.approx(0.25, abs=1e-12)
    assert row["sal"] == pytest.approx(_sal_by_hand(0.05), abs=1e-6)
    # the first-order step is the exact maximiser here, so more steps find the same value
    (more,) = sal_per_layer(model, nn.MSELoss(), batches, gamma=0.05, steps=3)
    assert more["sal"] == pytest.approx(_sal_by_hand(0.05), abs=1e-6)
    (wide,) = sal_per_layer(model, nn.MSELoss(), batches, gamma=0.2)
    assert wide["sal"] == pytest.approx(_sal_by_hand(0.2), abs=1e-6)


def test_layer_that_cannot_change_the_loss_has_zero_sal():
    model = ZeroBranch()
    torch.manual_seed(1)
    batches = [(torch.randn(4, 3), torch.randn(4, 2)) for _ in range(2)]
    rows = sal_per_layer(model, nn.MSELoss(), batches, steps=2)
    assert [r["layer"] for r in rows] == ["a", "b"]
    assert rows[0]["sal"] == 0.0
    assert rows[1]["sal"] > 0
    assert rows[0]["loss"] == rows[1]["loss"] > 0


def test_weights_mode_and_flags_are_restored_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    model.train()
    model[0].bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.rand(2, 1, 4, 4), torch.tensor([0, 2]))]
    rows = sal_per_layer(model, nn.CrossEntropyLoss(), batches, steps=2)
    assert [r["layer"] for r in rows] == ["0", "4"]  # BatchNorm's 1-D weight is not a layer here
    assert [name for name, _ in weight_layers(model)] == ["0", "4"]
    assert all(r["sal"] >= 0 for r in rows)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "weights or BatchNorm statistics changed"
    assert model.training
    assert [p.requires_grad for p in model.parameters()] == [True, False, True, True, True, True]
    assert all(p.grad is None for p in model.parameters())


def test_sal_rejects_bad_arguments():
    model, batches = _regression()
    with pytest.raises(ConfigError, match="gamma"):
        sal_per_layer(model, nn.MSELoss(), batches, gamma=0)
    with pytest.raises(ConfigError, match="steps"):
        sal_per_layer(model, nn.MSELoss(), batches, steps=0)
    with pytest.raises(ConfigError, match="no batches"):
        sal_per_layer(model, nn.MSELoss(), [])
    with pytest.raises(ConfigError, match="no layer"):
        sal_per_layer(nn.ReLU(), nn.MSELoss(), batches)


def _sal(values: list[float], names: str = "abcd") -> list[dict]:
    return [{"layer": n, "sal": v} for n, v in zip(names, values)]


def test_unlearnable_distance_by_hand():
    ud = unlearnable_distance(_sal([1, 2, 3, 4]), _sal([0.1, 0.2, 3.5, 5]))
    assert ud["threshold"] == 2.5 and ud["n_clean"] == 2 and ud["n_protected"] == 2 and ud["ud"] == 1.0
    half = unlearnable_distance(_sal([1, 2, 3, 4]), _sal([0.1, 0.2, 3.5, 1.0]))
    assert half["n_protected"] == 1 and half["ud"] == 0.5
    assert half["layers"][2] == {"layer": "c", "sal_clean": 3.0, "sal_protected": 3.5}
    # quantile 0.25 of (1, 2, 3, 4) is 1.75: clean has 3 above, the protected model 4
    more = unlearnable_distance(_sal([1, 2, 3, 4]), _sal([2, 2, 2, 2]), quantile=0.25)
    assert more["threshold"] == 1.75 and more["n_clean"] == 3 and more["ud"] == pytest.approx(4 / 3)


def test_unlearnable_distance_validates():
    with pytest.raises(ConfigError, match="different layers"):
        unlearnable_distance(_sal([1, 2, 3, 4]), _sal([1, 2, 3, 4], names="abdc"))
    with pytest.raises(ConfigError, match="different layers"):
        unlearnable_distance(_sal([1, 2, 3, 4]), _sal([1, 2, 3]))
    with pytest.raises(ConfigError, match="empty"):
        unlearnable_distance([], [])
    with pytest.raises(ConfigError, match="quantile"):
        unlearnable_distance(_sal([1, 2]), _sal([1, 2]), quantile=1.0)
    with pytest.raises(ConfigError, match="all equal"):
        unlearnable_distance(_sal([1, 1, 1]), _sal([2, 2, 2]))
    with pytest.raises(ConfigError, match="finite"):
        unlearnable_distance(_sal([1, float("nan")]), _sal([1, 2]))

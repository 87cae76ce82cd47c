"""The one training loop (ulmed/core/training.py): steps, laziness, loss scaling, precision."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from ulmed.core.training import Precision, optimiser_step, train_steps


def _model_and_data(seed: int = 0) -> tuple[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    batches = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(3)]
    return model, batches


def _mse(model: nn.Module):
    return lambda batch: nn.functional.mse_loss(model(batch[0]), batch[1])


def test_one_step_per_batch_yields_the_loss_before_each_step():
    model, batches = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for batch, loss in train_steps(opt, batches, _mse(model)):
        with torch.no_grad():
            after = float(nn.functional.mse_loss(model(batch[0]), batch[1]))
        losses.append(loss)
        assert after < loss  # the step went down hill on this batch
    assert len(losses) == len(batches)


def test_same_weights_as_a_hand_written_loop_and_a_disabled_scaler_changes_nothing():
    model, batches = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in train_steps(opt, batches, _mse(model), scaler=torch.amp.GradScaler("cpu", enabled=False)):
        pass
    ref, _ = _model_and_data()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        ref_opt.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        ref_opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)


def test_batches_are_drawn_lazily_one_per_step():
    model, batches = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    drawn = []

    def stream():
        for b in itertools.cycle(batches):
            drawn.append(b)
            yield b

    steps = train_steps(opt, itertools.islice(stream(), 2), _mse(model))
    assert drawn == []  # nothing before the first step is asked for
    next(steps)
    assert len(drawn) == 1
    assert len(list(steps)) == 1 and len(drawn) == 2


def test_optimiser_step_clears_old_gradients():
    model, batches = _model_and_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    loss_of = _mse(model)
    loss_of(batches[0]).backward()  # a stale gradient
    optimiser_step(opt, loss_of(batches[1]))
    expected = torch.autograd.grad(loss_of(batches[1]), model.weight)[0]
    assert torch.allclose(model.weight.grad, expected)


def test_precision_is_full_off_cuda_and_scales_only_float16_on_cuda():
    off = Precision.cuda_only(torch.device("cpu"), amp=True)
    assert not off.enabled and not off.scales_loss and not off.scaler().is_enabled()
    with off.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    cpu_amp = Precision("cpu", True)
    with cpu_amp.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert not cpu_amp.scales_loss
    assert Precision("cuda", True).scales_loss and Precision("cuda", True, torch.float16).scales_loss
    assert not Precision("cuda", True, torch.bfloat16).scales_loss

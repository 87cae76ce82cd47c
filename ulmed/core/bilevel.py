"""The bilevel min-min loop of error-minimising noise (Huang et al., ICLR 2021).

Each round trains the surrogate for M steps on the perturbed data (the noise held fixed),
then runs N PGD steps that *minimise* the surrogate's loss in the noise (the surrogate
held fixed), then measures the surrogate on the perturbed data. The loop stops when that
metric (accuracy, Dice) reaches a threshold or after ``max_rounds``. Noise is sample-wise
(one perturbation per image) or class-wise (one per class id, added by indexing).

Everything that differs between methods is injected: the loss, the metric, the settings
(:class:`MinMinConfig`), the hooks (:class:`MinMinHooks`: a per-position budget map, the
positions allowed to move, the objective of the PGD steps, default the training loss) and the
trainer's expected augmentation (``augment``): with it, every training step, PGD step and
evaluation sees ``T(x + delta)`` for a fresh random ``T`` (expectation over
transformations, ``eot_samples`` draws averaged per PGD step; see :mod:`ulmed.core.augment`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ulmed.core.bilevel_config import (
    AugmentFn,
    MetricFn,
    MinMinConfig,
    MinMinHooks,
    Objective,
    PositionPolicy,
    TrainLoss,
)
from ulmed.core.pgd import LOOP_STEP_DIVISOR, GradFn, PGDConfig, default_step, perturb, step_schedule
from ulmed.core.training import Precision, train_steps
from ulmed.errors import ConfigError

__all__ = ["AugmentFn", "MetricFn", "MinMinConfig", "MinMinHooks", "Objective", "PositionPolicy", "TrainLoss",
           "min_min"]

def _batches(generator: torch.Generator, n: int, size: int) -> Iterator[torch.Tensor]:
    """Endless shuffled mini-batches: one permutation per epoch, drawn from ``generator``."""
    while True:
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, size):
            yield perm[start : start + size]


def _rows(t: torch.Tensor, n: int, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` when ``t`` has one row per item (n > 1), else ``t`` shared by all."""
    if t.dim() == 0 or t.shape[0] != n or n == 1:
        return t
    return t[idx.to(t.device)]


@dataclass
class _Setup:
    surrogate: nn.Module
    images: torch.Tensor
    targets: torch.Tensor
    classes: torch.Tensor | None
    device: torch.device
    precision: Precision
    augment: AugmentFn | None = None
    objective: Objective | None = None
    eot_samples: int = 1

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        return self.precision.autocast()

    def batch(self, idx: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Clean images, targets and the noise of the items ``idx``, on the device."""
        x = self.images[idx].to(self.device)
        y = self.targets[idx].to(self.device)
        rows = idx if self.classes is None else self.classes[idx]
        return x, y, delta[rows.to(delta.device)].to(self.device)

    def view(self, x_adv: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What a trainer's model sees: ``x_adv`` (and ``y``) after one random augmentation."""
        return (x_adv, y) if self.augment is None else self.augment(x_adv, y)

    def loss(self, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: TrainLoss) -> torch.Tensor:
        """The training loss on one augmented view of ``x_adv``."""
        xa, ya = self.view(x_adv, y)
        with self.autocast():
            out = self.surrogate(xa)
        return loss_fn(out.float(), ya)

    def pgd_loss(self, x_adv: torch.Tensor, y: torch.Tensor, loss_fn: TrainLoss) -> torch.Tensor:
        """What PGD minimises: the objective (or training loss), averaged over EOT draws."""
        draws = self.eot_samples if self.augment is not None else 1
        total = x_adv.new_zeros(())
        for _ in range(draws):
            if self.objective is None:
                total = total + self.loss(x_adv, y, loss_fn)
                continue
            xa, ya = self.view(x_adv, y)
            with self.autocast():
                total = total + self.objective(self.surrogate, xa, ya).float()
        return total / draws


def _train(
    s: _Setup,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    stream: Iterator[torch.Tensor],
    delta: torch.Tensor,
    loss_fn: TrainLoss,
    steps: int,
) -> float:
    """M surrogate steps (:func:`ulmed.core.training.train_steps`) on the perturbed batches of ``stream``."""

    def perturbed_loss(idx: torch.Tensor) -> torch.Tensor:
        x, y, d = s.batch(idx, delta)
        return s.loss((x + d).clamp(0.0, 1.0), y, loss_fn)

    s.surrogate.train()
    steps_run = train_steps(optimizer, itertools.islice(stream, steps), perturbed_loss, scaler=scaler)
    losses = [loss for _, loss in steps_run]
    return sum(losses) / len(losses) if losses else math.nan


@torch.no_grad()
def _evaluate(
    s: _Setup, delta: torch.Tensor, loss_fn: TrainLoss, metric_fn: MetricFn, batch_size: int
) -> tuple[float, float]:
    s.surrogate.eval()
    n = s.images.shape[0]
    total_loss = total_metric = 0.0
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        x, y, d = s.batch(idx, delta)
        xa, ya = s.view((x + d).clamp(0.0, 1.0), y)
        with s.autocast():
            out = s.surrogate(xa).float()
        y = ya
        total_loss += float(loss_fn(out, y)) * len(idx)
        total_metric += float(metric_fn(out, y)) * len(idx)
    return total_loss / n, total_metric / n


def _classwise_grad(s: _Setup, loss_fn: TrainLoss, batch_size: int) -> GradFn:
    """Gradient for class-wise noise: per class, the mean over that class's samples."""
    if s.classes is None:
        raise ConfigError("class-wise gradients need class ids")
    classes = s.classes
    n_classes_seen = torch.bincount(classes)

    def grad(_x: torch.Tensor | None, d_cls: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(d_cls)
        n = s.images.shape[0]
        for start in range(0, n, batch_size):
            idx = torch.arange(start, min(start + batch_size, n))
            x = s.images[idx].to(s.device)
            y = s.targets[idx].to(s.device)
            d = d_cls.detach().requires_grad_(True)
            loss = s.pgd_loss((x + d[classes[idx].to(s.device)]).clamp(0.0, 1.0), y, loss_fn) * len(idx)
            total += torch.autograd.grad(loss, d)[0]
        counts = torch.zeros(d_cls.shape[0], device=d_cls.device)
        counts[: n_classes_seen.numel()] = n_classes_seen.to(d_cls.device, torch.float32)
        return total / counts.clamp_min(1).view(-1, *([1] * (d_cls.dim() - 1)))

    return grad


def _pgd_round(
    s: _Setup,
    delta: torch.Tensor,
    loss_fn: TrainLoss,
    config: MinMinConfig,
    step: float,
    eps: float | torch.Tensor,
    policy: PositionPolicy | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """N minimising PGD steps on every noise row, one batch of the data set at a time."""

    def run(
        x: torch.Tensor | None,
        d: torch.Tensor,
        loss: Callable[[torch.Tensor], torch.Tensor] | None,
        grad_fn: GradFn | None,
        e: float | torch.Tensor,
        idx: torch.Tensor,
    ) -> torch.Tensor:
        mask, select = policy(idx, x) if policy is not None else (None, None)
        e = e.to(s.device) if isinstance(e, torch.Tensor) else e
        pgd = PGDConfig(e, step_schedule(config.step_schedule, step, config.pgd_steps), config.pgd_steps,
                        minimize=True, norm=config.norm, random_start=config.random_start, cell=config.cell)
        return perturb(x, d, loss, pgd, position_mask=mask, select_positions=select, generator=generator,
                       grad_fn=grad_fn)

    if s.classes is not None:
        grad_fn = _classwise_grad(s, loss_fn, config.batch_size)
        d = run(None, delta.to(s.device), None, grad_fn, eps, torch.arange(delta.shape[0]))
        return d.to(delta.device, delta.dtype)
    n = s.images.shape[0]
    delta = delta.clone()
    for begin in range(0, n, config.batch_size):
        idx = torch.arange(begin, min(begin + config.batch_size, n))
        x, y, d = s.batch(idx, delta)
        e = _rows(eps, n, idx) if isinstance(eps, torch.Tensor) else eps

        def loss(x_adv: torch.Tensor, y: torch.Tensor = y) -> torch.Tensor:
            return s.pgd_loss(x_adv, y, loss_fn)

        delta[idx.to(delta.device)] = run(x, d, loss, None, e, idx).to(delta.device, delta.dtype)
    return delta


def _start_noise(
    images: torch.Tensor, targets: torch.Tensor, delta: torch.Tensor | None, classwise: bool,
    class_ids: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The class id per image (class-wise noise; else None) and a checked copy of the initial noise."""
    n = images.shape[0]
    if targets.shape[0] != n:
        raise ConfigError(f"{n} images but {targets.shape[0]} targets")
    classes = None
    rows = n
    if classwise:
        classes = (targets if class_ids is None else class_ids).to("cpu")
        if classes.shape != (n,) or classes.dtype.is_floating_point or (n and int(classes.min()) < 0):
            raise ConfigError("class-wise noise needs one non-negative integer class id per image (class_ids)")
        rows = int(classes.max()) + 1 if delta is None else delta.shape[0]
        if int(classes.max()) >= rows:
            raise ConfigError(f"class id {int(classes.max())} has no noise row; delta has {rows} rows")
    if delta is None:
        delta = torch.zeros((rows, *images.shape[1:]), dtype=images.dtype, device=images.device)
    if tuple(delta.shape) != (rows, *images.shape[1:]):
        raise ConfigError(f"delta must have shape {(rows, *images.shape[1:])}, got {tuple(delta.shape)}")
    return classes, delta.detach().clone()


def _rounds(
    s: _Setup, optimizer: torch.optim.Optimizer, delta: torch.Tensor, loss_fn: TrainLoss, metric_fn: MetricFn,
    config: MinMinConfig, hooks: MinMinHooks,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """The rounds of the loop (train M steps, N PGD steps, measure) until the metric reaches the threshold."""
    eps: float | torch.Tensor = config.eps if hooks.eps_map is None else hooks.eps_map
    largest = float(eps.max()) if isinstance(eps, torch.Tensor) else float(eps)
    step = config.step_size or default_step(largest, LOOP_STEP_DIVISOR)
    scaler = s.precision.scaler()
    stream = _batches(torch.Generator().manual_seed(config.seed), s.images.shape[0], config.batch_size)
    start_gen = torch.Generator(device=s.device).manual_seed(config.seed + 1)
    history: list[dict[str, float]] = []
    for r in range(config.max_rounds):
        train_loss = _train(s, optimizer, scaler, stream, delta, loss_fn, config.train_steps)
        s.surrogate.eval()
        delta = _pgd_round(s, delta, loss_fn, config, step, eps, hooks.position_policy, start_gen)
        loss, metric = _evaluate(s, delta, loss_fn, metric_fn, config.batch_size)
        entry = {"round": r, "train_loss": train_loss, "loss": loss, "metric": metric,
                 "mean_abs_delta": float(delta.abs().mean())}
        history.append(entry)
        if hooks.progress is not None:
            hooks.progress(entry)
        if metric >= config.stop_threshold:
            break
    return delta, history


def min_min(
    surrogate: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    images: torch.Tensor,
    targets: torch.Tensor,
    delta: torch.Tensor | None,
    loss_fn: TrainLoss,
    metric_fn: MetricFn,
    config: MinMinConfig,
    *,
    hooks: MinMinHooks | None = None,
    augment: AugmentFn | None = None,
) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """Optimise error-minimising noise against a surrogate trained alongside it.

    Args:
        surrogate: The model; moved to ``config.device`` and trained in place.
        optimizer: Optimiser over the surrogate's parameters; None builds SGD with
            ``config.lr`` and momentum 0.9.
        images: Clean data ``(N, C, *spatial)`` in [0, 1]; stays where it is (e.g. on the
            CPU) and moves to the device one batch at a time.
        targets: ``(N,)`` class labels or ``(N, ...)`` masks, whatever ``loss_fn`` takes.
        delta: Initial noise, ``(N, C, *spatial)`` sample-wise or ``(K, C, *spatial)``
            class-wise (``config.classwise``); None starts from zeros.
        loss_fn: ``(output, target) -> scalar`` batch-mean loss, for training and PGD.
        metric_fn: ``(output, target) -> float`` batch-mean metric, higher is better.
        config: Loop settings (:class:`MinMinConfig`).
        hooks: Budget map, position policy, class ids, PGD objective, progress callback
            (:class:`MinMinHooks`).
        augment: The trainer's expected augmentation (e.g. a
            :class:`ulmed.core.augment.DifferentiableAugment`): training, PGD and evaluation
            all see augmented views (expectation over transformations).

    Returns:
        The final noise (detached, on ``images``' device) and the history: one dict per
        round with ``round``, ``train_loss`` (mean over the M steps), ``loss`` and
        ``metric`` (the surrogate on the perturbed data) and ``mean_abs_delta``.

    Raises:
        ConfigError: Shapes or class ids do not fit.
    """
    hooks = MinMinHooks() if hooks is None else hooks
    dev = config.torch_device()
    classes, delta = _start_noise(images, targets, delta, config.classwise, hooks.class_ids)
    surrogate.to(dev)
    if optimizer is None:
        optimizer = torch.optim.SGD(surrogate.parameters(), lr=config.lr, momentum=0.9)
    s = _Setup(surrogate, images, targets, classes, dev, Precision.cuda_only(dev, config.amp), augment, hooks.objective,
               config.eot_samples)
    was_training = surrogate.training
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        delta, history = _rounds(s, optimizer, delta, loss_fn, metric_fn, config, hooks)
    surrogate.train(was_training)
    return delta, history

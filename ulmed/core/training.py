"""The one training loop: optimiser steps over batches a caller supplies, with mixed precision.

Every model ulmed trains goes through :func:`train_steps`: the min-min surrogate
(:mod:`ulmed.core.bilevel`, which trains on perturbed inputs), the victims of an evaluation
(:mod:`ulmed.eval.train`) and the three stages of the UnSeg generator
(:mod:`ulmed.segmentation.train`). What differs between them is injected: the batches (an
iterable the loop draws from lazily, one batch per step, so random draws keep their order)
and ``loss_of(batch)``, the loss of one batch (the forward pass, under
:meth:`Precision.autocast` where the caller wants mixed precision). The loop yields each batch
with its loss after the step, so a caller can count, weight or log what it needs.

One step is: ``loss = loss_of(batch)``, ``optimizer.zero_grad(set_to_none=True)``, then
``loss.backward()`` and ``optimizer.step()`` -- through a :class:`torch.amp.GradScaler` when
one is given (float16 autocast on CUDA needs loss scaling; a disabled scaler is a plain step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

B = TypeVar("B")


@dataclass(frozen=True)
class Precision:
    """Mixed precision of a training loop: autocast around forward passes, loss scaling.

    Args:
        device_type: ``"cuda"``, ``"cpu"``, ``"mps"`` (what :func:`torch.autocast` takes).
        enabled: Autocast on; off, :meth:`autocast` is a no-op and no loss is scaled.
        dtype: Autocast dtype; None = autocast's default for the device (float16 on CUDA,
            bfloat16 on the CPU).
    """

    device_type: str = "cpu"
    enabled: bool = False
    dtype: torch.dtype | None = None

    @classmethod
    def cuda_only(cls, device: torch.device, amp: bool) -> Precision:
        """Autocast on CUDA only: bfloat16 where the GPU supports it, else float16 (scaled).

        Args:
            device: Where the model runs; on any other device than CUDA, precision is full.
            amp: Whether mixed precision is wanted at all.
        """
        if not (amp and device.type == "cuda"):
            return cls(device.type)
        return cls("cuda", True, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)

    @property
    def scales_loss(self) -> bool:
        """True when gradients need loss scaling: float16 autocast on CUDA."""
        return self.enabled and self.device_type == "cuda" and self.dtype in (None, torch.float16)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The context for forward passes: :func:`torch.autocast`, or nothing when off."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled only when :attr:`scales_loss`."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scales_loss)


def optimiser_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor,
                   scaler: torch.amp.GradScaler | None = None) -> None:
    """Zero the gradients, back-propagate ``loss`` and step ``optimizer`` (scaled when given a scaler)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def train_steps(
    optimizer: torch.optim.Optimizer,
    batches: Iterable[B],
    loss_of: Callable[[B], torch.Tensor],
    *,
    scaler: torch.amp.GradScaler | None = None,
) -> Iterator[tuple[B, float]]:
    """One optimiser step per batch; yields ``(batch, loss before the step)``.

    Lazy: the next batch is drawn only when the caller asks for the next step, so the
    caller's code between steps (a counter, a deadline check) runs in between, and stopping
    early draws no extra batch.

    Args:
        optimizer: Optimiser over the parameters that train.
        batches: The batches, drawn one per step (any iterable; an endless stream can be
            cut with :func:`itertools.islice`).
        loss_of: ``loss_of(batch) -> scalar tensor``: the forward pass and the loss, in the
            train/eval modes the caller set.
        scaler: Gradient scaler for mixed precision (see :meth:`Precision.scaler`); None = a
            plain ``backward`` and ``step``.

    Yields:
        Each batch with its loss as a float (the loss the step's gradient came from).
    """
    for batch in batches:
        loss = loss_of(batch)
        optimiser_step(optimizer, loss, scaler)
        yield batch, float(loss.detach())

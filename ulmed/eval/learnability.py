"""Sharpness-aware learnability (SAL) per layer and the Unlearnable Distance (UD).

After Ye et al. (2025, "How Far Are We from True Unlearnability?", arXiv 2509.08058); the
exact definitions implemented here, and how to read them, are in
``docs/metrics/unlearnable_distance.md``.

* :func:`sal_per_layer`: for every layer that owns a weight tensor with more than one
  dimension (convolutions, linear layers), the largest increase of the loss when only that
  weight ``w`` is perturbed by ``e`` with ``||e||_2 <= gamma * ||w||_2``, approximated by
  ``steps`` of normalised gradient ascent projected on that ball.
* :func:`unlearnable_distance`: the number of a protected-trained model's layers whose SAL
  exceeds the clean-trained model's ``quantile`` of SAL values, divided by the number of
  the clean model's own layers above it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ulmed.errors import ConfigError

#: Default relative radius of the weight perturbation.
GAMMA = 0.05

Batch = tuple[torch.Tensor, torch.Tensor]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layers SAL is measured on: ``(name, weight)`` of every module owning a weight with >1 dims.

    Names come from ``model.named_modules()`` (``""`` for the model itself); a weight shared
    by several modules is listed once, under its first name.
    """
    layers, seen = [], set()
    for name, module in model.named_modules():
        w = module._parameters.get("weight")
        if isinstance(w, nn.Parameter) and w.dim() > 1 and id(w) not in seen:
            seen.add(id(w))
            layers.append((name, w))
    return layers


def _mean_loss(forward: Callable[[torch.Tensor], torch.Tensor], loss_fn: Callable[..., torch.Tensor],
               batches: Sequence[Batch], device: torch.device,
               grad_of: nn.Parameter | None) -> tuple[float, torch.Tensor | None]:
    """Mean of the batch losses and, when ``grad_of`` is given, its gradient with respect to it."""
    total, grad = 0.0, None
    for x, y in batches:
        with torch.set_grad_enabled(grad_of is not None):
            loss = loss_fn(forward(x.to(device)), y.to(device)) / len(batches)
        total += float(loss.detach())
        if grad_of is not None:
            (g,) = torch.autograd.grad(loss, [grad_of])
            grad = g if grad is None else grad + g
    return total, grad


def sal_per_layer(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    batches: Sequence[Batch],
    gamma: float = GAMMA,
    steps: int = 1,
    *,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Sharpness-aware learnability of every weight layer of ``model``.

    ``L(w)`` is the mean over ``batches`` of ``loss_fn(model(x), y)`` in eval mode. For each
    layer ``l`` (see :func:`weight_layers`), with every other weight fixed and radius
    ``r = gamma * ||w_l||_2``: ``e_0 = 0``, ``e_{k+1} = P_r(e_k + r * g_k / ||g_k||_2)``
    with ``g_k`` the gradient of ``L`` with respect to ``w_l`` at ``w_l + e_k`` and ``P_r``
    the projection on the ball ``||e||_2 <= r``; ``SAL_l = max_k L(w_l + e_k) - L(w_l)``
    over ``k = 0..steps`` (so ``SAL_l >= 0``). ``steps=1`` is the first-order SAM step. A
    zero gradient stops the ascent (the loss does not move to first order).

    The model's weights, ``requires_grad`` flags, ``.grad`` and train/eval mode are the same
    afterwards (weights bit for bit).

    Args:
        model: A trained network; batches are moved to the device of its weights.
        loss_fn: ``loss_fn(output, y) -> scalar tensor``, e.g. the task's training loss.
        batches: ``(x, y)`` tensor pairs; the loss is the unweighted mean of their losses.
        gamma: Relative radius of the perturbation, > 0.
        steps: Normalised gradient-ascent steps, >= 1.
        forward: Maps a batch to the output given to ``loss_fn``; default ``model`` (e.g.
            pass a sliding-window predictor built on ``model``).

    Returns:
        One dict per layer, in module order: ``layer`` (module name), ``sal`` and ``loss``
        (the unperturbed ``L``).

    Raises:
        ConfigError: Bad ``gamma``/``steps``, no batches, or a model without weight layers.
    """
    _check_arguments(gamma, steps, batches)
    layers = weight_layers(model)
    if not layers:
        raise ConfigError("sal_per_layer: the model has no layer with a weight of more than one dimension")
    run = forward or model
    device = layers[0][1].device
    out: list[dict[str, Any]] = []
    with _frozen_in_eval(model):
        base, _ = _mean_loss(run, loss_fn, batches, device, None)
        for name, w in layers:
            sal = _layer_sal(lambda grad_of: _mean_loss(run, loss_fn, batches, device, grad_of), w, base, gamma, steps)
            out.append({"layer": name, "sal": sal, "loss": base})
    return out


def _check_arguments(gamma: float, steps: int, batches: Sequence[Batch]) -> None:
    if not (isinstance(gamma, (int, float)) and math.isfinite(gamma) and gamma > 0):
        raise ConfigError(f"sal_per_layer: gamma must be a finite number > 0, got {gamma!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"sal_per_layer: steps must be an integer >= 1, got {steps!r}")
    if len(batches) == 0:
        raise ConfigError("sal_per_layer: no batches given; pass at least one (x, y) pair")


@contextlib.contextmanager
def _frozen_in_eval(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode with every parameter frozen; flags and mode restored after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)


#: ``loss_at(grad_of) -> (mean loss, its gradient with respect to grad_of or None)``.
LossAt = Callable[[nn.Parameter | None], tuple[float, torch.Tensor | None]]


def _layer_sal(loss_at: LossAt, w: nn.Parameter, base: float, gamma: float, steps: int) -> float:
    """SAL of one weight: the normalised, projected ascent of :func:`sal_per_layer`; ``w`` restored bit for bit."""
    w0 = w.detach().clone()
    radius = gamma * float(torch.linalg.vector_norm(w0))
    w.requires_grad_(True)
    e = torch.zeros_like(w0)
    best, moved = base, False
    try:
        for k in range(steps):
            loss, g = loss_at(w)
            if k > 0:  # the loss at e_k; e_0 = 0 gives ``base``
                best = max(best, loss)
            assert g is not None
            g_norm = float(torch.linalg.vector_norm(g))
            if radius == 0 or g_norm == 0 or not math.isfinite(g_norm):
                moved = False
                break
            e = _ascend(e, g, radius, g_norm)
            with torch.no_grad():
                w.copy_(w0 + e)
            moved = True
        if moved:
            loss, _ = loss_at(None)
            best = max(best, loss)
    finally:
        with torch.no_grad():
            w.copy_(w0)
        w.requires_grad_(False)
    return best - base


def _ascend(e: torch.Tensor, g: torch.Tensor, radius: float, g_norm: float) -> torch.Tensor:
    """One normalised gradient step of length ``radius``, projected back on the ball of that radius."""
    e = e + g * (radius / g_norm)
    e_norm = float(torch.linalg.vector_norm(e))
    if e_norm > radius:
        e = e * (radius / e_norm)
    return e


def _check_sal(name: str, sal: Sequence[dict[str, Any]]) -> tuple[list[str], np.ndarray]:
    if len(sal) == 0:
        raise ConfigError(f"unlearnable_distance: {name} SAL list is empty")
    try:
        layers = [str(row["layer"]) for row in sal]
        values = np.array([float(row["sal"]) for row in sal], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"unlearnable_distance: {name} SAL must be a list of {{'layer', 'sal'}} dicts "
                          "with numeric 'sal' (as sal_per_layer returns)") from None
    if not np.isfinite(values).all():
        raise ConfigError(f"unlearnable_distance: {name} SAL values must be finite")
    return layers, values


def unlearnable_distance(
    sal_clean: Sequence[dict[str, Any]], sal_protected: Sequence[dict[str, Any]], quantile: float = 0.5
) -> dict[str, Any]:
    """Unlearnable Distance of a protected-trained model relative to the clean-trained one.

    ``tau`` = the ``quantile`` of the clean SAL values (``numpy.quantile``, linear
    interpolation); ``UD = #{l: SAL_prot_l > tau} / #{l: SAL_clean_l > tau}``. UD near 1:
    the protected data shaped as many sharp (learned) layers as clean data; near 0: far
    fewer, the data was close to unlearnable.

    Args:
        sal_clean: :func:`sal_per_layer` of the clean-trained model.
        sal_protected: The same of the protected-trained model (same architecture).
        quantile: Quantile of the clean SAL values used as threshold, in (0, 1).

    Returns:
        ``ud``, ``threshold``, ``n_clean``, ``n_protected`` and ``layers`` (one
        ``{"layer", "sal_clean", "sal_protected"}`` per layer).

    Raises:
        ConfigError: Empty or malformed lists, different layers, a quantile outside (0, 1),
            or no clean layer above the threshold (all clean SAL values equal).
    """
    if not (isinstance(quantile, (int, float)) and 0 < quantile < 1):
        raise ConfigError(f"unlearnable_distance: quantile must lie in (0, 1), got {quantile!r}")
    names_c, clean = _check_sal("clean", sal_clean)
    names_p, prot = _check_sal("protected", sal_protected)
    if names_c != names_p:
        raise ConfigError("unlearnable_distance: the clean and protected SAL lists name different layers "
                          f"({len(names_c)} vs {len(names_p)}); compare models of the same architecture")
    tau = float(np.quantile(clean, quantile))
    n_clean, n_prot = int((clean > tau).sum()), int((prot > tau).sum())
    if n_clean == 0:
        raise ConfigError(f"unlearnable_distance: no clean layer has SAL above the threshold {tau:.6g} "
                          f"(quantile {quantile}); the clean SAL values are all equal, UD is undefined")
    return {"ud": n_prot / n_clean, "threshold": tau, "n_clean": n_clean, "n_protected": n_prot,
            "layers": [{"layer": n, "sal_clean": float(c), "sal_protected": float(p)}
                       for n, c, p in zip(names_c, clean, prot)]}

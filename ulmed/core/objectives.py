"""The objectives PGD can minimise instead of the surrogate's training loss.

:class:`BayesErrorObjective` returns minus a Bayes-error estimate (:mod:`ulmed.core.bayes_error`)
of the surrogate's features (:mod:`ulmed.core.features`): noise that raises the Bayes error of
the protected data stays effective when the protected data is mixed with clean data (after
Zhang et al., "Towards Provably Unlearnable Examples via Bayes Error Optimisation").
:func:`pgd_objective` is the choice a method makes from its ``objective`` option.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ulmed.choices import StrEnum, look_up
from ulmed.core.bayes_error import bayes_error, check_bandwidth, loo_kernel_posterior
from ulmed.core.checks import check_count
from ulmed.core.features import FeatureTap, as_label_map, check_map, patch_features, pixel_features
from ulmed.core.surrogates import feature_layer
from ulmed.core.tasks import Task
from ulmed.errors import ConfigError

__all__ = [
    "BayesErrorObjective",
    "FeatureTap",
    "Objective",
    "bayes_error",
    "loo_kernel_posterior",
    "patch_features",
    "pgd_objective",
    "pixel_features",
]


class Objective(StrEnum):
    """What the PGD steps of a min-min method optimise."""

    #: The surrogate's training loss (error-minimising noise).
    LOSS = "loss"
    #: Minus a Bayes-error estimate of the surrogate's last hidden features (:class:`BayesErrorObjective`).
    BAYES = "bayes"


class BayesErrorObjective:
    """``(model, x_adv, y) -> -bayes_error``: a loss to minimise that raises the Bayes error.

    Classification: the feature of an image is the tapped output of ``layer`` (global
    average pooled over spatial dims, if any), or the model's logits when ``layer`` is None;
    all images of the batch enter the estimate. Segmentation: :func:`pixel_features` of the
    tapped map (targets are nearest-resized when its spatial size differs from ``y``), or
    :func:`patch_features` of ``x_adv`` when ``layer`` is None (the model is then not run).
    Each call draws fresh positions from a generator seeded once with ``seed``, so a
    sequence of calls is reproducible.

    Args:
        num_classes: Number of classes ``>= 2`` (2 for a binary mask).
        task: ``"segmentation"`` or ``"classification"``.
        layer: Submodule of the model whose output gives the features, or None.
        per_class: Positions sampled per class (segmentation), ``>= 1``.
        patch: Odd patch side for input-patch features, ``>= 1``.
        bandwidth: Kernel width, or ``None`` for the median heuristic.
        seed: Seed of the position sampler.

    Raises:
        ConfigError: Any argument invalid.
    """

    def __init__(self, num_classes: int, task: Task | str = Task.SEGMENTATION, layer: nn.Module | None = None,
                 per_class: int = 64, patch: int = 5, bandwidth: float | None = None, seed: int = 0) -> None:
        self.num_classes = check_count("num_classes", num_classes, 2)
        self.task = look_up(task, Task, "task")
        if layer is not None and not isinstance(layer, nn.Module):
            raise ConfigError(f"layer must be an nn.Module or None, got {type(layer).__name__}")
        self.layer = layer
        self.per_class = check_count("per_class", per_class, 1)
        self.patch = check_count("patch", patch, 1)
        if self.patch % 2 == 0:
            raise ConfigError(f"patch must be odd, got {patch}")
        self.bandwidth = check_bandwidth(bandwidth)
        self.seed = check_count("seed", seed, 0)
        self._generator = torch.Generator().manual_seed(self.seed)

    def _forward(self, model: nn.Module, x: Tensor) -> Tensor:
        if self.layer is None:
            out = model(x)
            if not isinstance(out, Tensor):
                raise ConfigError(f"the model returned {type(out).__name__}, not a tensor; pass layer=")
            return out
        with FeatureTap(self.layer) as tap:
            model(x)
        return tap.output

    def __call__(self, model: nn.Module, x_adv: Tensor, y: Tensor) -> Tensor:
        """Minus the Bayes-error estimate of the batch (a scalar to minimise)."""
        if not isinstance(x_adv, Tensor) or x_adv.dim() < 2:
            raise ConfigError("x_adv must be a (B, C, ...) tensor")
        if self.task is Task.CLASSIFICATION:
            return -self._classification(model, x_adv, y)
        return -self._segmentation(model, x_adv, y)

    def _classification(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        batch = x.shape[0]
        if not isinstance(y, Tensor) or y.numel() != batch or y.dim() > 2:
            raise ConfigError(f"classification targets must be (B,) or (B, 1) class indices with B = {batch}")
        labels = as_label_map(y.reshape(batch), batch, ())
        feats = self._forward(model, x)
        if feats.shape[0] != batch:
            raise ConfigError(f"features have batch {feats.shape[0]}, expected {batch}")
        feats = feats.flatten(2).mean(-1) if feats.dim() > 2 else feats.reshape(batch, -1)
        return bayes_error(feats, labels.to(feats.device), self.num_classes, self.bandwidth)

    def _segmentation(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if self.layer is None:
            feats, labels = patch_features(x, y, self.per_class, self.patch, self._generator)
        else:
            fmap = check_map("the tapped feature map", self._forward(model, x))
            label_map = as_label_map(y, x.shape[0], tuple(x.shape[2:]), "y")
            if tuple(fmap.shape[2:]) != tuple(label_map.shape[1:]):
                if fmap.dim() != label_map.dim() + 1:
                    raise ConfigError(f"the tapped map {tuple(fmap.shape)} and the targets {tuple(y.shape)} "
                                      "differ in their number of spatial dims")
                label_map = F.interpolate(label_map[:, None].float(), size=fmap.shape[2:], mode="nearest")[:, 0]
            feats, labels = pixel_features(fmap, label_map, self.per_class, self._generator)
        return bayes_error(feats, labels, self.num_classes, self.bandwidth)


def pgd_objective(kind: Objective | str, surrogate: str, model: nn.Module, task: Task | str, num_classes: int, *,
                  per_class: int, seed: int) -> BayesErrorObjective | None:
    """What PGD minimises for a method's ``objective`` option: None (the training loss) or a Bayes objective.

    Args:
        kind: ``"loss"`` or ``"bayes"`` (an :class:`Objective`).
        surrogate: The surrogate's name (its feature layer is tapped, :func:`ulmed.core.surrogates.feature_layer`).
        model: The surrogate.
        task: The targets' task.
        num_classes: Classes of the targets (at least 2 are used).
        per_class: Positions sampled per class and batch (segmentation).
        seed: Seed of the position sampler.

    Raises:
        ConfigError: Unknown ``kind``.
    """
    if look_up(kind, Objective, "objective") is Objective.LOSS:
        return None
    return BayesErrorObjective(max(num_classes, 2), task, feature_layer(surrogate, model), per_class=per_class,
                               seed=seed)

"""ARMOR-style choice of the surrogate's augmentation, per class (after Gong et al. 2025).

ARMOR picks, for each class, the augmentation whose augmented samples are best aligned with
the original ones, and optimises the noise of that class under it. We measure alignment
the way a trainer's optimiser feels it: the cosine similarity between the surrogate's
parameter gradient of the training loss on a class's original samples and on augmented
views of them (averaged over ``draws`` draws). An augmentation with high alignment pushes
the model the same way as the original data, so noise that is easy to fit under it stays
easy to fit without it; one with low alignment changes what is learnt and is the wrong
place to spend the optimisation.

For segmentation every image holds every class, so there is one choice for the data set
(key ``-1``); for classification one per class id. :class:`ClasswiseAugment` then applies
the chosen policy of each sample's class. What we kept from ARMOR and what not is written in
docs/methods/robust.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ulmed.core.augment import PRESETS, AugmentPolicy, DifferentiableAugment, for_dims
from ulmed.core.checks import check_count
from ulmed.errors import ConfigError

#: Candidate policies of the selection (names of :data:`ulmed.core.augment.PRESETS` or extra ones).
CANDIDATES: dict[str, AugmentPolicy] = {
    "flip_jitter": PRESETS["flip_jitter"],
    "geometric": AugmentPolicy(flips=True, rot90=True, rotate=15.0, scale=0.1, elastic=30.0),  # the trainer's alpha
    "photometric": AugmentPolicy(brightness=0.2, contrast=0.2, gamma=0.2, noise=0.05, blur=1.0),
    "standard": PRESETS["standard"],
    "robust": PRESETS["robust"],
}
ALL = -1

TrainLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _flat_grad(model: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params, strict=True)]
    return torch.cat(flat)


def gradient_alignment(
    model: nn.Module, loss_fn: TrainLoss, images: torch.Tensor, targets: torch.Tensor,
    augment: DifferentiableAugment, draws: int = 2,
) -> float:
    """Cosine similarity of the loss gradient (in the parameters) on original and augmented data.

    Args:
        model: The surrogate (its ``.grad`` fields are not touched).
        loss_fn: ``(output, target) -> scalar``.
        images: ``(B, C, *spatial)`` in [0, 1].
        targets: Masks ``(B, 1, *spatial)`` or class labels ``(B,)``.
        augment: The augmentation to score.
        draws: Augmented draws whose gradients are averaged.

    Returns:
        A value in [-1, 1]; 1 when the augmentation does not change the gradient direction.
    """
    if draws < 1:
        raise ConfigError(f"draws must be >= 1, got {draws}")
    was_training = model.training
    model.eval()  # batch-norm statistics must not move, and dropout must not add noise
    try:
        original = _flat_grad(model, loss_fn(model(images), targets))
        augmented = torch.zeros_like(original)
        for _ in range(draws):
            xa, ya = augment(images, targets)
            augmented += _flat_grad(model, loss_fn(model(xa), ya))
    finally:
        model.train(was_training)
    return float(torch.nn.functional.cosine_similarity(original, augmented / draws, dim=0))


@dataclass(frozen=True)
class SelectionConfig:
    """How :func:`select_policies` scores the candidates.

    Args:
        candidates: Name -> policy; default :data:`CANDIDATES`.
        per_class: Samples scored per class (the first ones of each class).
        draws: Augmented draws per score.
        seed: Seed of the augmentation draws.

    Raises:
        ConfigError: No candidates, or ``per_class`` or ``draws`` below 1.
    """

    candidates: Mapping[str, AugmentPolicy] | None = None
    per_class: int = 16
    draws: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.candidates is not None and not self.candidates:
            raise ConfigError("select_policies needs at least one candidate policy")
        check_count("per_class", self.per_class, 1)
        check_count("draws", self.draws, 1)

    def table(self) -> dict[str, AugmentPolicy]:
        """The candidates by name."""
        return dict(CANDIDATES if self.candidates is None else self.candidates)


def _scored_samples(class_ids: torch.Tensor | None, n: int, per_class: int) -> dict[int, torch.Tensor]:
    """The indices scored per class (the first ``per_class`` of each), or for the data set (key -1)."""
    if class_ids is None:
        return {ALL: torch.arange(min(per_class, n))}
    return {int(c): torch.nonzero(class_ids == c).flatten()[:per_class] for c in torch.unique(class_ids).tolist()}


def select_policies(
    model: nn.Module, loss_fn: TrainLoss, images: torch.Tensor, targets: torch.Tensor, spatial_dims: int,
    num_classes: int, *, class_ids: torch.Tensor | None = None, config: SelectionConfig | None = None,
) -> tuple[dict[int, str], dict[int, dict[str, float]]]:
    """Choose, per class (or for the data set), the candidate with the highest gradient alignment.

    Args:
        model: A surrogate already trained a little on the data (its gradients must mean something).
        loss_fn: The training loss.
        images: ``(N, C, *spatial)``, anywhere: only the scored samples move to the model's device.
        targets: Masks or class labels, as the loss takes them.
        spatial_dims: 2 or 3 (candidates with 2D-only transformations lose them in 3D).
        num_classes: Label values of the targets.
        class_ids: ``(N,)`` class per sample for a per-class choice; None: one choice (key -1).
        config: Candidates, samples per class, draws and seed (:class:`SelectionConfig`).

    Returns:
        ``(choice, scores)``: class (or -1) -> chosen candidate name, and class -> name -> alignment.
    """
    config = SelectionConfig() if config is None else config
    groups = _scored_samples(class_ids, images.shape[0], config.per_class)
    augments = {
        name: DifferentiableAugment(for_dims(policy, spatial_dims), spatial_dims, num_classes)
        for name, policy in config.table().items()
    }
    choice: dict[int, str] = {}
    scores: dict[int, dict[str, float]] = {}
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        for c, idx in groups.items():
            x, y = images[idx].to(device), targets[idx].to(device)
            scores[c] = {name: gradient_alignment(model, loss_fn, x, y, aug, config.draws)
                         for name, aug in augments.items()}
            choice[c] = max(scores[c], key=lambda n: scores[c][n])
    return choice, scores


def armor_augment(
    model: nn.Module, loss_fn: TrainLoss, images: torch.Tensor, targets: torch.Tensor, spatial_dims: int,
    num_classes: int, *, class_ids: torch.Tensor | None, seed: int,
) -> tuple[ClasswiseAugment, dict[str, dict[str, Any]]]:
    """ARMOR's choice for a data set: the augmentation to optimise under, and the record of the choice.

    Args:
        model: The surrogate after one plain round.
        loss_fn: The training loss.
        images: The data set's images.
        targets: Its targets.
        spatial_dims: 2 or 3.
        num_classes: Classes of the targets (at least 2 are used).
        class_ids: Class per image for a per-class choice (classification); None: one choice.
        seed: Seed of the augmentation draws.

    Returns:
        The :class:`ClasswiseAugment` of the choice, and ``{"choice": ..., "alignment": ...}``
        keyed by class as text (for a manifest).
    """
    classes = max(num_classes, 2)
    choice, scores = select_policies(model, loss_fn, images, targets, spatial_dims, classes, class_ids=class_ids,
                                     config=SelectionConfig(seed=seed))
    record = {"choice": {str(k): v for k, v in choice.items()},
              "alignment": {str(k): v for k, v in scores.items()}}
    return chosen_augment(choice, spatial_dims, classes), record


def chosen_augment(choice: Mapping[int, str], spatial_dims: int, num_classes: int,
                   candidates: Mapping[str, AugmentPolicy] | None = None) -> ClasswiseAugment:
    """The :class:`ClasswiseAugment` that applies ``choice`` (from :func:`select_policies`)."""
    table = CANDIDATES if candidates is None else candidates
    return ClasswiseAugment({c: DifferentiableAugment(for_dims(table[name], spatial_dims), spatial_dims, num_classes)
                             for c, name in choice.items()})


class ClasswiseAugment(nn.Module):
    """Apply to each sample the augmentation chosen for its class.

    Args:
        augments: Class id -> augmentation; key ``-1`` (:data:`ALL`) applies to every sample
            (segmentation) or to classes without their own entry.
    """

    def __init__(self, augments: Mapping[int, DifferentiableAugment]) -> None:
        super().__init__()
        if not augments:
            raise ConfigError("ClasswiseAugment needs at least one augmentation")
        self.keys = [int(k) for k in augments]
        self.augments = nn.ModuleList(augments.values())

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``images`` (and masks) sample by sample class."""
        table = dict(zip(self.keys, self.augments, strict=True))
        if targets.dim() == images.dim() or set(self.keys) == {ALL}:
            if ALL not in table:
                raise ConfigError("masks or label maps need one augmentation for the data set (key -1)")
            return table[ALL](images, targets)
        out_x, out_y = images.clone(), targets.clone()
        for c in torch.unique(targets).tolist():
            aug = table.get(int(c), table.get(ALL))
            if aug is None:
                continue
            where = torch.nonzero(targets == c).flatten()
            xa, ya = aug(images[where], targets[where])
            out_x = out_x.index_put((where,), xa)
            out_y = out_y.index_put((where,), ya)
        return out_x, out_y

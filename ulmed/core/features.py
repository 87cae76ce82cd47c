"""Features for the Bayes-error objective: sampled positions of a feature map, input patches, a hook.

For segmentation the per-pixel problem becomes the sample set the estimator of
:mod:`ulmed.core.bayes_error` needs: :func:`pixel_features` samples positions of each class
from a feature map, :func:`patch_features` takes the input patch around each sampled pixel
(no model at all), and :class:`FeatureTap` captures the output of a network layer.
"""

from __future__ import annotations

import math
from types import TracebackType
from typing import Self

import torch
from torch import Tensor, nn

from ulmed.core.checks import check_count
from ulmed.errors import ConfigError

__all__ = ["FeatureTap", "as_label_map", "check_map", "patch_features", "pixel_features"]


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def as_label_map(targets: Tensor, batch: int, spatial: tuple[int, ...], name: str = "targets") -> Tensor:
    """``(B, 1, *S)`` or ``(B, *S)`` integer-valued targets -> ``(B, *S)`` long.

    Float or bool masks are accepted when every value is a non-negative integer (a binary
    ``{0., 1.}`` mask is common); anything else raises.
    """
    if not isinstance(targets, Tensor):
        raise ConfigError(f"{name} must be a tensor, got {type(targets).__name__}")
    d = len(spatial)
    if targets.dim() == d + 2 and targets.shape[1] == 1:
        targets = targets.squeeze(1)
    if tuple(targets.shape) != (batch, *spatial):
        raise ConfigError(f"{name} must have shape (B, 1, *spatial) or (B, *spatial) = {(batch, *spatial)} "
                          f"to match the features, got {tuple(targets.shape)}")
    if targets.is_complex():
        raise ConfigError(f"{name} must hold class indices, got a complex tensor")
    if targets.is_floating_point() and (
            not bool(torch.isfinite(targets).all()) or not torch.equal(targets, targets.round())):
        raise ConfigError(f"{name} must hold integer class indices; got non-integer values")
    targets = targets.long()
    if targets.numel() and int(targets.min()) < 0:
        raise ConfigError(f"{name} must hold class indices >= 0, got {int(targets.min())}")
    return targets


def _sample_positions(label_map: Tensor, per_class: int,
                      generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Up to ``per_class`` flat positions of each class present, uniformly, sorted per class.

    Returns:
        Flat indices into ``label_map.reshape(-1)`` and their labels; classes ascending.
    """
    flat = label_map.reshape(-1)
    chosen = []
    for c in torch.unique(flat).tolist():
        idx = (flat == c).nonzero().squeeze(1)
        if idx.numel() > per_class:
            device = generator.device if generator is not None else torch.device("cpu")
            perm = torch.randperm(idx.numel(), generator=generator, device=device)[:per_class]
            idx = idx[perm.to(idx.device)].sort().values
        chosen.append(idx)
    index = torch.cat(chosen)
    return index, flat[index]


def _split_index(index: Tensor, spatial: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Flat ``(b, *spatial)`` indices -> batch index and flat spatial index."""
    size = math.prod(spatial)
    return index // size, index % size


def check_map(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor) or value.dim() < 3 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ConfigError(f"{name} must be a floating-point (B, C, *spatial) tensor with >= 1 spatial dim, got {shape}")
    if value.shape[0] < 1 or value.shape[1] < 1 or value.numel() == 0:
        raise ConfigError(f"{name} must not be empty, got shape {tuple(value.shape)}")
    return value


def pixel_features(feature_map: Tensor, targets: Tensor, per_class: int,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Sample up to ``per_class`` positions of each class and return their feature vectors.

    Positions of a class are drawn uniformly among all its positions across the batch
    (all of them when there are at most ``per_class``), reproducibly from ``generator``.
    Gradients flow back to ``feature_map``. Works for 2D and 3D (any number of spatial dims).

    Args:
        feature_map: ``(B, F, *spatial)`` features.
        targets: ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices (integer-valued
            float masks are accepted).
        per_class: Maximum number of positions per class, ``>= 1``.
        generator: Random source of the sampling; ``None`` uses torch's global generator.

    Returns:
        Features ``(M, F)`` and long labels ``(M,)``, classes in ascending order and, within
        a class, positions in ascending flat ``(b, *spatial)`` order.

    Raises:
        ConfigError: Bad shapes, non-integer or negative targets, bad ``per_class``.
    """
    feature_map = check_map("feature_map", feature_map)
    per_class = check_count("per_class", per_class, 1)
    generator = _check_generator(generator)
    spatial = tuple(feature_map.shape[2:])
    label_map = as_label_map(targets, feature_map.shape[0], spatial).to(feature_map.device)
    index, labels = _sample_positions(label_map, per_class, generator)
    b, s = _split_index(index, spatial)
    features = feature_map.flatten(2)[b, :, s]  # (M, F): advanced indices around a slice go first
    return features, labels


def patch_features(images: Tensor, targets: Tensor, per_class: int, patch: int = 5,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Like :func:`pixel_features`, with the flattened input patch around a position as its feature.

    The feature of a position is the ``patch ** d`` neighbourhood of every channel, zero
    padded at the border, flattened channel-major (the layout of ``F.unfold`` in 2D):
    ``C * patch ** d`` values. Only the sampled neighbourhoods are gathered, so a 3D volume
    is never unfolded or padded as a whole. Gradients flow back to ``images``.

    Args:
        images: ``(B, C, *spatial)`` inputs.
        targets: ``(B, 1, *spatial)`` or ``(B, *spatial)`` class indices.
        per_class: Maximum number of positions per class, ``>= 1``.
        patch: Odd patch side, ``>= 1``.
        generator: Random source of the sampling; ``None`` uses torch's global generator.

    Returns:
        Features ``(M, C * patch ** d)`` and long labels ``(M,)``, ordered as in
        :func:`pixel_features` (the same positions for the same generator state).

    Raises:
        ConfigError: Bad shapes, targets, ``per_class`` or an even/non-positive ``patch``.
    """
    images = check_map("images", images)
    per_class = check_count("per_class", per_class, 1)
    patch = check_count("patch", patch, 1)
    if patch % 2 == 0:
        raise ConfigError(f"patch must be odd so that the patch is centred on its pixel, got {patch}")
    generator = _check_generator(generator)
    batch, channels = images.shape[:2]
    spatial = tuple(images.shape[2:])
    label_map = as_label_map(targets, batch, spatial).to(images.device)
    index, labels = _sample_positions(label_map, per_class, generator)
    b, s = _split_index(index, spatial)

    device = images.device
    sizes = torch.tensor(spatial, device=device)
    strides = torch.tensor([math.prod(spatial[i + 1:]) for i in range(len(spatial))], device=device)
    coords = (s[:, None] // strides) % sizes  # (M, d)
    r = patch // 2
    axis = torch.arange(-r, r + 1, device=device)
    offsets = torch.stack(torch.meshgrid(*[axis] * len(spatial), indexing="ij"), dim=-1).reshape(-1, len(spatial))
    neighbours = coords[:, None, :] + offsets[None]  # (M, P, d)
    inside = ((neighbours >= 0) & (neighbours < sizes)).all(-1)  # (M, P)
    neighbours = torch.minimum(neighbours.clamp_min(0), sizes - 1)
    flat = (neighbours * strides).sum(-1)  # (M, P)
    values = images.flatten(2)[b[:, None], :, flat]  # (M, P, C)
    values = values * inside[..., None].to(values.dtype)
    features = values.permute(0, 2, 1).reshape(index.numel(), channels * offsets.shape[0])
    return features, labels


class FeatureTap:
    """Capture the output of a submodule during a forward pass (a forward hook).

    Use as a context manager, ``with FeatureTap(model.model[1]) as tap: model(x); f = tap.output``,
    or call :meth:`attach` / :meth:`remove`. The captured output is not detached, so a loss
    on it back-propagates through the network to the input.

    Args:
        module: The submodule whose output to capture.

    Raises:
        ConfigError: ``module`` is not an ``nn.Module``.
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(f"FeatureTap needs an nn.Module, got {type(module).__name__}")
        self.module = module
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._output: object = None

    def _hook(self, module: nn.Module, args: object, output: object) -> None:
        self._output = output

    @property
    def attached(self) -> bool:
        """Whether the hook is currently registered."""
        return self._handle is not None

    def attach(self) -> Self:
        """Register the hook (idempotent) and forget any earlier output."""
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)
        self._output = None
        return self

    def remove(self) -> None:
        """Remove the hook (idempotent); the last output stays readable."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def output(self) -> Tensor:
        """The module's last output.

        Raises:
            ConfigError: Nothing captured yet (the module did not run) or not a tensor.
        """
        if self._output is None:
            raise ConfigError("FeatureTap has captured nothing: the tapped module did not run in the forward pass")
        if not isinstance(self._output, Tensor):
            raise ConfigError(f"the tapped module returned {type(self._output).__name__}, not a tensor")
        return self._output

    def __enter__(self) -> Self:
        return self.attach()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

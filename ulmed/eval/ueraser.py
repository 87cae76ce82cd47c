"""UEraser-style augmentation: random smooth intensity fields per sample, drawn afresh each epoch.

Source: Qin, Xiong, Yi and Hsieh, "Learning the Unlearnable: Adversarial Augmentations
Suppress Unlearnable Example Attacks" (2023, arXiv:2303.15127), code github.com/lafeat/ueraser.
Its augmentation is kornia's ``RandomPlasmaBrightness(roughness=(0.3, 0.7), intensity=(0.5,
1.0), p=1)``, ``RandomPlasmaContrast(roughness=(0.3, 0.7), p=1)``, ``RandomChannelShuffle(p=0.5)``
and then ``TrivialAugment``. :class:`UEraser` applies the first three with those settings,
as kornia computes them:

* plasma brightness ``x + i * (2 P - 1)``, ``i`` drawn from the intensity range;
* plasma contrast ``(x - 0.5) * 4 Q + 0.5``;
* the three channels of RGB images in a random order with probability 0.5 (grey images and
  volumes have nothing to shuffle);

each clipped to [0, 1], with ``P`` and ``Q`` fresh fractal maps per channel (mean 0.5, values in
[0, 1]) of one roughness per sample and map kind. TrivialAugment (natural-image operations such as
posterize, solarize, shear) is left out: the defense is the smooth intensity fields.

The maps come from :func:`plasma`, the midpoint construction of kornia's ``diamond_square``
written for any number of axes, so that volumes get 3D fields: the values at the corners of a
coarse grid are uniform draws; each finer level halves the node spacing (the same along every
axis) and sets each new node to the multilinear mean of its neighbours (kornia: the diamond and
square means), from the second level on mixed with a uniform draw of weight
``roughness ** (level - 1)``. Lower roughness gives smoother maps; in 2D their fine-scale
variation matches kornia's, their spread is about a fifth larger. All randomness comes from
the ``rng`` the training loop passes; masks and class labels are not changed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ulmed.errors import ConfigError

#: UEraser's ranges (lafeat/ueraser): roughness of both maps, intensity of the brightness map.
ROUGHNESS = (0.3, 0.7)
INTENSITY = (0.5, 1.0)
#: Probability of the channel shuffle (RGB images).
P_SHUFFLE = 0.5


def _refine(field: np.ndarray, axis: int, nodes: int) -> np.ndarray:
    """``field`` with midpoints inserted along ``axis`` (means of their two neighbours), cut to ``nodes`` nodes."""
    a = np.moveaxis(field, axis, 0)
    out = np.empty((2 * a.shape[0] - 1, *a.shape[1:]), dtype=a.dtype)
    out[0::2] = a
    out[1::2] = 0.5 * (a[:-1] + a[1:])
    return np.moveaxis(out[:nodes], 0, axis)


def plasma(shape: tuple[int, ...], roughness: float, rng: np.random.Generator) -> np.ndarray:
    """A fractal map of ``shape`` (any number of axes) with values in [0, 1] and mean 0.5.

    Args:
        shape: Spatial shape.
        roughness: In (0, 1); the weight of the fresh draws at level ``k >= 2`` is ``roughness ** (k - 1)``.
        rng: Source of the draws.
    """
    if not 0 < roughness < 1:
        raise ConfigError(f"plasma roughness must lie in (0, 1), got {roughness}")
    if not shape or min(shape) < 1:
        raise ConfigError(f"plasma needs a shape of positive sides, got {shape}")
    levels = math.ceil(math.log2(max(max(shape), 2) - 1)) if max(shape) > 2 else 1
    spacing = 2**levels  # positions between nodes at level 0
    field = rng.random(tuple(math.ceil((n - 1) / spacing) + 1 for n in shape))
    for level in range(1, levels + 1):
        spacing //= 2
        for axis, n in enumerate(shape):
            field = _refine(field, axis, math.ceil((n - 1) / spacing) + 1 if n > 1 else 1)
        new = np.zeros(field.shape, dtype=bool)
        for axis in range(len(shape)):
            index = np.arange(field.shape[axis]).reshape([-1 if a == axis else 1 for a in range(len(shape))])
            new |= index % 2 == 1
        if level > 1:  # the first midpoints are means alone, as in kornia's seed grid
            weight = roughness ** (level - 1)
            field[new] = (1 - weight) * field[new] + weight * rng.random(int(new.sum()))
    return field[tuple(slice(0, n) for n in shape)].astype(np.float32)


class UEraser:
    """UEraser's plasma brightness, plasma contrast and channel shuffle, per sample.

    Args:
        roughness: Range of the maps' roughness (drawn per sample, for each of the two maps).
        intensity: Range of the brightness map's strength (drawn per sample).
        p_shuffle: Probability of shuffling the channels of an RGB image.
    """

    def __init__(self, roughness: tuple[float, float] = ROUGHNESS, intensity: tuple[float, float] = INTENSITY,
                 p_shuffle: float = P_SHUFFLE) -> None:
        if not 0 < roughness[0] <= roughness[1] < 1:
            raise ConfigError(f"UEraser roughness must be a range within (0, 1), got {roughness}")
        if not 0 <= intensity[0] <= intensity[1] <= 1:
            raise ConfigError(f"UEraser intensity must be a range within [0, 1], got {intensity}")
        if not 0 <= p_shuffle <= 1:
            raise ConfigError(f"UEraser p_shuffle must lie in [0, 1], got {p_shuffle}")
        self.roughness, self.intensity, self.p_shuffle = roughness, intensity, p_shuffle

    def _maps(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One fresh map per channel, ``image``'s shape, of one roughness drawn for the sample."""
        roughness = rng.uniform(*self.roughness)
        return np.stack([plasma(image.shape[1:], roughness, rng) for _ in range(image.shape[0])])

    def __call__(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        """Augment one sample ``image (C, *spatial)``; ``target`` (mask or class) is returned unchanged."""
        if not isinstance(image, np.ndarray) or image.ndim not in (3, 4):
            shape = getattr(image, "shape", type(image).__name__)
            raise ConfigError(f"ueraser expects an image (C, H, W) or (C, D, H, W), got {shape}")
        x = np.clip(image.astype(np.float32), 0.0, 1.0)
        x = np.clip(x + rng.uniform(*self.intensity) * (2 * self._maps(x, rng) - 1), 0.0, 1.0)
        x = np.clip((x - 0.5) * 4 * self._maps(x, rng) + 0.5, 0.0, 1.0)
        if image.ndim == 3 and image.shape[0] == 3 and rng.random() < self.p_shuffle:
            x = x[rng.permutation(3)]
        return np.ascontiguousarray(x, dtype=np.float32), target

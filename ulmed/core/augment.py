"""Differentiable augmentation for augmentation-aware optimisation (expectation over transformations).

A trainer who augments its data sees ``T(x + delta)`` for random transformations ``T``,
never ``x + delta`` itself. Noise optimised only at the identity learns features that
the trainer's flips, warps and jitter destroy. With an :class:`AugmentPolicy` the bilevel
loop (:mod:`ulmed.core.bilevel`) lets both the surrogate's training steps and the PGD steps
see ``T(x + delta)`` with fresh random ``T`` at each step, so the noise is optimised for the
expectation over the policy (EOT).

Transformations come from kornia and are differentiable in the image, so the gradient
reaches ``delta`` through each one:

* geometric (image and mask move together): flips along every spatial axis, 90-degree
  rotations, integer shifts of up to ``shift`` positions (exact, zero filled), rotation by up to ``rotate`` degrees and scale by ``1 +- scale``
  (``RandomAffine``/``RandomAffine3D``), elastic deformation (2D);
* photometric (image only): brightness ``+- brightness``, contrast ``1 +- contrast``,
  gamma ``1 +- gamma``, Gaussian noise of std up to ``noise``, Gaussian blur of sigma up to
  ``blur`` (in-plane for volumes), and kornia's differentiable JPEG at a quality drawn
  from ``[jpeg, 95]`` (grey images pass as R = G = B, then back to grey).

Masks travel through 2D geometry as kornia's ``mask`` data key (nearest neighbour). In 3D,
where kornia has no mask path, the label map is one-hot encoded, warped with the image by
the same transformation and turned back by argmax. Class labels (classification) are not
transformed. Randomness is torch's global generator, which :func:`ulmed.core.bilevel.min_min`
seeds, so a seeded run is reproducible.

Presets: ``none``; ``flip_jitter`` (flips, brightness/contrast); ``standard`` (the
evaluation's ``augmentation`` preset: flips, 90-degree and +-15 degree rotations, scale
0.9-1.1, elastic, brightness/contrast +-0.2, noise std up to 0.05); ``robust`` (standard
plus integer shifts of up to 3 positions, gamma, blur and JPEG 50-95).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import kornia
import kornia.augmentation as K
import torch
from torch import nn

from ulmed.errors import ConfigError

# kornia's elastic and affine warps announce a torch default that changed in 2018 on every call.
warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid behavior", category=UserWarning)


@dataclass(frozen=True)
class AugmentPolicy:
    """Which transformations the optimisation expects, and how strong.

    Zero (or False) switches a transformation off. Each switched-on transformation is
    applied with probability ``p`` per sample.

    Args:
        flips: Random flips along every spatial axis.
        rot90: Random 90-degree rotations (in planes whose two axes have equal size).
        rotate: Largest rotation angle in degrees.
        scale: Scale factors drawn from ``[1 - scale, 1 + scale]``.
        shift: Largest translation, in positions, along each spatial axis.
        elastic: Elastic deformation strength (kornia ``alpha``; 2D only).
        brightness: Additive brightness shift drawn from ``[-brightness, brightness]``.
        contrast: Contrast factor drawn from ``[1 - contrast, 1 + contrast]``.
        gamma: Gamma drawn from ``[1 - gamma, 1 + gamma]``.
        noise: Largest standard deviation of additive Gaussian noise.
        blur: Largest Gaussian blur sigma, in positions.
        jpeg: Lowest JPEG quality (quality drawn from ``[jpeg, 95]``); 0 = off.
        p: Probability of each transformation.
    """

    flips: bool = False
    rot90: bool = False
    rotate: float = 0.0
    scale: float = 0.0
    shift: float = 0.0
    elastic: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    jpeg: int = 0
    p: float = 0.5

    def __post_init__(self) -> None:
        for name in ("rotate", "scale", "shift", "elastic", "brightness", "contrast", "gamma", "noise", "blur"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"augmentation {name} must be a number >= 0, got {value!r}")
        for name in ("scale", "contrast", "gamma"):
            if getattr(self, name) >= 1:
                raise ConfigError(f"augmentation {name} must be < 1 (a factor 1 +- {name}), got {getattr(self, name)}")
        if self.rotate > 180:
            raise ConfigError(f"augmentation rotate is in degrees, at most 180; got {self.rotate}")
        if not (isinstance(self.jpeg, int) and (self.jpeg == 0 or 1 <= self.jpeg <= 95)):
            raise ConfigError(f"augmentation jpeg must be 0 (off) or a quality in 1..95, got {self.jpeg!r}")
        if not 0.0 < self.p <= 1.0:
            raise ConfigError(f"augmentation p must lie in (0, 1], got {self.p}")

    @property
    def is_identity(self) -> bool:
        """True when no transformation is switched on."""
        return not any(getattr(self, f.name) for f in fields(self) if f.name != "p")

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain values (for manifests and fingerprints)."""
        return asdict(self)

    @classmethod
    def from_spec(cls, spec: AugmentPolicy | str | Mapping[str, Any] | None) -> AugmentPolicy:
        """A policy from a preset name, a mapping (``{"preset": ..., **overrides}``) or a policy.

        Raises:
            ConfigError: Unknown preset or field.
        """
        if spec is None:
            return PRESETS["none"]
        if isinstance(spec, AugmentPolicy):
            return spec
        if isinstance(spec, str):
            try:
                return PRESETS[spec]
            except KeyError:
                raise ConfigError(f"unknown augmentation preset {spec!r}; choose one of {', '.join(PRESETS)}") from None
        if isinstance(spec, Mapping):
            spec = dict(spec)
            base = cls.from_spec(spec.pop("preset", "none"))
            names = {f.name for f in fields(cls)}
            unknown = sorted(set(spec) - names)
            if unknown:
                raise ConfigError(f"unknown augmentation fields {unknown}; known: {', '.join(sorted(names))}")
            return replace(base, **spec)
        raise ConfigError(f"an augmentation policy is a preset name or a mapping, got {type(spec).__name__}")


PRESETS: dict[str, AugmentPolicy] = {
    "none": AugmentPolicy(),
    "flip_jitter": AugmentPolicy(flips=True, brightness=0.2, contrast=0.2),
    "standard": AugmentPolicy(flips=True, rot90=True, rotate=15.0, scale=0.1, elastic=1.0, brightness=0.2,
                              contrast=0.2, noise=0.05),
    "robust": AugmentPolicy(flips=True, rot90=True, shift=3, rotate=15.0, scale=0.1, elastic=1.0, brightness=0.2,
                            contrast=0.2, gamma=0.2, noise=0.05, blur=1.0, jpeg=50),
}


class _GreyJPEG(nn.Module):
    """kornia's differentiable JPEG for any channel count (each channel as R = G = B)."""

    def __init__(self, low: int, p: float) -> None:
        super().__init__()
        self.low, self.p = low, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        apply = torch.rand(b, device=x.device) < self.p
        if not bool(apply.any()):
            return x
        quality = torch.empty(b, device=x.device).uniform_(float(self.low), 95.0)
        planes = x.reshape(b * c, 1, h, w)
        # kornia wants sizes divisible by 16: pad by replication, crop afterwards.
        ph, pw = (-h) % 16, (-w) % 16
        padded = torch.nn.functional.pad(planes, (0, pw, 0, ph), mode="replicate")
        coded = kornia.enhance.jpeg_codec_differentiable(padded.repeat(1, 3, 1, 1), quality.repeat_interleave(c))
        coded = coded.mean(1, keepdim=True)[..., :h, :w].reshape(b, c, h, w)
        return torch.where(apply.view(b, 1, 1, 1), coded, x)


def _photometric(policy: AugmentPolicy) -> list[nn.Module]:
    p = policy.p
    ops: list[nn.Module] = []
    if policy.brightness:
        ops.append(K.RandomBrightness((1 - policy.brightness, 1 + policy.brightness), p=p))
    if policy.contrast:
        ops.append(K.RandomContrast((1 - policy.contrast, 1 + policy.contrast), p=p))
    if policy.gamma:
        ops.append(K.RandomGamma((1 - policy.gamma, 1 + policy.gamma), p=p))
    if policy.blur:
        sigma = max(policy.blur, 0.1)
        k = 2 * math.ceil(2 * sigma) + 1
        ops.append(K.RandomGaussianBlur((k, k), (0.1, sigma), p=p))
    if policy.noise:
        ops.append(_Noise(policy.noise, p))
    if policy.jpeg:
        ops.append(_GreyJPEG(policy.jpeg, p))
    return ops


class _Noise(nn.Module):
    """Additive Gaussian noise with a per-sample std drawn from ``[0, max_std]``."""

    def __init__(self, max_std: float, p: float) -> None:
        super().__init__()
        self.max_std, self.p = max_std, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        std = torch.rand(shape, device=x.device) * self.max_std * (torch.rand(shape, device=x.device) < self.p)
        return x + std * torch.randn_like(x)


class DifferentiableAugment(nn.Module):
    """Random augmentation of a batch and its targets, differentiable in the images.

    Args:
        policy: The transformations (an :class:`AugmentPolicy`, preset name or mapping).
        spatial_dims: 2 or 3.
        num_classes: Number of label values of segmentation targets (3D warps one-hot
            encode them); unused for class labels.

    Call with ``(images (B, C, *spatial), targets)``: targets are masks/label maps
    ``(B, 1, *spatial)`` (moved with the image) or class labels ``(B,)`` (unchanged).
    Returns ``(images, targets)`` of the same shapes, images clipped to [0, 1].
    """

    def __init__(self, policy: AugmentPolicy | str | Mapping[str, Any], spatial_dims: int, num_classes: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"augmentation supports 2D and 3D images, got spatial_dims={spatial_dims}")
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.policy = AugmentPolicy.from_spec(policy)
        if self.policy.elastic and spatial_dims == 3:
            raise ConfigError("elastic deformation is 2D only; set elastic=0 for volumes")
        if self.policy.jpeg and spatial_dims == 3:
            raise ConfigError("JPEG is a 2D codec; set jpeg=0 for volumes")
        self.spatial_dims = spatial_dims
        self.num_classes = num_classes
        pol, p = self.policy, self.policy.p
        self.photometric = nn.ModuleList(_photometric(pol))
        geometric: list[nn.Module] = []
        if spatial_dims == 2:
            if pol.flips:
                geometric += [K.RandomHorizontalFlip(p=0.5), K.RandomVerticalFlip(p=0.5)]
            if pol.rotate or pol.scale:
                geometric.append(K.RandomAffine(degrees=pol.rotate, scale=(1 - pol.scale, 1 + pol.scale), p=p))
            if pol.elastic:
                geometric.append(K.RandomElasticTransform(alpha=(pol.elastic, pol.elastic), sigma=(6.0, 6.0), p=p))
            self.geometric = K.AugmentationSequential(*geometric, data_keys=["input", "mask"]) if geometric else None
        else:
            if pol.flips:
                geometric += [K.RandomHorizontalFlip3D(p=0.5), K.RandomVerticalFlip3D(p=0.5), K.RandomDepthicalFlip3D(p=0.5)]
            if pol.rotate or pol.scale:
                geometric.append(K.RandomAffine3D(degrees=pol.rotate, scale=(1 - pol.scale, 1 + pol.scale), p=p))
            self.geometric = nn.Sequential(*geometric) if geometric else None

    def _shift(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Integer translations of up to ``shift`` positions per axis, zero filled (exact, no interpolation)."""
        s = int(round(self.policy.shift))
        spatial = x.shape[2:]
        pad = [s] * (2 * len(spatial))
        xp = torch.nn.functional.pad(x, pad)
        yp = None if y is None else torch.nn.functional.pad(y, pad)
        xs, ys = [], []
        for i in range(x.shape[0]):
            moved = float(torch.rand(())) < self.policy.p
            start = [int(v) for v in torch.randint(0, 2 * s + 1, (len(spatial),))] if moved else [s] * len(spatial)
            window = (slice(None), *(slice(a, a + n) for a, n in zip(start, spatial, strict=True)))
            xs.append(xp[i][window])
            if yp is not None:
                ys.append(yp[i][window])
        return torch.stack(xs), (None if yp is None else torch.stack(ys))

    def _rot90(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        planes = [(a, b) for a in range(2, x.dim()) for b in range(a + 1, x.dim()) if x.shape[a] == x.shape[b]]
        if not planes or float(torch.rand(())) >= self.policy.p:
            return x, y
        a, b = planes[int(torch.randint(len(planes), ()))]
        k = int(torch.randint(1, 4, ()))
        x = torch.rot90(x, k, dims=(a, b))
        return x, (None if y is None else torch.rot90(y, k, dims=(a, b)))

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment ``images`` (and masks in ``targets``) with fresh random parameters."""
        if images.dim() != self.spatial_dims + 2:
            raise ConfigError(f"expected {self.spatial_dims}D images (B, C, *spatial), got shape {tuple(images.shape)}")
        is_mask = targets.dim() == images.dim()
        mask = targets if is_mask else None
        x = images
        if self.policy.rot90:
            x, mask = self._rot90(x, mask)
        if self.policy.shift >= 1:
            x, mask = self._shift(x, mask)
        if self.geometric is not None:
            if self.spatial_dims == 2:
                if mask is not None:
                    x, m = self.geometric(x, mask.float())
                    mask = m.round().to(targets.dtype)
                else:
                    x = self.geometric(x, data_keys=["input"])
            else:
                x, mask = self._warp_3d(x, mask)
        if self.photometric:
            x = self._photometric(x)
        return x.clamp(0.0, 1.0), (mask if is_mask else targets)

    def _warp_3d(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        c = x.shape[1]
        if mask is None:
            return self.geometric(x), None
        one_hot = torch.nn.functional.one_hot(mask[:, 0].long(), self.num_classes).movedim(-1, 1).to(x.dtype)
        warped = self.geometric(torch.cat([x, one_hot], dim=1))
        return warped[:, :c], warped[:, c:].argmax(1, keepdim=True).to(mask.dtype)

    def _photometric(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(shape[0], -1, *shape[-2:]) if self.spatial_dims == 3 else x
        for op in self.photometric:
            flat = op(flat)
        return flat.reshape(shape)


def build_augment(
    policy: AugmentPolicy | str | Mapping[str, Any] | None, spatial_dims: int, num_classes: int = 2
) -> DifferentiableAugment | None:
    """A :class:`DifferentiableAugment`, or None for an identity policy."""
    pol = AugmentPolicy.from_spec(policy)
    if pol.is_identity:
        return None
    return DifferentiableAugment(for_dims(pol, spatial_dims), spatial_dims, num_classes)


def for_dims(policy: AugmentPolicy, spatial_dims: int) -> AugmentPolicy:
    """``policy`` without its 2D-only transformations (elastic, JPEG) when ``spatial_dims`` is 3."""
    if spatial_dims == 3 and (policy.elastic or policy.jpeg):
        return replace(policy, elastic=0.0, jpeg=0)
    return policy

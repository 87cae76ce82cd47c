"""nnU-Net v2's training augmentation of one sample, in torch: what both executors run for the ``nnunet`` preset.

The parameters are :class:`~ulmed.core.augment_policy.NnUNetAugment` (:data:`NNUNET` per
dimension); the steps follow nnunetv2's ``nnUNetTrainer.get_training_transforms`` and the
batchgeneratorsv2 transforms it builds, in their order and with their formulas:
``SpatialTransform`` (rotation and scaling of a centred sampling grid, one bilinear resampling,
zeros outside), ``GaussianNoiseTransform``, ``GaussianBlurTransform`` (separable kernels of
``round_odd(6 sigma + 0.5)`` taps, reflected borders), ``MultiplicativeBrightnessTransform``,
``ContrastTransform`` (about the channel mean, clamped to the channel's former range),
``SimulateLowResolutionTransform`` (nearest-exact down, linear up), ``GammaTransform`` (on
the min-max range, then mean and std restored; inverted: of ``-x``) and ``MirrorTransform``.
Masks move with the image by nearest neighbour (nnU-Net takes the argmax of bilinearly
resampled one-hot labels; the two differ at label boundaries only) and are 0 outside. One
difference of setting: nnU-Net warps a region larger than its patch into the patch, so rotated
corners mostly hold image content there; here the whole sample is warped (the patch is cut
afterwards), and corners that come from outside hold the image mean.

nnU-Net augments images that its preprocessing has z-scored, so a sample's channels are
z-scored here first (mean and std of the channel, nnU-Net's ``ZScoreNormalization``) and
mapped back afterwards: the noise std is then a fraction of the image's std, the brightness
factor scales about the mean, and the resampling fills with the mean, as in nnU-Net.

All draws come from a numpy ``Generator`` (:func:`draw`), the noise from a torch generator
seeded by it. The steps are differentiable in the image, so the optimisation's executor
(:class:`NnUNetStep`, which seeds a numpy generator per sample from torch's global one) can
back-propagate through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ulmed.core.augment_policy import NNUNET, NnUNetAugment, Range
from ulmed.errors import ConfigError

Channels = dict[int, float]
_EPS = 1e-7


@dataclass
class NnUNetDraw:
    """The random choices of one sample (empty mappings: the step does not act)."""

    affine: np.ndarray | None = None  # (d, d), maps the output's centred positions to the input's
    noise: tuple[float, int] | None = None  # (std, torch seed)
    blur: dict[int, tuple[float, ...]] = field(default_factory=dict)  # channel -> sigma per axis
    brightness: Channels = field(default_factory=dict)
    contrast: Channels = field(default_factory=dict)
    lowres: dict[int, tuple[float, ...]] = field(default_factory=dict)  # channel -> factor per axis
    gamma_inverted: Channels = field(default_factory=dict)
    gamma: Channels = field(default_factory=dict)
    mirror: tuple[int, ...] = ()


def bg_factor(bounds: Range, rng: np.random.Generator) -> float:
    """nnU-Net's ``BGContrast`` draw: below 1 or above 1 with probability 1/2 each, uniform on that side."""
    low, high = bounds
    if rng.random() < 0.5 and low < 1:
        return float(rng.uniform(low, 1.0))
    return float(rng.uniform(max(low, 1.0), high))


def in_plane(params: NnUNetAugment, spatial: tuple[int, ...]) -> bool:
    """Whether a volume is augmented per slice of its first axis (nnU-Net's "dummy 2D" augmentation)."""
    return len(spatial) == 3 and max(spatial) / spatial[0] > params.anisotropic


def _rotation(angle: float, a: int, b: int, dims: int) -> np.ndarray:
    """Rotation by ``angle`` (radians) in the plane of axes ``a`` and ``b``."""
    m = np.eye(dims)
    m[a, a], m[a, b], m[b, a], m[b, b] = math.cos(angle), -math.sin(angle), math.sin(angle), math.cos(angle)
    return m


def _draw_affine(params: NnUNetAugment, spatial: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """Rotation (p_rotation) and scaling (p_scaling), drawn independently; None when neither acts."""
    dims, flat = len(spatial), in_plane(params, spatial)
    rotate, scale = rng.random() < params.p_rotation, rng.random() < params.p_scaling
    if not (rotate or scale):
        return None
    if flat:
        limit = params.rotation_in_plane
    elif dims == 2 and max(spatial) / min(spatial) > params.elongated:
        limit = params.rotation_elongated
    else:
        limit = params.rotation
    factors = np.ones(dims)
    if scale:
        factors[1 if flat else 0:] = rng.uniform(*params.scaling)
    matrix = np.diag(factors)
    if rotate:
        planes = [(1, 2)] if flat else ([(0, 1)] if dims == 2 else [(1, 2), (0, 2), (0, 1)])  # 3D: Rz Ry Rx S
        for a, b in planes:
            angle = math.radians(rng.uniform(-limit, limit))
            matrix = _rotation(-angle if (a, b) == (0, 2) else angle, a, b, dims) @ matrix
    return matrix


def _per_channel(channels: int, p: float, rng: np.random.Generator) -> list[int]:
    return [c for c in range(channels) if rng.random() < p]


def draw(params: NnUNetAugment, shape: tuple[int, ...], rng: np.random.Generator) -> NnUNetDraw:
    """The random choices for a sample of ``shape (C, *spatial)``, in nnU-Net's order."""
    channels, spatial = shape[0], tuple(shape[1:])
    if len(spatial) != len(params.mirror_axes):
        raise ConfigError(f"nnU-Net parameters for {len(params.mirror_axes)}D, got a sample of shape {shape}")
    d = NnUNetDraw(affine=_draw_affine(params, spatial, rng))
    if rng.random() < params.p_noise:
        d.noise = (float(rng.uniform(*params.noise_std)), int(rng.integers(2**62)))
    if rng.random() < params.p_blur:
        d.blur = {c: tuple(float(rng.uniform(*params.blur_sigma)) for _ in spatial)
                  for c in _per_channel(channels, params.blur_channel_p, rng)}
    if rng.random() < params.p_brightness:
        d.brightness = {c: bg_factor(params.brightness, rng) for c in range(channels)}
    if rng.random() < params.p_contrast:
        d.contrast = {c: bg_factor(params.contrast, rng) for c in range(channels)}
    if rng.random() < params.p_lowres:
        keep_first = in_plane(params, spatial)
        d.lowres = {c: tuple(1.0 if keep_first and a == 0 else s for a in range(len(spatial)))
                    for c in _per_channel(channels, params.lowres_channel_p, rng)
                    for s in [float(rng.uniform(*params.lowres_scale))]}
    for name, p in (("gamma_inverted", params.p_gamma_inverted), ("gamma", params.p_gamma)):
        if rng.random() < p:
            setattr(d, name, {c: bg_factor(params.gamma, rng) for c in range(channels)})
    d.mirror = tuple(a for a in params.mirror_axes if rng.random() < 0.5)
    return d


def resample(image: torch.Tensor, mask: torch.Tensor | None, affine: np.ndarray) -> tuple[torch.Tensor, ...]:
    """``image (C, *spatial)`` and ``mask (K, *spatial)`` sampled at ``affine`` times their centred positions."""
    spatial = image.shape[1:]
    axes = [torch.linspace((1 - n) / 2, (n - 1) / 2, n, dtype=image.dtype, device=image.device) for n in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    grid = grid @ torch.as_tensor(affine.T, dtype=image.dtype, device=image.device)
    grid = (grid / torch.tensor([n / 2 for n in spatial], dtype=image.dtype, device=image.device)).flip(-1)[None]
    out = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if mask is None:
        return out, None
    moved = F.grid_sample(mask[None].to(image.dtype), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False)[0]
    return out, moved.round().to(mask.dtype)


def _kernel(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """batchgeneratorsv2's Gaussian: ``round_odd(6 sigma + 0.5)`` taps, normalised."""
    n = 6 * sigma + 0.5
    size = round(n)
    if size % 2 == 0:
        size = size + 1 if n - size >= 0 else size - 1
    t = torch.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=dtype, device=device)
    pdf = torch.exp(-0.5 * (t / sigma) ** 2)
    return pdf / pdf.sum()


def blur(plane: torch.Tensor, sigmas: tuple[float, ...]) -> torch.Tensor:
    """Separable Gaussian blur of one channel ``(*spatial)``, reflected borders."""
    for axis, sigma in enumerate(sigmas):
        k = _kernel(sigma, plane.dtype, plane.device)
        moved = plane.movedim(axis, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        half = k.numel() // 2
        mode = "reflect" if half < flat.shape[-1] else "replicate"
        flat = F.conv1d(F.pad(flat, (half, half), mode=mode), k.view(1, 1, -1))
        plane = flat.reshape(moved.shape).movedim(-1, axis)
    return plane


def gamma(plane: torch.Tensor, g: float, invert: bool) -> torch.Tensor:
    """nnU-Net's gamma on the channel's min-max range, mean and std restored (of ``-x`` when inverted)."""
    x = -plane if invert else plane
    mean, std = x.mean(), x.std()
    low, high = x.min(), x.max()
    span = high - low
    x = ((x - low) / span.clamp_min(_EPS)).clamp_min(1e-12) ** g * span + low  # clamp: finite gradients at 0
    x = (x - x.mean()) * (std / x.std().clamp_min(_EPS)) + mean
    return -x if invert else x


def lowres(plane: torch.Tensor, factors: tuple[float, ...]) -> torch.Tensor:
    """Down by ``factors`` with nearest neighbours (nearest-exact), back to the shape linearly."""
    shape = plane.shape
    small = [round(n * f) for n, f in zip(shape, factors)]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[plane.dim()]
    down = F.interpolate(plane[None, None], small, mode="nearest-exact")
    return F.interpolate(down, shape, mode=mode)[0, 0]


def _channelwise(x: torch.Tensor, chosen: dict[int, Any], op: Callable[[torch.Tensor, Any], torch.Tensor]
                 ) -> torch.Tensor:
    """``op(channel, chosen[c])`` on the chosen channels ``c`` of ``x (C, *spatial)``."""
    if not chosen:
        return x
    return torch.stack([op(x[c], chosen[c]) if c in chosen else x[c] for c in range(x.shape[0])])


def _contrast(plane: torch.Tensor, factor: float) -> torch.Tensor:
    mean = plane.mean()
    return torch.minimum(torch.maximum((plane - mean) * factor + mean, plane.min()), plane.max())


def apply(image: torch.Tensor, mask: torch.Tensor | None, d: NnUNetDraw) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply the choices ``d`` to a z-scored ``image (C, *spatial)`` and its label maps ``mask (K, *spatial)``."""
    x = image
    if d.affine is not None:
        x, mask = resample(x, mask, d.affine)
    if d.noise is not None:
        gen = torch.Generator().manual_seed(d.noise[1])
        x = x + d.noise[0] * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(x.device)
    x = _channelwise(x, d.blur, blur)
    x = _channelwise(x, d.brightness, lambda plane, m: plane * m)
    x = _channelwise(x, d.contrast, _contrast)
    x = _channelwise(x, d.lowres, lowres)
    x = _channelwise(x, d.gamma_inverted, lambda plane, g: gamma(plane, g, invert=True))
    x = _channelwise(x, d.gamma, lambda plane, g: gamma(plane, g, invert=False))
    if d.mirror:
        x = x.flip([a + 1 for a in d.mirror])
        mask = None if mask is None else mask.flip([a + 1 for a in d.mirror])
    return x, mask


def augment_sample(image: torch.Tensor, mask: torch.Tensor | None, params: NnUNetAugment,
                   rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    """nnU-Net's augmentation of ``image (C, *spatial)`` and ``mask (K, *spatial)`` in the z-scored frame.

    The image is mapped back to its own mean and std afterwards (not clipped).
    """
    dims = tuple(range(1, image.dim()))
    mean = image.mean(dim=dims, keepdim=True)
    std = image.std(dim=dims, keepdim=True, correction=0).clamp_min(1e-8)
    out, mask = apply((image - mean) / std, mask, draw(params, tuple(image.shape), rng))
    return out * std + mean, mask


class NnUNetStep(nn.Module):
    """The optimisation's executor of the ``nnunet`` preset: :func:`augment_sample` per sample of a batch.

    Each sample gets a numpy generator seeded from torch's global generator, so a seeded
    run is reproducible. A geometric step of :class:`~ulmed.core.augment.DifferentiableAugment`:
    takes and returns ``(images (B, C, *spatial), masks (B, K, *spatial) | None)``.
    """

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.params = NNUNET[spatial_dims]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        images, masks = [], []
        for i in range(x.shape[0]):
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            xi, mi = augment_sample(x[i], None if mask is None else mask[i], self.params, rng)
            images.append(xi)
            masks.append(mi)
        return torch.stack(images), (None if mask is None else torch.stack(masks))

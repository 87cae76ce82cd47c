"""Differentiable transformations of the kornia executor that kornia does not have as such.

Geometric steps take and return ``(images (B, C, *spatial), masks (B, K, *spatial) | None)``
and move both together (masks by nearest neighbour); photometric steps take and return
images. Randomness is torch's global generator; every step draws per sample whether it
acts, with its probability from the :class:`~ulmed.core.augment_policy.AugmentPolicy`.
"""

from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F
from torch import nn

from ulmed.core.augment_policy import ELASTIC_FIELD

Pair = tuple[torch.Tensor, "torch.Tensor | None"]


def _draw(n: int, p: float, device: torch.device) -> torch.Tensor:
    """Which of ``n`` samples a step with probability ``p`` acts on."""
    return torch.rand(n, device=device) < p


class Flip(nn.Module):
    """Flip each of ``axes`` (spatial axes, 0 = first) with probability 0.5 per sample."""

    def __init__(self, axes: tuple[int, ...]) -> None:
        super().__init__()
        self.axes = axes

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> Pair:
        for axis in self.axes:
            chosen = _draw(x.shape[0], 0.5, x.device).view(-1, *([1] * (x.dim() - 1)))
            x = torch.where(chosen, x.flip(axis + 2), x)
            if mask is not None:
                mask = torch.where(chosen, mask.flip(axis + 2), mask)
        return x, mask


class Rot90(nn.Module):
    """Rotate by ``k * 90`` degrees, ``k`` in 0..3, in a random plane of equal sides (probability ``p``)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> Pair:
        planes = [(a, b) for a in range(2, x.dim()) for b in range(a + 1, x.dim()) if x.shape[a] == x.shape[b]]
        if not planes:
            return x, mask
        xs, ms = [], []
        for i in range(x.shape[0]):
            xi, mi = x[i : i + 1], None if mask is None else mask[i : i + 1]
            if float(torch.rand(())) < self.p:
                a, b = planes[int(torch.randint(len(planes), ()))]
                k = int(torch.randint(0, 4, ()))
                xi = torch.rot90(xi, k, dims=(a, b))
                mi = None if mi is None else torch.rot90(mi, k, dims=(a, b))
            xs.append(xi)
            ms.append(mi)
        return torch.cat(xs), (None if mask is None else torch.cat(ms))


class Shift(nn.Module):
    """Integer translations of up to ``shift`` positions per axis, zero filled (exact, no interpolation)."""

    def __init__(self, shift: int, p: float) -> None:
        super().__init__()
        self.shift, self.p = shift, p

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> Pair:
        s, spatial = self.shift, x.shape[2:]
        pad = [s] * (2 * len(spatial))
        xp = F.pad(x, pad)
        mp = None if mask is None else F.pad(mask, pad)
        xs, ms = [], []
        for i in range(x.shape[0]):
            moved = float(torch.rand(())) < self.p
            start = [int(v) for v in torch.randint(0, 2 * s + 1, (len(spatial),))] if moved else [s] * len(spatial)
            window = (slice(None), *(slice(a, a + n) for a, n in zip(start, spatial, strict=True)))
            xs.append(xp[i][window])
            if mp is not None:
                ms.append(mp[i][window])
        return torch.stack(xs), (None if mp is None else torch.stack(ms))


def gaussian_smooth(field: torch.Tensor, sigma: float, truncate: float, border: str) -> torch.Tensor:
    """Separable Gaussian smoothing of ``field (N, C, *spatial)`` over its spatial axes.

    Args:
        field: The values to smooth.
        sigma: Standard deviation in positions.
        truncate: Kernel radius in sigmas.
        border: ``replicate`` or ``zeros`` continuation beyond the edges.
    """
    radius = max(1, int(truncate * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=field.dtype, device=field.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    mode = "replicate" if border == "replicate" else "constant"
    for axis in range(2, field.dim()):
        moved = field.movedim(axis, -1)
        flat = moved.reshape(-1, 1, moved.shape[-1])
        flat = F.conv1d(F.pad(flat, (radius, radius), mode=mode), kernel)
        field = flat.reshape(moved.shape).movedim(-1, axis)
    return field


class Elastic(nn.Module):
    """Elastic deformation: displacement ``alpha * G_sigma * noise`` in positions (probability ``p``).

    The noise and borders follow :data:`~ulmed.core.augment_policy.ELASTIC_FIELD` of the
    dimension, so ``alpha`` and ``sigma`` mean what they mean to the evaluation's trainer.
    """

    def __init__(self, alpha: float, sigma: float, p: float, spatial_dims: int) -> None:
        super().__init__()
        self.alpha, self.sigma, self.p = alpha, sigma, p
        self.law = ELASTIC_FIELD[spatial_dims]

    def displacement(self, n: int, spatial: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """``n`` random displacement fields ``(n, dims, *spatial)`` in positions, axes in spatial order."""
        shape = (n, len(spatial), *spatial)
        if self.law.noise == "uniform":
            noise = torch.rand(shape, device=device) * 2 - 1
        else:
            noise = torch.randn(shape, device=device)
            noise = noise / noise.flatten(1).abs().amax(1).clamp_min(1e-6).view(-1, *([1] * (noise.dim() - 1)))
        return gaussian_smooth(noise, self.sigma, self.law.truncate, self.law.field_border) * self.alpha

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> Pair:
        chosen = _draw(x.shape[0], self.p, x.device)
        if not bool(chosen.any()):
            return x, mask
        spatial = tuple(x.shape[2:])
        shift = self.displacement(int(chosen.sum()), spatial, x.device).to(x.dtype)
        axes = torch.meshgrid(*[torch.arange(s, dtype=x.dtype, device=x.device) for s in spatial], indexing="ij")
        coords = [(a + shift[:, i]) * (2.0 / max(s - 1, 1)) - 1.0 for i, (a, s) in enumerate(zip(axes, spatial))]
        grid = torch.stack(coords[::-1], dim=-1)  # grid_sample wants (x, y[, z]) = reversed spatial axes
        pad = "border" if self.law.image_border == "border" else "zeros"
        x = x.clone()
        x[chosen] = F.grid_sample(x[chosen], grid, mode="bilinear", padding_mode=pad, align_corners=True)
        if mask is not None:
            warped = F.grid_sample(mask[chosen].to(x.dtype), grid, mode="nearest", padding_mode=pad, align_corners=True)
            mask = mask.clone()
            mask[chosen] = warped.round().to(mask.dtype)
        return x, mask


class BrightnessContrast(nn.Module):
    """``x * a + b`` with ``a`` in ``1 +- contrast`` and ``b`` in ``+- brightness`` (probability ``p``)."""

    def __init__(self, brightness: float, contrast: float, p: float) -> None:
        super().__init__()
        self.brightness, self.contrast, self.p = brightness, contrast, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        on = _draw(x.shape[0], self.p, x.device).view(shape).to(x.dtype)
        a = 1 + (torch.rand(shape, device=x.device) * 2 - 1) * self.contrast * on
        b = (torch.rand(shape, device=x.device) * 2 - 1) * self.brightness * on
        return x * a + b


class Noise(nn.Module):
    """Additive Gaussian noise with a per-sample std drawn from ``[low, high]`` (probability ``p``)."""

    def __init__(self, low: float, high: float, p: float) -> None:
        super().__init__()
        self.low, self.high, self.p = low, high, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        on = _draw(x.shape[0], self.p, x.device).view(shape).to(x.dtype)
        std = (self.low + torch.rand(shape, device=x.device) * (self.high - self.low)) * on
        return x + std * torch.randn_like(x)


class GreyJPEG(nn.Module):
    """kornia's differentiable JPEG for any channel count (each channel as R = G = B)."""

    def __init__(self, low: int, p: float) -> None:
        super().__init__()
        self.low, self.p = low, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        b, c, h, w = x.shape
        apply = _draw(b, self.p, x.device)
        if not bool(apply.any()):
            return x
        quality = torch.empty(b, device=x.device).uniform_(float(self.low), 95.0)
        planes = x.reshape(b * c, 1, h, w)
        # kornia wants sizes divisible by 16: pad by replication, crop afterwards.
        ph, pw = (-h) % 16, (-w) % 16
        padded = F.pad(planes, (0, pw, 0, ph), mode="replicate")
        coded = kornia.enhance.jpeg_codec_differentiable(padded.repeat(1, 3, 1, 1), quality.repeat_interleave(c))
        coded = coded.mean(1, keepdim=True)[..., :h, :w].reshape(b, c, h, w)
        return torch.where(apply.view(b, 1, 1, 1), coded, x)


def blur_kernel(sigma: float) -> int:
    """Odd kernel size that holds a Gaussian of ``sigma`` to two sigmas."""
    return 2 * math.ceil(2 * max(sigma, 0.1)) + 1

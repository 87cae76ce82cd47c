"""The torch steps of the kornia executor: flips, elastic field, brightness/contrast, noise."""

from __future__ import annotations

import math

import torch

from ulmed.core.augment_ops import BrightnessContrast, Elastic, Flip, Noise, gaussian_smooth


def test_gaussian_smoothing_keeps_constants_and_shrinks_white_noise():
    const = torch.full((1, 1, 20, 20), 3.0)
    assert torch.allclose(gaussian_smooth(const, 2.0, 4.0, "replicate"), const)
    torch.manual_seed(0)
    noise = torch.randn(1, 1, 200, 200)
    smooth = gaussian_smooth(noise, 3.0, 4.0, "replicate")[..., 20:-20, 20:-20]
    assert abs(smooth.std().item() - 1 / (2 * math.sqrt(math.pi) * 3.0)) < 0.02  # the 2D white-noise law


def test_elastic_displacement_is_in_positions_and_scales_with_alpha():
    torch.manual_seed(0)
    weak, strong = Elastic(10.0, 6.0, 1.0, 3), Elastic(30.0, 6.0, 1.0, 3)
    fields = [e.displacement(4, (24, 24, 24), torch.device("cpu")) for e in (weak, strong)]
    rms = [f.pow(2).sum(1).mean().sqrt().item() for f in fields]
    assert 2.5 < rms[1] / rms[0] < 3.5 and 0.1 < rms[1] < 1.0  # MONAI magnitude 30 / sigma 6: about 0.3 voxel
    image = torch.rand(2, 1, 24, 24, 24)
    mask = (image > 0.5).long()
    out, moved = strong(image, mask)
    assert out.shape == image.shape and moved.dtype == mask.dtype and not torch.equal(out, image)


def test_flip_moves_only_the_given_axes():
    x = torch.arange(24.0).reshape(1, 1, 2, 3, 4).repeat(16, 1, 1, 1, 1)
    torch.manual_seed(0)
    out, mask = Flip((0,))(x, x.long())
    for o in out:
        assert torch.equal(o, x[0]) or torch.equal(o, x[0].flip(1))
    assert torch.equal(mask.float(), out)


def test_brightness_contrast_and_noise_ranges():
    x = torch.full((400, 1, 4, 4), 0.5)
    torch.manual_seed(0)
    level = BrightnessContrast(0.2, 0.2, 1.0)(x).mean((1, 2, 3))
    assert 0.2 - 1e-6 <= level.min() < 0.3 and 0.7 < level.max() <= 0.8 + 1e-6
    std = Noise(0.01, 0.05, 1.0)(torch.full((400, 1, 32, 32), 0.5)).std((1, 2, 3))
    assert 0.008 < std.min() < 0.012 and 0.045 < std.max() < 0.053

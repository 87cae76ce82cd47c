"""nnU-Net v2's augmentation: the probabilities it draws, the steps it applies (against batchgeneratorsv2 itself)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ulmed.core import augment_nnunet as N
from ulmed.core.augment_policy import NNUNET
from ulmed.errors import ConfigError


def _draws(shape: tuple[int, ...], n: int, seed: int = 0) -> list[N.NnUNetDraw]:
    rng = np.random.default_rng(seed)
    return [N.draw(NNUNET[len(shape) - 1], shape, rng) for _ in range(n)]


def _scaled_rotated(affine: np.ndarray | None) -> tuple[bool, bool]:
    if affine is None:
        return False, False
    s = abs(np.linalg.det(affine)) ** (1 / len(affine))
    return not math.isclose(s, 1.0, abs_tol=1e-9), not np.allclose(affine / s, np.eye(len(affine)))


@pytest.mark.parametrize("shape", [(1, 32, 32), (2, 16, 16, 16)])
def test_each_step_fires_with_nnunets_probability(shape):
    draws = _draws(shape, 3000)
    rate = lambda hit: float(np.mean([bool(hit(d)) for d in draws]))  # noqa: E731
    scaled, rotated = (rate(lambda d, k=k: _scaled_rotated(d.affine)[k]) for k in (0, 1))
    assert abs(scaled - 0.2) < 0.03 and abs(rotated - 0.2) < 0.03
    assert abs(rate(lambda d: d.affine is not None) - 0.36) < 0.03  # drawn independently: 1 - 0.8^2
    expected = {"noise": 0.1, "brightness": 0.15, "contrast": 0.15, "gamma_inverted": 0.1, "gamma": 0.3}
    for name, p in expected.items():
        assert abs(rate(lambda d, name=name: getattr(d, name)) - p) < 0.025, name
    channels = shape[0]  # blur and low resolution: the step, then each channel with p 0.5
    assert abs(rate(lambda d: d.blur) - 0.2 * (1 - 0.5**channels)) < 0.025
    assert abs(rate(lambda d: d.lowres) - 0.25 * (1 - 0.5**channels)) < 0.025
    for axis in range(len(shape) - 1):
        assert abs(rate(lambda d, axis=axis: axis in d.mirror) - 0.5) < 0.04
    factors = [f for d in draws for f in d.brightness.values()]
    assert 0.75 <= min(factors) and max(factors) <= 1.25 and abs(np.mean(np.array(factors) < 1) - 0.5) < 0.08


def _angles_2d(draws: list[N.NnUNetDraw]) -> np.ndarray:
    return np.array([abs(math.degrees(math.atan2(d.affine[1, 0], d.affine[0, 0]))) for d in draws
                     if d.affine is not None and _scaled_rotated(d.affine)[1]])


def test_rotation_ranges_follow_the_shape():
    assert _angles_2d(_draws((1, 32, 32), 1500)).max() > 150  # square: +-180 deg
    assert _angles_2d(_draws((1, 16, 40), 1500)).max() <= 15 + 1e-9  # sides differ by more than 1.5x: +-15 deg
    flat = [d for d in _draws((1, 4, 32, 32), 1500) if d.affine is not None]
    assert all(np.allclose(d.affine[0], [1, 0, 0]) and np.allclose(d.affine[:, 0], [1, 0, 0]) for d in flat)
    assert all(f[0] == 1.0 for d in _draws((1, 4, 32, 32), 600) for f in d.lowres.values())  # first axis kept
    assert any(f[0] < 1.0 for d in _draws((1, 16, 16, 16), 600) for f in d.lowres.values())
    with pytest.raises(ConfigError, match="2D"):
        N.draw(NNUNET[2], (1, 8, 8, 8), np.random.default_rng(0))


def test_the_steps_are_batchgeneratorsv2s():
    pytest.importorskip("batchgeneratorsv2")
    from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.noise.gaussian_blur import blur_dimension
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.spatial.spatial import (
        SpatialTransform,
        _convert_my_grid_to_grid_sample_grid,
        _create_centered_identity_grid2,
        create_affine_matrix_3d,
    )

    torch.manual_seed(0)
    shape = (10, 14, 12)
    image, seg = torch.rand(2, *shape), (torch.rand(1, *shape) * 3).floor().long()
    affine = create_affine_matrix_3d([0.3, -0.2, 0.5], [0.8] * 3)
    grid = _create_centered_identity_grid2(shape).float() @ torch.from_numpy(affine.T).float()
    grid = _convert_my_grid_to_grid_sample_grid(grid, shape)
    spatial = SpatialTransform(shape, 0, False, mode_seg="nearest")
    ours, our_seg = N.resample(image, seg, affine)
    torch.testing.assert_close(ours, spatial._apply_to_image(image.clone(), grid=grid))
    assert torch.equal(our_seg, spatial._apply_to_segmentation(seg.clone(), grid=grid))
    blurred = image[:1]
    for axis, sigma in enumerate((0.6, 0.9, 0.7)):
        blurred = blur_dimension(blurred, sigma, axis)
    torch.testing.assert_close(N.blur(image[0], (0.6, 0.9, 0.7)), blurred[0])
    one = {"apply_to_channel": torch.tensor([0])}
    for invert in (False, True):
        params = {**one, "retain_stats": torch.tensor([True]), "invert_image": torch.tensor([invert]),
                  "gamma": torch.tensor([1.3])}
        theirs = GammaTransform((0.7, 1.5), 0, False, 1, 1)._apply_to_image(image[:1].clone(), **params)[0]
        torch.testing.assert_close(N.gamma(image[0], 1.3, invert), theirs)
    contrast = ContrastTransform((0.75, 1.25), True, False)._apply_to_image(image[:1].clone(), **one,
                                                                            multipliers=torch.tensor([1.2]))
    torch.testing.assert_close(N._contrast(image[0], 1.2), contrast[0])
    low = SimulateLowResolutionTransform((0.5, 1), False, True, None)
    theirs = low._apply_to_image(image[:1].clone(), **one, scales=torch.tensor([[0.6] * 3]))
    torch.testing.assert_close(N.lowres(image[0], (0.6,) * 3), theirs[0])


def _every_step(channels: int, dims: int) -> N.NnUNetDraw:
    return N.NnUNetDraw(
        affine=np.diag([1.1] * dims) @ N._rotation(0.3, 0, 1, dims), noise=(0.05, 1),
        blur={0: (0.7,) * dims}, brightness=dict.fromkeys(range(channels), 1.1),
        contrast=dict.fromkeys(range(channels), 0.9), lowres={0: (0.6,) * dims},
        gamma_inverted=dict.fromkeys(range(channels), 1.2), gamma=dict.fromkeys(range(channels), 0.8),
        mirror=tuple(range(dims)))


@pytest.mark.parametrize("dims", [2, 3])
def test_every_step_is_differentiable_in_the_image(dims):
    torch.manual_seed(0)
    x = torch.randn(2, *([12] * dims), requires_grad=True)
    out, _ = N.apply(x, None, _every_step(2, dims))
    (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
    assert out.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0


def test_masks_move_with_the_image_and_seeded_runs_repeat():
    mask = torch.zeros(1, 24, 24, dtype=torch.long)
    mask[0, 3:10, 4:15] = 1
    image = 0.2 + 0.6 * mask.float()
    for seed in range(30):
        out, moved = N.augment_sample(image, mask, NNUNET[2], np.random.default_rng(seed))
        assert set(moved.unique().tolist()) <= {0, 1} and moved.dtype == mask.dtype
        if moved.sum() and (moved == 0).sum():
            assert out[0][moved[0] == 1].mean() > out[0][moved[0] == 0].mean()  # the bright square under the mask
        again = N.augment_sample(image, mask, NNUNET[2], np.random.default_rng(seed))
        assert torch.equal(out, again[0]) and torch.equal(moved, again[1])
    step = N.NnUNetStep(3)
    volume, labels = torch.rand(2, 1, 6, 8, 8), torch.zeros(2, 2, 6, 8, 8, dtype=torch.long)
    labels[:, :, :3] = 1
    torch.manual_seed(1)
    out, both = step(volume, labels)
    assert out.shape == volume.shape and torch.equal(both[:, :1], both[:, 1:])  # label channels move together

"""Differentiable augmentation: gradients reach the image, geometry moves mask and image together."""

from __future__ import annotations

import pytest
import torch

from ulmed.core.augment import DEFINITIONS, AugmentPolicy, DifferentiableAugment, build_augment
from ulmed.core.bilevel import MinMinConfig, min_min
from ulmed.errors import ConfigError

SINGLE_2D = {
    "flips": {"flips": True}, "rot90": {"rot90": True}, "rotate": {"rotate": 15.0}, "scale": {"scale": 0.1},
    "shift": {"shift": 3}, "elastic": {"elastic": 30.0}, "translate": {"translate": 2.0},
    "brightness": {"brightness": 0.2}, "contrast": {"contrast": 0.2},
    "gamma": {"gamma": 0.2}, "noise": {"noise": 0.05}, "blur": {"blur": 1.0}, "jpeg": {"jpeg": 50},
}
SINGLE_3D = {k: v for k, v in SINGLE_2D.items() if k != "jpeg"}


def disc_masks(n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Off-centre discs/balls: no flip or rotation leaves them where they were."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij")
    out = []
    for i in range(n):
        centre = [s * (0.3 + 0.05 * i) for s in shape]
        r2 = sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True))
        out.append((r2 < (min(shape) * 0.25) ** 2).long())
    return torch.stack(out)[:, None]


@pytest.mark.parametrize(("dims", "name"), [(2, n) for n in SINGLE_2D] + [(3, n) for n in SINGLE_3D])
def test_gradient_reaches_the_image_through_each_transformation(dims, name):
    options = (SINGLE_2D if dims == 2 else SINGLE_3D)[name]
    aug = DifferentiableAugment(AugmentPolicy(p=1.0, **options), dims, num_classes=2)
    shape = (3, 1, 32, 32) if dims == 2 else (2, 1, 16, 16, 16)
    torch.manual_seed(0)
    x = (torch.rand(shape) * 0.6 + 0.2).requires_grad_(True)  # away from the clipping bounds
    y = disc_masks(shape[0], shape[2:])
    out, y_out = aug(x, y)
    assert out.shape == x.shape and y_out.shape == y.shape and y_out.dtype == y.dtype
    weights = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    (g,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


@pytest.mark.parametrize("dims", [2, 3])
def test_geometric_transformations_move_mask_and_image_together(dims):
    policy = AugmentPolicy(flips=True, rot90=True, shift=3, rotate=15.0, scale=0.1, translate=2.0, elastic=30.0, p=1.0)
    aug = DifferentiableAugment(policy, dims, num_classes=2)
    shape = (32, 32) if dims == 2 else (16, 16, 16)
    y = disc_masks(4, shape)
    torch.manual_seed(3)
    x_out, y_out = aug(y.float(), y)  # the image *is* the mask
    assert not torch.equal(y_out, y)  # the transformations did move things
    agree = ((x_out > 0.5).long() == y_out).float().mean()
    assert agree > 0.97


def test_photometric_transformations_leave_masks_and_class_labels_alone():
    aug = DifferentiableAugment(AugmentPolicy(brightness=0.2, contrast=0.2, noise=0.05, p=1.0), 2)
    x = torch.full((2, 1, 16, 16), 0.5)
    y = disc_masks(2, (16, 16))
    torch.manual_seed(0)
    x_out, y_out = aug(x, y)
    assert torch.equal(y_out, y) and not torch.equal(x_out, x)
    assert (x_out >= 0).all() and (x_out <= 1).all()
    labels = torch.tensor([0, 1])
    _, same = DifferentiableAugment("standard", 2)(x, labels)
    assert torch.equal(same, labels)


def test_augmentation_is_reproducible_for_a_torch_seed():
    aug = DifferentiableAugment("robust", 2)
    x, y = torch.rand(2, 1, 32, 32), disc_masks(2, (32, 32))
    torch.manual_seed(5)
    a = aug(x, y)
    torch.manual_seed(5)
    b = aug(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_presets_and_errors_of_the_executor():
    assert DifferentiableAugment("standard", 3).policy == DEFINITIONS[3]["standard"]  # a preset per dimension
    assert AugmentPolicy.from_spec(None).is_identity and build_augment("none", 2) is None
    assert build_augment("robust", 3).policy.jpeg == 0  # 2D-only transformations dropped for volumes
    with pytest.raises(ConfigError, match="2D codec"):
        DifferentiableAugment({"jpeg": 50}, 3)
    with pytest.raises(ConfigError, match="expected 2D images"):
        DifferentiableAugment("standard", 2)(torch.rand(1, 1, 4, 4, 4), torch.zeros(1, dtype=torch.long))


def test_two_mask_channels_move_together():
    """UnSeg passes the true mask and the loss target as two channels."""
    aug = DifferentiableAugment(AugmentPolicy(flips=True, rotate=15.0, elastic=30.0, p=1.0), 2)
    masks = disc_masks(3, (32, 32))
    torch.manual_seed(2)
    _, both = aug(torch.rand(3, 1, 32, 32), torch.cat([masks, masks], dim=1))
    assert torch.equal(both[:, :1], both[:, 1:]) and not torch.equal(both[:, :1], masks)


def test_min_min_sees_augmented_views_and_stays_deterministic(hc18_eight):
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    x, y = hc18_eight
    y = y.long()

    def run(augment):
        torch.manual_seed(0)
        model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))
        config = MinMinConfig(eps=8 / 255, train_steps=2, pgd_steps=3, max_rounds=1, batch_size=4, eot_samples=2,
                              step_schedule="dynamic")
        return min_min(model, None, x, y, None, DiceCELoss(to_onehot_y=True, softmax=True),
                       lambda o, t: 0.0, config, augment=augment)[0]

    plain = run(None)
    first = run(build_augment("standard", 2))
    second = run(build_augment("standard", 2))
    assert torch.equal(first, second)
    assert not torch.equal(first, plain)
    assert first.abs().max() <= 8 / 255 + 1e-7


@pytest.mark.parametrize("dims", [2, 3])
def test_the_nnunet_preset_runs_differentiably_and_moves_masks(dims):
    aug = build_augment("nnunet", dims)
    shape = (16,) * dims
    y = disc_masks(6, shape)
    torch.manual_seed(0)
    x = (y.float() * 0.6 + 0.2).requires_grad_(True)
    out, y_out = aug(x, y)
    assert out.shape == x.shape and y_out.shape == y.shape and y_out.dtype == y.dtype
    assert (out[y_out == 1].mean() > out[y_out == 0].mean() + 0.2).item()  # bright discs still under the masks
    (g,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    torch.manual_seed(0)
    again = aug(x, y)
    assert torch.equal(again[0], out) and torch.equal(again[1], y_out)  # seeded by torch's generator

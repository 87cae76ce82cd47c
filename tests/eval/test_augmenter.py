"""The evaluation's trainer augmentation, and its agreement with the optimisation's (one definition, two executors)."""

from __future__ import annotations

import itertools

import albumentations as A
import numpy as np
import pytest
import torch

from ulmed.core.augment import DifferentiableAugment
from ulmed.core.augment_policy import DEFINITIONS, FLIP_AXES, AugmentPolicy
from ulmed.errors import ConfigError
from ulmed.eval.augmenter import Augmenter


def _volume_pair() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((12, 10, 12), dtype=np.int64)
    mask[1:5, 2:9, 0:3] = 1
    mask[7:11, 1:4, 6:12] = 2
    return (mask / 2.0).astype(np.float32)[None], mask


def test_2d_flips_move_image_and_mask_together():
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 40), dtype=np.int64)
    mask[5:20, 3:12] = 1
    image = (0.2 + 0.6 * mask + 0.1 * rng.random(mask.shape)).astype(np.float32)[None]
    aug = Augmenter(AugmentPolicy(flips=True))
    changed = 0
    for _ in range(8):
        out, out_mask = aug(image, mask.copy(), rng)
        np.testing.assert_array_equal(out_mask, (out[0] > 0.5).astype(np.int64))
        changed += not np.array_equal(out_mask, mask)
    assert changed > 0


def test_3d_flips_only_along_the_first_axis():
    image, mask = _volume_pair()
    aug = Augmenter(AugmentPolicy(flips=True))
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(12):
        out, out_mask = aug(image, mask.copy(), rng)
        np.testing.assert_array_equal(out_mask, np.rint(out[0] * 2).astype(np.int64))  # exact on the grid
        flipped = not np.array_equal(out_mask, mask)
        if flipped:
            np.testing.assert_array_equal(out_mask, mask[::-1])  # left-right only: head/body stay apart
        seen.add(flipped)
    assert seen == {True, False}


def test_3d_affine_and_elastic_move_image_and_labels_together():
    image, mask = _volume_pair()
    aug = Augmenter({"preset": "standard", "noise": 0.0, "brightness": 0.0, "contrast": 0.0})
    rng = np.random.default_rng(3)
    changed = 0
    for _ in range(10):
        out, out_mask = aug(image, mask.copy(), rng)
        assert out.shape == image.shape and out_mask.dtype == mask.dtype
        assert set(np.unique(out_mask)) <= {0, 1, 2}  # nearest neighbour: no new labels
        assert np.mean(np.rint(out[0] * 2).astype(np.int64) == out_mask) > 0.85
        changed += not np.array_equal(out_mask, mask) and not np.array_equal(out_mask, mask[::-1])
    assert changed >= 3  # RandAffined (p=0.5) and Rand3DElasticd (p=0.2) did act


def test_transformations_the_evaluation_does_not_have_are_refused():
    with pytest.raises(ConfigError, match="no gamma"):
        Augmenter("robust")
    with pytest.raises(ConfigError, match="3D trainer augmentation has no rot90"):
        Augmenter(AugmentPolicy(rot90=True))(np.zeros((1, 4, 4, 4), np.float32), 0, np.random.default_rng(0))


# -- agreement: both executors are built from one definition --------------------------------------------------------


def _flipped_axes(out: np.ndarray, image: np.ndarray, dims: int) -> tuple[int, ...]:
    """Which spatial axes ``out`` is ``image`` flipped along (a ValueError when it is none of the flips)."""
    for k in range(dims + 1):
        for axes in itertools.combinations(range(dims), k):
            if np.array_equal(out, np.flip(image, [a + 1 for a in axes]) if axes else image):
                return axes
    raise ValueError("not a flip of the image")


@pytest.mark.parametrize("dims", [2, 3])
def test_both_executors_flip_the_same_axes(dims):
    shape = (6, 8) if dims == 2 else (4, 6, 8)
    image = (np.arange(np.prod(shape)).reshape(1, *shape) / np.prod(shape)).astype(np.float32)
    spec = {"preset": "flip_jitter", "brightness": 0.0, "contrast": 0.0}  # the definition's flips alone
    rng = np.random.default_rng(0)
    evaluation = [_flipped_axes(Augmenter(spec)(image, 0, rng)[0], image, dims) for _ in range(80)]
    torch.manual_seed(0)
    out = DifferentiableAugment(spec, dims)(torch.from_numpy(image)[None].repeat(80, *[1] * (dims + 1)),
                                            torch.zeros(80, dtype=torch.long))[0].numpy()
    optimisation = [_flipped_axes(o, image, dims) for o in out]
    axes = FLIP_AXES[dims]
    combinations = {c for k in range(len(axes) + 1) for c in itertools.combinations(axes, k)}
    for seen in (evaluation, optimisation):  # every combination of the definition's axes, each axis on its own
        assert set(seen) == combinations


def _joint_rate(fired: list[tuple[bool, bool]]) -> tuple[float, float, float]:
    a, b = np.array(fired).T
    return float(a.mean()), float(b.mean()), float((a & b).mean())


def test_albumentations_seeds_every_step_of_a_pipeline_alike():
    """The library behaviour that the 2D executor works around: one seed per pipeline couples its steps."""
    image = np.arange(48, dtype=np.float32).reshape(6, 8, 1)
    compose = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])
    fired = []
    for seed in range(200):
        compose.set_random_seed(seed)
        out = compose(image=image)["image"]
        fired.append((bool(out[0, 0, 0] in (image[0, -1, 0], image[-1, -1, 0])),
                      bool(out[0, 0, 0] in (image[-1, 0, 0], image[-1, -1, 0]))))
    assert _joint_rate(fired)[2] > 0.4  # independent steps would fire together a quarter of the time


def test_2d_steps_of_equal_probability_fire_independently():
    rng = np.random.default_rng(0)
    mask = np.zeros((6, 8), dtype=np.int64)
    mask[0, 0] = 1
    image = (np.arange(48).reshape(1, 6, 8) / 96 + 0.25).astype(np.float32)
    flips = Augmenter(AugmentPolicy(flips=True))
    fired = [_flipped_axes(flips(image, 0, rng)[0], image, 2) for _ in range(400)]
    h, v, both = _joint_rate([(1 in axes, 0 in axes) for axes in fired])
    assert 0.43 < h < 0.57 and 0.43 < v < 0.57 and 0.18 < both < 0.32, (h, v, both)
    flip_bc = Augmenter(AugmentPolicy(flips=True, brightness=0.2, contrast=0.2, p=0.5))  # jitter with p 0.5
    pairs = []
    for _ in range(400):
        out, out_mask = flip_bc(image, mask, rng)
        axes = _flipped_axes(out_mask[None], mask[None], 2)  # the mask tells the flip, the image the jitter
        pairs.append((1 in axes, not np.allclose(out, np.flip(image, [a + 1 for a in axes]), atol=1e-6)))
    h, bc, both = _joint_rate(pairs)
    assert 0.43 < h < 0.57 and 0.43 < bc < 0.57 and 0.18 < both < 0.32, (h, bc, both)


def _displacement_rms(out: np.ndarray, ramps: np.ndarray, shape: tuple[int, ...]) -> float:
    """RMS displacement in positions, read from warped coordinate ramps away from the border."""
    inner = (slice(None),) * (out.ndim - len(shape)) + tuple(slice(6, -6) for _ in shape)
    scale = np.array(shape, dtype=np.float64).reshape((-1,) + (1,) * len(shape)) / 0.5
    return float(np.sqrt((((out - ramps)[inner] * scale) ** 2).sum(-len(shape) - 1).mean()))


@pytest.mark.parametrize("shape", [(48, 48), (24, 32, 24)])
def test_both_executors_deform_elastically_by_the_same_amount(shape):
    dims = len(shape)
    standard = DEFINITIONS[dims]["standard"]
    policy = AugmentPolicy(elastic=standard.elastic, elastic_sigma=standard.elastic_sigma, elastic_p=1.0)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    ramps = np.stack([0.25 + 0.5 * g / s for g, s in zip(grid, shape)]).astype(np.float32)  # one channel per axis
    rng = np.random.default_rng(0)
    evaluation = np.mean([_displacement_rms(Augmenter(policy)(ramps, 0, rng)[0], ramps, shape) for _ in range(6)])
    torch.manual_seed(0)
    batch = torch.from_numpy(ramps)[None].repeat(6, *[1] * (dims + 1))
    warped = DifferentiableAugment(policy, dims)(batch, torch.zeros(6))[0].numpy()
    optimisation = _displacement_rms(warped, ramps, shape)
    assert evaluation > 0.1 and optimisation > 0.1
    assert 0.75 < optimisation / evaluation < 1.33, (optimisation, evaluation)


def _per_sample(dims: int, policy: AugmentPolicy, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of both executors for ``n`` grey images at 0.5: (evaluation, optimisation), (n, -1)."""
    image = np.full((1, 16, 16) if dims == 2 else (1, 4, 16, 16), 0.5, dtype=np.float32)
    rng = np.random.default_rng(0)
    evaluation = np.stack([Augmenter(policy)(image, 0, rng)[0].ravel() for _ in range(n)])
    torch.manual_seed(0)
    batch = torch.from_numpy(image)[None].repeat(n, *[1] * (dims + 1))
    optimisation = DifferentiableAugment(policy, dims)(batch, torch.zeros(n))[0].reshape(n, -1).numpy()
    return evaluation, optimisation


@pytest.mark.parametrize("dims", [2, 3])
def test_both_executors_jitter_and_add_noise_in_the_same_ranges(dims):
    d = DEFINITIONS[dims]["standard"]
    for outputs in _per_sample(dims, AugmentPolicy(brightness=d.brightness, contrast=d.contrast, p=d.p), 300):
        level = outputs.mean(1)
        changed = np.abs(level - 0.5) > 1e-6
        assert 0.4 < changed.mean() < 0.6  # p 0.5
        low, high = 0.5 * (1 - d.contrast) - d.brightness, 0.5 * (1 + d.contrast) + d.brightness
        assert low - 1e-5 <= level.min() < low + 0.1 and high - 0.1 < level.max() <= high + 1e-5
    noise = AugmentPolicy(noise=d.noise, noise_min=d.noise_min, noise_p=d.p_noise)
    for outputs in _per_sample(dims, noise, 300):
        std = outputs.std(1)
        noisy = std > 1e-6
        assert 0.2 < noisy.mean() < 0.4  # p 0.3
        assert 0.8 * d.noise_min < std[noisy].min() < 1.5 * d.noise_min and 0.8 * d.noise < std.max() < 1.1 * d.noise


def _warped_and_mirrored(out_masks: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per sample: whether the mask left the flips of itself (warped), and for the others which axes it flipped."""
    dims = mask.ndim
    warped, flipped = [], []
    for out in out_masks:
        try:
            axes = _flipped_axes(out[None], mask[None], dims)
        except ValueError:
            warped.append(True)
            continue
        warped.append(False)
        flipped.append([a in axes for a in range(dims)])
    return np.array(warped), np.array(flipped)


@pytest.mark.parametrize("shape", [(20, 20), (10, 12, 11)])
def test_both_executors_run_nnunets_augmentation_alike(shape):
    mask = np.zeros(shape, dtype=np.int64)
    mask[(slice(1, 7),) * len(shape)] = 1
    mask[(slice(2, 4),) * len(shape)] = 0  # no symmetry: every flip and warp shows
    image = (0.2 + 0.6 * mask).astype(np.float32)[None]
    n, rng = 160, np.random.default_rng(0)
    evaluation = np.stack([Augmenter("nnunet")(image, mask, rng)[1] for _ in range(n)])
    torch.manual_seed(0)
    batch = torch.from_numpy(image)[None].repeat(n, *[1] * (len(shape) + 1))
    optimisation = DifferentiableAugment("nnunet", len(shape))(batch, torch.from_numpy(mask)[None, None].repeat(
        n, *[1] * (len(shape) + 1)))[1][:, 0].numpy()
    for outputs in (evaluation, optimisation):
        warped, flipped = _warped_and_mirrored(outputs, mask)
        assert 0.2 < warped.mean() < 0.47  # rotation or scaling: 1 - 0.8^2 = 0.36 (the smallest leave masks be)
        assert (np.abs(flipped.mean(0) - 0.5) < 0.13).all()  # every axis mirrored, each about half the time

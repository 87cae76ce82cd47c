import itertools

import numpy as np
import pytest
from PIL import Image

from ulmed.core.augment_policy import AugmentPolicy
from ulmed.errors import ConfigError
from ulmed.eval.defenses import (
    DEFENSES,
    blur,
    build_defense,
    grayscale,
    jpeg,
    lowpass,
    mix,
    mix_mask,
)

REQUIRED = {"none", "augmentation", "flip_jitter", "nnunet-aug", "jpeg75", "jpeg10", "blur", "lowpass", "ueraser",
            "mix0.8", "mix0.5", "mix0.2"}
AUGMENTING = {"augmentation", "flip_jitter", "nnunet-aug", "ueraser"}


@pytest.fixture(scope="module")
def hc18(real_data):
    """Four real ultrasound images (N, 1, 64, 64) in [0, 1], read directly (the loaders are tested elsewhere)."""
    paths = sorted((real_data / "hc18" / "images").glob("*.png"))[:4]
    images = [np.asarray(Image.open(p).convert("L").resize((64, 64), Image.BILINEAR), np.float32) / 255 for p in paths]
    return (np.stack(images)[:, None],)


def _pair_2d(rng):
    """An asymmetric image whose mask is exactly ``image > 0.5``."""
    mask = np.zeros((48, 40), dtype=np.int64)
    mask[5:20, 3:12] = 1
    mask[30:44, 25:38] = 1
    image = (0.2 + 0.6 * mask + 0.1 * rng.random(mask.shape)).astype(np.float32)[None]
    return image, mask


def test_registry_holds_the_named_defenses():
    assert REQUIRED <= set(DEFENSES.names())
    for name in REQUIRED:
        d = build_defense(name)
        assert d.name == name
        assert (d.augment is not None) == (name in AUGMENTING)
        assert (d.data is not None) == (name not in AUGMENTING | {"none"})
    assert build_defense("augmentation").augment.policy == AugmentPolicy.from_spec("standard")
    assert build_defense("flip_jitter").augment.policy == AugmentPolicy.from_spec("flip_jitter")
    assert build_defense("nnunet-aug").augment.policy == AugmentPolicy.from_spec("nnunet")


def test_full_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(1)
    image, mask = _pair_2d(rng)
    aug = build_defense("augmentation").augment
    for _ in range(10):
        out, out_mask = aug(image, mask.copy(), rng)
        assert out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        assert set(np.unique(out_mask)) <= {0, 1}
        inside, outside = out[0][out_mask == 1], out[0][out_mask == 0]
        assert inside.mean() > outside.mean() + 0.25  # bright region still under the mask


def test_augmentation_is_reproducible_from_the_rng():
    image, mask = _pair_2d(np.random.default_rng(2))
    aug = build_defense("augmentation").augment
    a = aug(image, mask.copy(), np.random.default_rng(5))
    b = aug(image, mask.copy(), np.random.default_rng(5))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _volume_pair() -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((12, 10, 12), dtype=np.int64)
    mask[1:5, 2:9, 0:3] = 1
    mask[7:11, 1:4, 6:12] = 2
    return (mask / 2.0).astype(np.float32)[None], mask


def test_3d_augmentation_is_reproducible_from_the_rng():
    image, mask = _volume_pair()
    aug = build_defense("augmentation").augment
    a = aug(image, mask.copy(), np.random.default_rng(9))
    b = aug(image, mask.copy(), np.random.default_rng(9))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_classification_targets_pass_through():
    image, _ = _pair_2d(np.random.default_rng(4))
    out, label = build_defense("flip_jitter").augment(image, 1, np.random.default_rng(0))
    assert label == 1 and out.shape == image.shape
    volume = _volume_pair()[0]
    out3, label3 = build_defense("augmentation").augment(volume, 1, np.random.default_rng(0))
    assert label3 == 1 and out3.shape == volume.shape and out3.dtype == np.float32


def test_mix_half_protected(hc18):
    clean = hc18[0]
    protected = np.clip(clean + 0.02, 0, 1)
    mixed = mix(protected, clean, 0.5, np.random.default_rng(0))
    is_protected = [np.array_equal(m, p) for m, p in zip(mixed, protected)]
    is_clean = [np.array_equal(m, c) for m, c in zip(mixed, clean)]
    assert sum(is_protected) == len(clean) // 2
    assert all(p != c for p, c in zip(is_protected, is_clean))
    again = build_defense("mix0.5").apply_data(protected, clean, np.random.default_rng(0))
    np.testing.assert_array_equal(mixed, again)
    assert mix_mask(10, 0.2, np.random.default_rng(0)).sum() == 2


def test_mix_needs_clean_images(hc18):
    with pytest.raises(ConfigError, match="clean"):
        build_defense("mix0.8").apply_data(hc18[0])


def test_jpeg75_changes_the_image_within_range(hc18):
    images = hc18[0]
    out = build_defense("jpeg75").apply_data(images)
    assert out.shape == images.shape and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
    assert not np.array_equal(out, images)
    assert np.abs(out - images).mean() < 0.05  # compressed, not destroyed
    vol = np.random.default_rng(0).random((1, 1, 4, 16, 16)).astype(np.float32)
    assert jpeg(vol, 75).shape == vol.shape
    rgb = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    assert jpeg(rgb, 50).shape == rgb.shape


def test_blur_and_grayscale(hc18):
    images = hc18[0]
    out = blur(images, 1.5)
    assert out.shape == images.shape and out.std() < images.std()
    rgb = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    g = grayscale(rgb)
    assert g.shape == rgb.shape and np.allclose(g[:, 0], g[:, 2])
    with pytest.raises(ConfigError, match="RGB"):
        grayscale(images)


def test_parametric_and_unknown_names():
    assert build_defense("jpeg30").name == "jpeg30"
    assert build_defense("mix0.3").needs_clean
    assert build_defense("blur2").data is not None
    assert build_defense("lowpass0.25").name == "lowpass0.25" and build_defense("lowpass.3").data is not None
    with pytest.raises(ConfigError, match="unknown defense") as error:
        build_defense("cutout")
    for choice in ("nnunet-aug", "ueraser", "jpeg10", "lowpass", "lowpass<f>", "jpeg<q>", "aug-<part>"):  # all listed
        assert choice in str(error.value)
    for bad in ("lowpass0", "lowpass1.5"):
        with pytest.raises(ConfigError, match="fraction of Nyquist"):
            build_defense(bad)
    with pytest.raises(ConfigError, match="quality"):
        build_defense("jpeg0").apply_data(np.zeros((1, 1, 8, 8), np.float32))


def test_augmentation_parts_do_what_their_names_say():
    from ulmed.eval.defenses import PARTS

    rng = np.random.default_rng(0)
    image = rng.random((1, 24, 24)).astype(np.float32)
    mask = np.zeros((24, 24), dtype=np.uint8)
    mask[5:12, 7:15] = 1
    shift = build_defense("aug-shift")
    moved = 0
    for seed in range(6):
        out, out_mask = shift.augment(image, mask, np.random.default_rng(seed))
        assert out_mask.sum() <= mask.sum()
        if not np.array_equal(out_mask, mask):
            moved += 1
            # an integer shift: no interpolation, every inside value is an original value
            inside = out[0][out_mask > 0]
            assert np.isin(inside, image[0]).all()
            # and the mask moved with the image: the pixels under the new mask came from under the old one
            assert np.isin(inside, image[0][mask > 0]).all()
    assert moved > 0
    out, out_mask = build_defense("aug-bc+noise").augment(image, mask, np.random.default_rng(1))
    assert np.array_equal(out_mask, mask)
    assert set(PARTS) == {"flip", "rot90", "rotate", "scale", "elastic", "shift", "bc", "noise"}
    with pytest.raises(ConfigError, match="unknown augmentation parts"):
        build_defense("aug-warp")
    with pytest.raises(ConfigError, match="2D only"):
        volume = rng.random((1, 4, 4, 4)).astype(np.float32)
        build_defense("aug-flip").augment(volume, np.zeros((4, 4, 4), np.uint8), rng)


def _checkerboard_and_ramp(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    checker = (sum(grid) % 2).astype(np.float32) - 0.5  # the Nyquist frequency along every axis
    ramp = (0.2 + 0.6 * grid[-1] / (shape[-1] - 1)).astype(np.float32)
    return checker, ramp


@pytest.mark.parametrize("shape", [(40, 48), (12, 20, 16)])
def test_lowpass_removes_a_checkerboard_and_keeps_a_smooth_ramp(shape):
    checker, ramp = _checkerboard_and_ramp(shape)
    images = (ramp + 0.2 * checker)[None, None]
    out = build_defense("lowpass").apply_data(images)
    assert out.shape == images.shape and out.dtype == np.float32
    error = np.abs(out[0, 0] - ramp)  # checkerboard gone, ramp kept (reflected at the edges: a rounded kink)
    assert error.max() < 0.02 and error[(slice(None),) * (len(shape) - 1) + (slice(3, -3),)].max() < 0.005
    assert np.abs(images[0, 0] - ramp).max() == pytest.approx(0.1)


def test_lowpass_cutoff_is_a_fraction_of_nyquist():
    x = np.arange(64)

    def wave(f: float) -> np.ndarray:  # a cosine at f times the Nyquist frequency
        return np.broadcast_to(0.5 + 0.2 * np.cos(np.pi * f * x), (32, 64))[None, None].astype(np.float32)

    def kept(images: np.ndarray, f: float) -> float:
        return float(np.abs(lowpass(images, f) - 0.5)[..., 16:-16].max() / 0.2)

    assert kept(wave(0.3), 0.5) > 0.95 and kept(wave(0.3), 0.1) < 0.05
    assert kept(wave(0.8), 0.5) < 0.05 and kept(wave(0.8), 1.0) > 0.8  # Butterworth gain 1 / (1 + 0.8^8) = 0.86
    rgb = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    assert lowpass(rgb).shape == rgb.shape and lowpass(rgb).std() < rgb.std()


def test_jpeg10_is_much_coarser_than_jpeg75(hc18):
    images = hc18[0]
    err10 = np.abs(build_defense("jpeg10").apply_data(images) - images).mean()
    err75 = np.abs(build_defense("jpeg75").apply_data(images) - images).mean()
    assert err10 > 2 * err75


def test_ueraser_defense_augments_per_sample():
    image, mask = _pair_2d(np.random.default_rng(0))
    aug = build_defense("ueraser").augment
    rng = np.random.default_rng(1)
    first, first_mask = aug(image, mask, rng)
    second, _ = aug(image, mask, rng)
    np.testing.assert_array_equal(first_mask, mask)  # intensity only
    assert not np.allclose(first, image) and not np.allclose(first, second)


@pytest.mark.parametrize("shape", [(24, 24), (10, 12, 12)])
def test_nnunet_aug_warps_some_samples_mirrors_every_axis_and_moves_masks(shape):
    mask = np.zeros(shape, dtype=np.int64)
    mask[(slice(1, 8),) * len(shape)] = 1
    mask[(slice(2, 4),) * len(shape)] = 0  # asymmetric: every flip and warp shows in the mask
    image = (0.2 + 0.6 * mask).astype(np.float32)[None]
    aug, rng = build_defense("nnunet-aug").augment, np.random.default_rng(0)
    warped, flips = 0, np.zeros(len(shape))
    n = 150
    for _ in range(n):
        out, out_mask = aug(image, mask, rng)
        assert out.shape == image.shape and out_mask.dtype == mask.dtype and 0 <= out.min() and out.max() <= 1
        assert set(np.unique(out_mask)) <= {0, 1}
        if out_mask.any() and not out_mask.all():
            assert out[0][out_mask == 1].mean() > out[0][out_mask == 0].mean()  # the bright region under the mask
        flipped = [axes for axes in _flips(mask) if np.array_equal(out_mask, np.flip(mask, axes) if axes else mask)]
        warped += not flipped
        flips += [a in flipped[0] for a in range(len(shape))] if flipped else 0
    # rotation (p 0.2) or scaling (p 0.2): about 36 % of samples, fewer seen (the smallest leave a mask as it is)
    assert 0.2 < warped / n < 0.47
    assert (np.abs(flips / (n - warped) - 0.5) < 0.13).all()  # each axis mirrored about half the time
    a = aug(image, mask, np.random.default_rng(3))
    b = aug(image, mask, np.random.default_rng(3))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def _flips(mask: np.ndarray) -> list[tuple[int, ...]]:
    return [c for k in range(mask.ndim + 1) for c in itertools.combinations(range(mask.ndim), k)]


@pytest.mark.parametrize("shape", [(24, 24), (10, 12, 12)])
def test_an_nnunet_ablation_never_applies_the_steps_it_switches_off(shape):
    mask = np.zeros(shape, dtype=np.int64)
    mask[(slice(1, 8),) * len(shape)] = 1
    mask[(slice(2, 4),) * len(shape)] = 0
    image = (0.2 + 0.6 * mask).astype(np.float32)[None]
    ablation = build_defense("nnunet-aug-no-rotation+scaling")
    assert ablation.name == "nnunet-aug-no-rotation+scaling"
    rng = np.random.default_rng(0)
    for _ in range(60):  # no warp: every mask is the original up to mirroring
        _, out_mask = ablation.augment(image, mask, rng)
        assert any(np.array_equal(out_mask, np.flip(mask, axes) if axes else mask) for axes in _flips(mask))
    mirror_only = build_defense("nnunet-aug-no-rotation+scaling+noise+blur+brightness+contrast+lowres+gamma").augment
    full, rng, changed = build_defense("nnunet-aug").augment, np.random.default_rng(1), 0
    for _ in range(30):  # with every step off, nnU-Net's pipeline only mirrors
        out, out_mask = mirror_only(image, mask, rng)
        axes = next(a for a in _flips(mask) if np.array_equal(out_mask, np.flip(mask, a) if a else mask))
        np.testing.assert_allclose(out, np.flip(image, [a + 1 for a in axes]) if axes else image, atol=1e-5)
        out, out_mask = full(image, mask, rng)
        changed += not any(np.allclose(out, np.flip(image, [a + 1 for a in axes])) for axes in _flips(mask))
    assert changed > 10  # while the whole pipeline changes most samples
    with pytest.raises(ConfigError, match="choose from"):
        build_defense("nnunet-aug-no-mirror")

import numpy as np
import pytest

from ulmed.core.augment_policy import AugmentPolicy
from ulmed.errors import ConfigError
from ulmed.eval.data import load_hc18
from ulmed.eval.defenses import (
    DEFENSES,
    blur,
    build_defense,
    grayscale,
    jpeg,
    mix,
    mix_mask,
)

REQUIRED = {"none", "augmentation", "flip_jitter", "jpeg75", "blur", "mix0.8", "mix0.5", "mix0.2"}


@pytest.fixture(scope="module")
def hc18(real_data):
    return load_hc18(real_data / "hc18", "train", size=(64, 64), limit=4)


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
        assert (d.augment is not None) == (name in ("augmentation", "flip_jitter"))
    assert build_defense("augmentation").augment.policy == AugmentPolicy.from_spec("standard")
    assert build_defense("flip_jitter").augment.policy == AugmentPolicy.from_spec("flip_jitter")


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
    with pytest.raises(ConfigError, match="unknown defense"):
        build_defense("cutout")
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

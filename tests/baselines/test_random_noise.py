"""random and none: uniform noise off the air of a volume, and the zero perturbation."""

import dataclasses

import numpy as np

from ulmed.baselines.random_noise import NoPerturbation, RandomNoise
from ulmed.io.record import IntensityMapping, Record


def test_random_noise_leaves_the_air_of_a_volume_alone():
    image = np.full((1, 12, 12, 12), -1000.0)
    image[:, 4:8, 4:8, 4:8] = 40.0  # a small body in air
    mapping = dataclasses.replace(IntensityMapping.for_data(image, -32768, 32767, 1, unit="HU"), budget_range=1040.0)
    rec = Record("ct", image, mapping, 3, "dicom")
    noise = RandomNoise("20HU", seed=0).perturbation(rec, rec.unit_image(), 0.01)
    assert noise.shape == image.shape and np.abs(noise).max() <= 0.01
    assert not noise[:, 0, 0, 0].any() and noise[:, 6, 6, 6].any()  # far air is still, the body moves


def test_none_returns_the_record_itself():
    rec = Record("a.png", np.zeros((1, 4, 4), np.uint8), IntensityMapping(0, 255, 0, 255, 1), 2, "image")
    m = NoPerturbation("8/255")
    assert m.protect(rec) is rec and not m.perturbation(rec, rec.unit_image(), 0.1).any()


def test_the_default_budget_scales_dense_noise_on_a_volume_down_to_40_db(real_data):
    from ulmed.io.nifti import read_nifti

    folder = real_data / "msd_hippocampus/images"
    rec = read_nifti(folder / "hippocampus_017.nii.gz", "h")
    out = RandomNoise(seed=1).protect(rec)  # auto: a 16/255 cap, then the floor
    diff = out.image.astype(np.float64) - rec.image.astype(np.float64)
    psnr = 20 * np.log10(rec.mapping.budget_scale / np.sqrt(np.mean(diff**2)))
    assert 39.9 <= psnr < 40.3  # uniform noise at 16/255 alone would be near 29 dB
    assert np.abs(diff).max() < 16 / 255 * rec.mapping.budget_scale / 2
    assert not np.array_equal(out.image, RandomNoise("16/255", seed=1).protect(rec).image)


def test_the_default_budget_scales_dense_noise_on_an_image_down_to_38_db():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, size=(1, 64, 64)).astype(np.uint8)
    rec = Record("a.png", image, IntensityMapping(0, 255, 0, 255, 1), 2, "image")
    out = RandomNoise(seed=1).protect(rec)  # auto: 8/255, then the 38 dB floor
    diff = out.image.astype(np.float64) - image.astype(np.float64)
    psnr = 20 * np.log10(255 / np.sqrt(np.mean(diff**2)))
    assert 38.0 <= psnr < 39.5  # uniform noise at 8/255 alone is near 35 dB; rounded toward zero under the floor
    plain = RandomNoise("8/255", seed=1).protect(rec).image.astype(np.float64) - image
    assert 20 * np.log10(255 / np.sqrt(np.mean(plain**2))) < 36.0 and np.abs(plain).max() == 8

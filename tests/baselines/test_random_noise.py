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

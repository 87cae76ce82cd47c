"""em: the min-min loop with every position free, registered under its name; class-wise noise."""

import numpy as np

from ulmed.baselines.em import ErrorMinimising
from ulmed.core.method import METHODS
from ulmed.io.record import IntensityMapping, Record


def test_em_is_registered_and_cites_its_paper():
    assert METHODS.get("em") is ErrorMinimising and ErrorMinimising.needs_fit
    assert "Unlearnable Examples" in ErrorMinimising.citation


def test_classwise_em_gives_every_record_of_a_class_the_same_noise():
    rng = np.random.default_rng(0)
    records = [Record(f"r{i}.png", rng.integers(0, 256, size=(1, 8, 8)).astype(np.uint8),
                      IntensityMapping(0, 255, 0, 255, 1), 2, "image", target=i % 2) for i in range(4)]
    m = ErrorMinimising("8/255", seed=0, classwise=True, surrogate="resnet18", rounds=1, train_steps=1,
                        pgd_steps=1, batch_size=4, device="cpu")
    m.fit(records)
    noise = [m.perturbation(r, r.unit_image(), 8 / 255) for r in records]
    assert np.array_equal(noise[0], noise[2]) and np.array_equal(noise[1], noise[3])
    assert not np.array_equal(noise[0], noise[1]) and np.abs(noise[0]).max() <= 8 / 255 + 1e-7

"""EvalOptions: every option checked on construction, the run seed taken over."""

from __future__ import annotations

import pytest

from ulmed.errors import ConfigError
from ulmed.eval.grid import run_evaluation
from ulmed.eval.options import EvalOptions
from ulmed.eval.train import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=4, device="cpu", num_threads=1)


def test_options_validate_early_and_take_the_run_seed():
    opts = EvalOptions(masks="m", subject=r"(\d+)", kernel="TORCH", victims=["unet"], train_config=TINY, seed=7)
    assert opts.victims == ("unet",) and opts.train_config.seed == 7 and str(opts.masks) == "m"
    assert opts.preprocess.kernel == "torch" and opts.split_rule.subject == r"(\d+)"
    for kw, words in [({"kernel": "cubic"}, "resize kernel"), ({"test_fraction": 1.0}, "test fraction"),
                      ({"subject": "("}, "regular expression"), ({"spacing": (1, 1)}, "spacing"),
                      ({"victim_size": "huge"}, "victim size"),
                      ({"victims": []}, "no victim"), ({"defenses": ["a__b"]}, "__"),
                      ({"defenses": ["none", "none"]}, "repeat"), ({"defenses": ["cutout"]}, "unknown defense")]:
        with pytest.raises(ConfigError, match=words):
            EvalOptions(**kw)
    with pytest.raises(ConfigError, match="unknown evaluation options"):
        run_evaluation("x", {}, "y", victim=["unet"])


def test_nnunet_victims_and_trainer_grids_are_known_and_iterations_checked():
    opts = EvalOptions(victims=["unet", "nnunet-3d"], defenses=["none", "resample:1,1,1", "resize:64:torch"],
                       iterations=3)
    assert opts.victims == ("unet", "nnunet-3d") and opts.iterations == 3
    with pytest.raises(ConfigError, match="unknown victim 'nnunet'.*nnunet-2d"):
        EvalOptions(victims=["nnunet"])
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="iterations"):
            EvalOptions(iterations=bad)
    with pytest.raises(ConfigError, match="resize kernel"):
        EvalOptions(defenses=["resize:64:bicubic"])

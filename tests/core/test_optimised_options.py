"""The options of em and salm: defaults, validation when built, the manifest's record of them."""

import pytest

from ulmed.core.optimised_options import OptimisedOptions
from ulmed.errors import ConfigError


def test_defaults_and_the_recorded_parameters():
    o = OptimisedOptions()
    params = o.params(o.policy())
    assert params["step_size"] == "eps/5" and params["stop_threshold"] == "auto" and params["surrogate"] == "auto"
    assert params["init"] == "zero" and params["augment"] == o.policy().to_dict() and "bayes_per_class" not in params
    bayes = OptimisedOptions(objective="BAYES", augment="armor", step_size=0.01)
    recorded = bayes.params(bayes.policy())
    assert recorded["objective"] == "bayes" and recorded["bayes_per_class"] == 64
    assert recorded["augment"] == "armor" and recorded["step_size"] == 0.01
    assert bayes.policy().is_identity  # ARMOR's first round has no augmentation
    assert "cell" not in params  # a run without it records what it always recorded
    coarse = OptimisedOptions(cell=2)
    assert coarse.params(coarse.policy())["cell"] == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"surrogate": "vgg"}, "unknown surrogate"), ({"objective": "entropy"}, "objective"),
     ({"step_schedule": "cyclic"}, "step_schedule"), ({"rounds": 0}, "rounds"), ({"train_steps": -1}, "train_steps"),
     ({"pgd_steps": 0}, "pgd_steps"), ({"batch_size": 0}, "batch_size"), ({"pseudo_classes": 1}, "pseudo_classes"),
     ({"bayes_per_class": 0}, "bayes_per_class"), ({"step_size": -0.1}, "step_size"), ({"lr": 0}, "lr"),
     ({"stop_threshold": float("nan")}, "stop_threshold"), ({"tile_size": 2}, "tile_size"),
     ({"augment": "wobbly"}, "wobbly"), ({"cell": 0}, "cell"), ({"cell": 2.5}, "cell"),
     ({"cell": 3, "tile_size": 32}, "multiple of cell")],
)
def test_bad_options_are_refused_when_built(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        OptimisedOptions(**kwargs)

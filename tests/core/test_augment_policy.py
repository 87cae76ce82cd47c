"""The augmentation definitions: presets per dimension, specs, validation, manifests."""

from __future__ import annotations

import pytest

from ulmed.core.augment_policy import (
    DEFINITIONS,
    PRESETS,
    AugmentPolicy,
    for_dims,
    part_policy,
    resolve,
)
from ulmed.errors import ConfigError

#: What manifests recorded before the definitions gained fields: they must not change for runs without them.
OLD_KEYS = ["flips", "rot90", "rotate", "scale", "shift", "elastic", "brightness", "contrast", "gamma", "noise", "blur",
            "jpeg", "p"]


def test_specs_and_validation():
    assert AugmentPolicy.from_spec("standard") == PRESETS["standard"] == DEFINITIONS[2]["standard"]
    assert AugmentPolicy.from_spec("STANDARD") == PRESETS["standard"]
    assert AugmentPolicy.from_spec({"preset": "flip_jitter", "noise": 0.03}).noise == 0.03
    assert AugmentPolicy.from_spec(None).is_identity
    with pytest.raises(ConfigError, match="flip_jitter"):  # the message lists the presets
        AugmentPolicy.from_spec("nope")
    for bad in ({"preset": "standard", "warp": 1}, 3):
        with pytest.raises(ConfigError):
            AugmentPolicy.from_spec(bad)
    for kwargs in ({"scale": 1.0}, {"noise": -1}, {"p": 0.0}, {"jpeg": 99}, {"rotate": 400}, {"elastic_p": 0.0},
                   {"noise": 0.01, "noise_min": 0.02}, {"elastic_sigma": 0.0}, {"preset": "strong"}):
        with pytest.raises(ConfigError):
            AugmentPolicy(**kwargs)


def test_the_standard_definition_is_the_evaluation_trainer():
    two, three = DEFINITIONS[2]["standard"], DEFINITIONS[3]["standard"]
    assert (two.elastic, two.elastic_sigma, two.p_elastic) == (30.0, 6.0, 0.2)  # pixels, as albumentations
    assert (two.noise_min, two.noise, two.p_noise) == (0.01, 0.05, 0.3)
    assert two.rot90 and not two.translate
    assert not three.rot90 and three.translate == 3.0  # MONAI RandAffined: up to 3 voxels
    assert {k: v for k, v in two.to_dict().items() if k not in ("rot90", "translate")} == \
        {k: v for k, v in three.to_dict().items() if k not in ("rot90", "translate")}


def test_a_preset_resolves_per_dimension_and_keeps_its_changes():
    mine = AugmentPolicy.from_spec({"preset": "standard", "noise": 0.02})
    volume = resolve(mine, 3)
    assert volume.noise == 0.02 and volume.translate == 3.0 and not volume.rot90
    assert resolve(volume, 3) == volume and resolve(mine, 2) == mine
    assert for_dims(PRESETS["robust"], 3).jpeg == 0 and for_dims(PRESETS["robust"], 2).jpeg == 50
    hand_made = AugmentPolicy(rot90=True)
    assert resolve(hand_made, 3) == hand_made  # no preset: taken as it is
    with pytest.raises(ConfigError, match="spatial_dims"):
        resolve(mine, 4)


def test_manifests_of_runs_without_the_new_fields_stay_as_they_were():
    assert list(AugmentPolicy().to_dict()) == OLD_KEYS
    assert AugmentPolicy().to_dict()["p"] == 0.5
    standard = PRESETS["standard"].to_dict()
    assert standard["preset"] == "standard" and standard["elastic_p"] == 0.2 and "translate" not in standard


def test_parts_carry_the_definition_settings():
    assert part_policy("elastic") == AugmentPolicy(elastic=30.0, elastic_sigma=6.0, elastic_p=0.2)
    assert part_policy("shift").shift == 3 and not part_policy("shift").rotate
    with pytest.raises(ConfigError, match="unknown augmentation part"):
        part_policy("warp")

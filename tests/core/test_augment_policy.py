"""The augmentation definitions: presets per dimension, specs, validation, manifests."""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from types import SimpleNamespace

import pytest

from ulmed.core.augment_policy import (
    DEFINITIONS,
    NNUNET,
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


def test_the_nnunet_preset_is_nnunets_own_pipeline():
    two, three = DEFINITIONS[2]["nnunet"], DEFINITIONS[3]["nnunet"]
    assert two.nnunet and three.nnunet and not two.is_identity
    assert for_dims(AugmentPolicy.from_spec("nnunet"), 3) == three
    assert two.to_dict()["nnunet"] is True and "nnunet" not in PRESETS["standard"].to_dict()  # old manifests unchanged
    assert NNUNET[2].mirror_axes == (0, 1) and NNUNET[3].mirror_axes == (0, 1, 2)  # nnU-Net mirrors every axis
    assert (NNUNET[2].rotation, NNUNET[3].rotation, NNUNET[2].rotation_elongated) == (180.0, 30.0, 15.0)
    with pytest.raises(ConfigError, match="nnU-Net v2's own pipeline; it takes no noise"):
        AugmentPolicy.from_spec({"preset": "nnunet", "noise": 0.1})


def _literal(node: ast.expr) -> object:
    """A literal argument, or the range inside ``BGContrast((low, high))``."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "BGContrast":
        return ast.literal_eval(node.args[0])
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _nnunet_transforms(trainer: type) -> dict[str, list[dict[str, object]]]:
    """nnUNetTrainer.get_training_transforms' literal settings: transform name -> its calls' keywords."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(trainer.get_training_transforms)))
    found: dict[str, list[dict[str, object]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("RandomTransform", "SpatialTransform"):
            inner = node.args[0] if node.func.id == "RandomTransform" else node
            settings = {k.arg: _literal(k.value) for k in [*inner.keywords, *node.keywords] if k.arg}
            found.setdefault(inner.func.id, []).append(settings)
    return found


def test_nnunet_parameters_are_those_of_the_installed_nnunetv2():
    """NNUNET against nnUNetTrainer's own code (skipped without nnunetv2)."""
    trainer = pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer").nnUNetTrainer
    t, p = _nnunet_transforms(trainer), NNUNET[3]
    spatial = t["SpatialTransform"][0]
    assert (spatial["p_rotation"], spatial["p_scaling"], spatial["scaling"]) == (p.p_rotation, p.p_scaling, p.scaling)
    assert spatial["p_synchronize_scaling_across_axes"] == 1 and spatial["p_elastic_deform"] == 0
    noise = t["GaussianNoiseTransform"][0]
    assert (noise["noise_variance"], noise["apply_probability"], noise["synchronize_channels"]) == \
        (p.noise_std, p.p_noise, True)
    blur = t["GaussianBlurTransform"][0]
    assert (blur["blur_sigma"], blur["p_per_channel"], blur["apply_probability"], blur["synchronize_axes"]) == \
        (p.blur_sigma, p.blur_channel_p, p.p_blur, False)
    bright, contrast = t["MultiplicativeBrightnessTransform"][0], t["ContrastTransform"][0]
    assert (bright["multiplier_range"], bright["apply_probability"]) == (p.brightness, p.p_brightness)
    assert (contrast["contrast_range"], contrast["apply_probability"], contrast["preserve_range"]) == \
        (p.contrast, p.p_contrast, True)
    low = t["SimulateLowResolutionTransform"][0]
    assert (low["scale"], low["p_per_channel"], low["apply_probability"], low["synchronize_axes"]) == \
        (p.lowres_scale, p.lowres_channel_p, p.p_lowres, True)
    gammas = {g["p_invert_image"]: g for g in t["GammaTransform"]}
    assert (gammas[1]["apply_probability"], gammas[0]["apply_probability"]) == (p.p_gamma_inverted, p.p_gamma)
    assert all(g["gamma"] == p.gamma and g["p_retain_stats"] == 1 for g in gammas.values())


@pytest.mark.parametrize(("patch", "degrees", "in_plane"), [((32, 32), 180, False), ((16, 40), 15, False),
                                                            ((16, 16, 16), 30, False), ((4, 32, 32), 180, True)])
def test_nnunet_rotation_ranges_and_mirroring_are_those_of_nnunetv2(patch, degrees, in_plane):
    trainer = pytest.importorskip("nnunetv2.training.nnUNetTrainer.nnUNetTrainer").nnUNetTrainer
    fake = SimpleNamespace(configuration_manager=SimpleNamespace(patch_size=patch),
                           print_to_log_file=lambda *args, **kwargs: None)
    rotation, dummy_2d, _, mirror = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size(fake)
    ours = NNUNET[len(patch)]
    assert dummy_2d == in_plane == (len(patch) == 3 and max(patch) / patch[0] > ours.anisotropic)
    elongated = len(patch) == 2 and max(patch) / min(patch) > ours.elongated
    expected = ours.rotation_in_plane if in_plane else ours.rotation_elongated if elongated else ours.rotation
    assert rotation[1] == pytest.approx(math.radians(degrees)) and expected == degrees
    assert tuple(mirror) == ours.mirror_axes

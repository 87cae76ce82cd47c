"""The UnSeg training configuration (ulmed/segmentation/config.py)."""

from pathlib import Path

import pytest

from ulmed.errors import ConfigError
from ulmed.segmentation.config import SURROGATE_PROMPTS, SurrogatePrompt, UnsegConfig

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs/unseg/tiny.yaml"


def test_config_reads_the_shipped_yaml_and_validates(tmp_path):
    cfg = UnsegConfig.from_yaml(REPO_CONFIG)
    assert cfg.builder == "tiny" and cfg.train_eps == pytest.approx(1 / 255)
    assert cfg.train_eps_bg == pytest.approx(0.25 / 255)
    assert cfg.label_modification and cfg.prompts == ["mask", "box", "points"]
    assert UnsegConfig.from_yaml(REPO_CONFIG, rounds=3, limit=None).rounds == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("builder: tiny\nepsilon: 3\n")
    with pytest.raises(ConfigError, match="unknown option"):
        UnsegConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="eps_bg <= eps"):
        UnsegConfig(eps="2/255", eps_bg="4/255")
    with pytest.raises(ConfigError, match="prompts"):
        UnsegConfig(prompts=["scribble"])
    with pytest.raises(ConfigError, match="SAM builder"):
        UnsegConfig(builder="vit_q")


def test_the_flip_jitter_variant_differs_from_the_shipped_config_only_in_its_augmentation():
    shipped = UnsegConfig.from_yaml(REPO_CONFIG).to_dict()
    variant = UnsegConfig.from_yaml(REPO_CONFIG.with_name("tiny_flip_jitter.yaml")).to_dict()
    assert {k for k in shipped if shipped[k] != variant[k]} == {"augment"}
    assert variant["augment"] == "flip_jitter"


def test_string_choices_are_looked_up_and_stored_as_plain_strings():
    cfg = UnsegConfig(prompts=["BOX", "points"], surrogate_prompt="None")
    assert cfg.prompts == ["box", "points"] and cfg.surrogate_prompt == "none"
    # plain str, not enum members: the configuration goes into checkpoints (torch.load weights_only)
    assert type(cfg.prompts[0]) is str and type(cfg.surrogate_prompt) is str
    assert SURROGATE_PROMPTS == ("same", "none") and SurrogatePrompt.NONE == "none"
    with pytest.raises(ConfigError, match="surrogate_prompt"):
        UnsegConfig(surrogate_prompt="box")
    for bad in ([], "box"):
        with pytest.raises(ConfigError, match="non-empty list"):
            UnsegConfig(prompts=bad)


def test_sizes_budgets_and_counts():
    cfg = UnsegConfig(img_size=32, eps=0.5 / 255 * 16, eps_bg=0)
    assert cfg.generator_size == 32 and cfg.surrogate_size == 32 and cfg.eps_bg == 0.0
    assert UnsegConfig(img_size=32, surrogate_img_size=16).surrogate_size == 16
    assert cfg.to_dict()["img_size"] == 32
    with pytest.raises(ConfigError, match="units"):
        UnsegConfig(eps="20HU")
    with pytest.raises(ConfigError, match=">= 1"):
        UnsegConfig(rounds=0)
    with pytest.raises(ConfigError, match="epoch counts"):
        UnsegConfig(generator_epochs=-1)
    with pytest.raises(ConfigError, match="max_minutes"):
        UnsegConfig(max_minutes=0)

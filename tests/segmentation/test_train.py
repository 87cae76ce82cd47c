import pytest
import torch

from ulmed.errors import ConfigError
from ulmed.segmentation.config import UnsegConfig
from ulmed.segmentation.prompts import make_prompt, no_prompt
from ulmed.segmentation.train import BilevelTrainer, build_models

REPO_CONFIG = __import__("pathlib").Path(__file__).resolve().parents[2] / "configs/unseg/tiny.yaml"


def _loss(fn, images, masks, prompt):
    with torch.no_grad():
        return float(fn(images, masks, prompt))


@pytest.mark.parametrize("kind", ["mask", "box", "points"])
def test_one_step_of_each_kind_lowers_its_own_loss(config, batch, kind):
    images, masks = batch
    torch.manual_seed(0)
    gen, sur = build_models(UnsegConfig(**{**config.to_dict(), "backbone_epochs": 1}))
    t = BilevelTrainer(gen, sur, UnsegConfig(**{**config.to_dict(), "backbone_epochs": 1, "train_eps": "8/255", "train_eps_bg": "2/255"}))
    prompt = make_prompt(masks, kind, generator=torch.Generator().manual_seed(0))
    before = _loss(t.backbone_loss, images, masks, prompt)
    t.backbone_step(images, masks, prompt)
    assert _loss(t.backbone_loss, images, masks, prompt) < before
    t.freeze()
    for loss_fn, step in ((t.surrogate_loss, t.surrogate_step), (t.generator_loss, t.generator_step)):
        before = _loss(loss_fn, images, masks, prompt)
        assert step(images, masks, prompt) == pytest.approx(before, rel=1e-5)
        assert _loss(loss_fn, images, masks, prompt) < before, step.__name__


def test_label_modification_sets_an_all_ones_target(trainer, batch):
    images, masks = batch
    prompt = make_prompt(masks, "box")
    lm = _loss(trainer.generator_loss, images, masks, prompt)
    trainer.config.label_modification = False
    assert _loss(trainer.generator_loss, images, masks, prompt) != pytest.approx(lm)


def test_fit_runs_the_schedule_and_stops_at_the_deadline(config, batch):
    images, masks = batch
    torch.manual_seed(0)
    cfg = UnsegConfig(**{**config.to_dict(), "backbone_epochs": 1, "rounds": 2})
    t = BilevelTrainer(*build_models(cfg), cfg)
    history = t.fit(images, masks)
    assert [h["stage"] for h in history] == ["backbone", "surrogate", "generator", "surrogate", "generator"]
    assert t.steps == {"backbone": 1, "surrogate": 2, "generator": 2} and t.generator.frozen
    t.deadline = 0.0
    assert t.fit(images, masks) == []


def test_config_reads_the_shipped_yaml_and_validates(tmp_path):
    cfg = UnsegConfig.from_yaml(REPO_CONFIG)
    assert cfg.builder == "tiny" and cfg.train_eps == pytest.approx(1 / 255) and cfg.train_eps_bg == pytest.approx(0.25 / 255)
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


def test_the_shared_augmentation_policy_reaches_both_stages(config, batch):
    images, masks = batch
    torch.manual_seed(0)
    cfg = UnsegConfig(**{**config.to_dict(), "augment": "standard"})
    t = BilevelTrainer(*build_models(cfg), cfg)
    assert t.augment is not None and t.augment.policy.rotate == 15.0
    prompt = make_prompt(masks, "mask")
    torch.manual_seed(1)
    a = float(t.surrogate_loss(images, masks, prompt))
    torch.manual_seed(2)
    b = float(t.surrogate_loss(images, masks, prompt))
    assert a != b  # a fresh augmentation per call
    gen_loss = t.generator_loss(images, masks, prompt)
    (g,) = torch.autograd.grad(gen_loss, [p for p in t.generator.head.parameters()][0])
    assert torch.isfinite(g).all() and g.abs().sum() > 0  # the gradient reaches the head through the augmentation
    with pytest.raises(ConfigError):
        UnsegConfig(**{**config.to_dict(), "augment": "sideways"})


def test_a_surrogate_without_prompt_ignores_the_prompt_and_still_trains(config, batch):
    images, masks = batch
    torch.manual_seed(0)
    cfg = UnsegConfig(**{**config.to_dict(), "surrogate_prompt": "none", "train_eps": "8/255", "train_eps_bg": "2/255"})
    t = BilevelTrainer(*build_models(cfg), cfg)
    box, full = make_prompt(masks, "box"), make_prompt(torch.ones_like(masks), "mask")
    # the surrogate sees no prompt, whatever the generator was prompted with ...
    for prompt in (box, full):
        _, target, seen = t._view(images, masks, masks, prompt)
        assert seen.kind == "none" and seen.count == images.shape[0] and torch.equal(target, masks)
    # ... while the generator still reads its prompt (the noise differs, so its loss does)
    assert _loss(t.generator_loss, images, masks, box) != pytest.approx(_loss(t.generator_loss, images, masks, full), rel=1e-6)
    for loss_fn, step in ((t.surrogate_loss, t.surrogate_step), (t.generator_loss, t.generator_step)):
        before = _loss(loss_fn, images, masks, box)
        step(images, masks, box)
        assert _loss(loss_fn, images, masks, box) < before, step.__name__
    with pytest.raises(ConfigError, match="surrogate_prompt"):
        UnsegConfig(surrogate_prompt="box")


def test_no_prompt_encodes_to_sams_empty_prompt(trainer):
    sam = trainer.surrogate.sam
    sparse, dense = no_prompt(3).encode(sam)
    assert sparse.shape[:2] == (3, 0)
    assert torch.equal(dense[1], sam.prompt_encoder.no_mask_embed.weight.reshape(-1, 1, 1).expand_as(dense[1]))
    with pytest.raises(ConfigError):
        no_prompt(0)

import pytest
import torch

from ulmed.errors import ConfigError
from ulmed.segmentation.config import UnsegConfig
from ulmed.segmentation.prompts import make_prompt
from ulmed.segmentation.train import BilevelTrainer, build_models


def _loss(fn, images, masks, prompt):
    with torch.no_grad():
        return float(fn(images, masks, prompt))


@pytest.mark.parametrize("kind", ["mask", "box", "points"])
def test_one_step_of_each_kind_lowers_its_own_loss(config, batch, kind):
    images, masks = batch
    torch.manual_seed(0)
    gen, sur = build_models(UnsegConfig(**{**config.to_dict(), "backbone_epochs": 1}))
    options = {**config.to_dict(), "backbone_epochs": 1, "train_eps": "8/255", "train_eps_bg": "2/255"}
    t = BilevelTrainer(gen, sur, UnsegConfig(**options))
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
    full_loss = _loss(t.generator_loss, images, masks, full)
    assert _loss(t.generator_loss, images, masks, box) != pytest.approx(full_loss, rel=1e-6)
    for loss_fn, step in ((t.surrogate_loss, t.surrogate_step), (t.generator_loss, t.generator_step)):
        before = _loss(loss_fn, images, masks, box)
        step(images, masks, box)
        assert _loss(loss_fn, images, masks, box) < before, step.__name__
    with pytest.raises(ConfigError, match="surrogate_prompt"):
        UnsegConfig(surrogate_prompt="box")


def test_stages_are_a_choice_and_each_step_is_counted(trainer, batch):
    from ulmed.segmentation.train import STAGES, Stage

    images, masks = batch
    assert STAGES == ("backbone", "surrogate", "generator") and trainer.steps == dict.fromkeys(STAGES, 0)
    prompt = make_prompt(masks, "box")
    losses = trainer.steps_of(Stage.SURROGATE, [(images, masks, prompt)] * 2)
    assert len(losses) == 2 and losses[1] < losses[0]  # the same batch twice: the second step starts lower
    trainer.steps_of("GENERATOR", [(images, masks, prompt)])
    assert trainer.steps == {"backbone": 0, "surrogate": 2, "generator": 1}
    assert not trainer.surrogate.training and all(not p.requires_grad for p in trainer.surrogate.parameters())
    with pytest.raises(ConfigError, match="stage"):
        trainer.steps_of("critic", [])


def test_an_epoch_sees_every_image_once_in_batches_and_stops_at_the_deadline(trainer, batch):
    images, masks = batch
    seen = [x.shape[0] for x, _, _ in trainer.batches(images, masks)]
    assert seen == [3]  # batch_size 4: one batch of the three images
    trainer.config.batch_size = 2
    batches = list(trainer.batches(images, masks))
    assert [x.shape[0] for x, _, _ in batches] == [2, 1]
    got = sorted(float(x.sum()) for b, _, _ in batches for x in b)
    assert got == pytest.approx(sorted(float(x.sum()) for x in images))  # each image once, in a shuffled order
    assert all(p.kind in ("mask", "box", "points") for _, _, p in batches)
    trainer.deadline = 0.0
    assert list(trainer.batches(images, masks)) == [] and trainer.epoch("surrogate", images, masks) is None

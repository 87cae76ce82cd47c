import pytest
import torch

from ulmed.segmentation.generator import match_channels, scale_noise
from ulmed.segmentation.prompts import PROMPT_KINDS, make_prompt


@pytest.mark.parametrize("kind", PROMPT_KINDS)
def test_noise_shape_and_bounds_for_each_prompt(trainer, batch, kind):
    images, masks = batch
    gen = trainer.generator
    prompt = make_prompt(masks, kind, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = gen(images, prompt)
    assert raw.shape == (3, 3, 32, 32)
    assert raw.abs().max() <= 1 and raw.abs().max() > 0
    noise = scale_noise(raw, masks, 8 / 255, 2 / 255)
    inside, outside = masks.expand_as(noise) > 0, masks.expand_as(noise) == 0
    assert noise[inside].abs().max() <= 8 / 255 + 1e-7
    assert noise[outside].abs().max() <= 2 / 255 + 1e-7
    # a larger image: the map follows the input's resolution
    with torch.no_grad():
        assert gen(torch.nn.functional.interpolate(images, size=(48, 40)), prompt).shape == (3, 3, 48, 40)


def test_frozen_sam_parts_stay_frozen(trainer, batch):
    images, masks = batch
    gen = trainer.generator
    before = {k: v.clone() for k, v in gen.sam.state_dict().items()}
    head_before = {k: v.clone() for k, v in gen.head.state_dict().items()}
    trainer.generator_step(images, masks, make_prompt(masks, "box"))
    assert all(not p.requires_grad for p in gen.sam.parameters())
    assert all(torch.equal(before[k], v) for k, v in gen.sam.state_dict().items())
    assert any(not torch.equal(head_before[k], v) for k, v in gen.head.state_dict().items())
    assert not gen.sam.training


def test_grey_images_train_with_the_grey_noise_that_protect_applies(trainer, batch):
    images, masks = batch  # HC18: grey, replicated to three equal channels
    assert torch.equal(images[:, 0], images[:, 1])
    prompt = make_prompt(masks, "box")
    with torch.no_grad():
        raw = trainer.generator(images, prompt)
        noise = trainer._noise(trainer.generator, images, masks, prompt)
    assert not torch.allclose(raw[:, 0], raw[:, 1])  # the generator itself makes colour noise ...
    # ... training sees its mean
    assert torch.allclose(noise[:, 0], noise[:, 1]) and torch.allclose(noise[:, 1], noise[:, 2])
    cfg = trainer.config
    expected = scale_noise(raw.mean(1, keepdim=True).expand_as(images), masks, cfg.train_eps, cfg.train_eps_bg)
    assert torch.allclose(noise, expected)
    colour = images.clone()
    colour[0, 0] = colour[0, 0] * 0.5  # image 0 is now RGB: its noise keeps its channels
    assert torch.equal(match_channels(raw, colour)[0], raw[0])
    assert torch.allclose(match_channels(raw, colour)[1, 0], raw[1].mean(0))

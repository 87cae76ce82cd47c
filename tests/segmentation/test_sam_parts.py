"""SAM's parts with gradients (ulmed/segmentation/sam_parts.py): preprocessing, the loss, the segmenter."""

import pytest
import torch

from ulmed.segmentation.builders import build_named_sam
from ulmed.segmentation.prompts import make_prompt
from ulmed.segmentation.sam_parts import SamSegmenter, encode_image, preprocess, seg_loss


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    return build_named_sam("tiny", 32)


def test_seg_loss_is_bce_plus_soft_dice_by_hand():
    logits = torch.tensor([[[[0.0, 2.0], [-2.0, 0.0]]]])
    target = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    p = torch.sigmoid(logits).flatten()
    t = target.flatten()
    bce = -(t * p.log() + (1 - t) * (1 - p).log()).mean()
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    assert float(seg_loss(logits, target)) == pytest.approx(float(bce + dice), rel=1e-6)
    assert float(seg_loss(torch.full((1, 1, 2, 2), 20.0), torch.ones(1, 1, 2, 2))) < 1e-6


def test_preprocess_resizes_to_sams_input_and_normalises(sam):
    x = torch.full((2, 3, 16, 16), 0.5)
    out = preprocess(sam, x)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out[:, :, 0, 0], ((127.5 - sam.pixel_mean) / sam.pixel_std).view(1, 3).expand(2, 3))


def test_the_segmenter_gives_mask_logits_at_the_input_size_with_gradients(sam):
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    masks = torch.zeros(2, 1, 24, 24)
    masks[:, :, 5:15, 5:15] = 1
    logits = SamSegmenter(sam)(images, make_prompt(masks, "box"))
    assert logits.shape == (2, 1, 24, 24)
    (g,) = torch.autograd.grad(seg_loss(logits, masks), [images])
    assert torch.isfinite(g).all() and g.abs().sum() > 0  # differentiable end to end (Sam.forward is not)
    emb, early = encode_image(sam, preprocess(sam, images.detach()), early_block=0)
    assert emb.shape[0] == 2 and early.shape[0] == 2 and early.dim() == 4

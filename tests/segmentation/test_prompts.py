"""Prompts from masks (ulmed/segmentation/prompts.py)."""

import pytest
import torch

from ulmed.errors import ConfigError
from ulmed.segmentation.prompts import PROMPT_KINDS, PromptKind, cat_prompts, make_prompt, no_prompt, whole_image_prompt


def _square(b: int = 2) -> torch.Tensor:
    masks = torch.zeros(b, 1, 8, 8)
    masks[:, :, 2:4, 4:8] = 1  # rows 2-3, columns 4-7
    return masks


def test_prompts_from_masks(batch):
    _, masks = batch
    box = make_prompt(masks, "box").boxes
    assert box.shape == (3, 4) and (box[:, 2] > box[:, 0]).all() and box.min() >= 0 and box.max() <= 1
    pts = make_prompt(masks, "points", num_points=5, generator=torch.Generator().manual_seed(1))
    assert pts.points.shape == (3, 5, 2) and (pts.labels == 1).all()
    h, w = masks.shape[-2:]
    cols, rows = (pts.points[..., 0] * w).long(), (pts.points[..., 1] * h).long()
    assert all(masks[i, 0, rows[i], cols[i]].all() for i in range(3))  # points lie on the foreground
    empty = make_prompt(torch.zeros(2, 1, 8, 8), "points")
    assert (empty.labels == -1).all()
    assert torch.equal(make_prompt(torch.zeros(1, 1, 8, 8), "box").boxes, whole_image_prompt(1).boxes)


def test_a_box_is_the_masks_bounding_box_in_normalised_coordinates():
    box = make_prompt(_square(), "box")
    assert box.kind == "box" and torch.allclose(box.boxes, torch.tensor([[0.5, 0.25, 1.0, 0.5]] * 2))
    jittered = make_prompt(_square(), "box", noisy=True, jitter=0.5, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(jittered.boxes, box.boxes) and jittered.boxes.min() >= 0 and jittered.boxes.max() <= 1


def test_kinds_are_a_choice_in_any_case_and_prompts_join_and_select():
    assert PROMPT_KINDS == ("mask", "box", "points")
    assert make_prompt(_square(), PromptKind.MASK).kind == "mask"
    assert make_prompt(_square(), "MASK").kind == "mask"  # Prompt.kind stays a plain string
    with pytest.raises(ConfigError, match="prompt kind"):
        make_prompt(_square(), "scribble")
    with pytest.raises(ConfigError, match="num_points"):
        make_prompt(_square(), "points", num_points=0)
    a, b = make_prompt(_square(1), "box"), whole_image_prompt(2)
    joined = cat_prompts([a, b])
    assert joined.boxes.shape == (3, 4) and torch.equal(joined.select(torch.tensor([1, 0])).boxes[1], a.boxes[0])
    with pytest.raises(ConfigError, match="one kind"):
        cat_prompts([a, make_prompt(_square(1), "mask")])
    with pytest.raises(ConfigError):
        cat_prompts([no_prompt(1)])


def test_a_noisy_mask_prompt_grows_or_shrinks_the_mask():
    masks = _square(1)
    sizes = {float(make_prompt(masks, "mask", noisy=True, generator=torch.Generator().manual_seed(s)).masks.sum())
             for s in range(8)}
    n = masks.sum().item()
    assert any(s > n for s in sizes) and any(s < n for s in sizes)  # dilated or eroded, never the same
    assert n not in sizes


def test_no_prompt_encodes_to_sams_empty_prompt(trainer):
    sam = trainer.surrogate.sam
    sparse, dense = no_prompt(3).encode(sam)
    assert sparse.shape[:2] == (3, 0)
    assert torch.equal(dense[1], sam.prompt_encoder.no_mask_embed.weight.reshape(-1, 1, 1).expand_as(dense[1]))
    with pytest.raises(ConfigError):
        no_prompt(0)

"""Letterboxing and training pairs (ulmed/segmentation/data.py)."""

import numpy as np
import pytest
import torch

from ulmed.errors import InputError
from ulmed.segmentation.data import letter_box, letterbox, load_pairs, to_rgb, unletterbox


def test_letterbox_pads_small_images_without_scaling_when_asked():
    x = torch.rand(2, 3, 20, 30)
    _, box = letterbox(x, 64)
    assert (box.inner_h, box.inner_w) == (43, 64)  # scaled up to fit
    padded, box = letterbox(x, 64, upscale=False)
    assert (box.inner_h, box.inner_w, box.top, box.left) == (20, 30, 22, 17)
    assert torch.equal(padded[..., 22:42, 17:47], x) and torch.isclose(padded.sum(), x.sum())  # the pixels, untouched
    assert torch.allclose(unletterbox(padded, box), x)  # and back, exactly
    _, box = letterbox(torch.rand(1, 1, 128, 96), 64, upscale=False)
    assert (box.inner_h, box.inner_w) == (64, 48)  # larger images are still scaled down


def test_letter_box_centres_and_keeps_the_aspect():
    box = letter_box(20, 40, 64)
    assert (box.inner_h, box.inner_w, box.top, box.left) == (32, 64, 16, 0)
    assert letter_box(1, 200, 8).inner_h == 1  # never a zero-pixel side


def test_to_rgb_replicates_grey_keeps_rgb_and_averages_other_counts():
    grey = np.full((1, 2, 2), 0.25)
    assert to_rgb(grey).shape == (3, 2, 2) and (to_rgb(grey) == 0.25).all()
    rgb = np.random.default_rng(0).random((3, 2, 2))
    assert to_rgb(rgb) is rgb
    two = np.stack([np.zeros((2, 2)), np.ones((2, 2))])
    assert (to_rgb(two) == 0.5).all()


def test_load_pairs_reads_images_with_masks_and_a_split(sample_data, tmp_path):
    src = sample_data / "hc18"
    images, masks, keys = load_pairs(src / "images", src / "masks", 32)
    assert images.shape == (3, 3, 32, 32) and masks.shape == (3, 1, 32, 32) and len(keys) == 3
    assert 0 <= float(images.min()) and float(images.max()) <= 1 and set(masks.unique().tolist()) <= {0.0, 1.0}
    assert load_pairs(src / "images", src / "masks", 32, limit=2)[2] == keys[:2]
    (tmp_path / "index.csv").write_text(f"image,split\n{keys[1]},test\n{keys[0]},train\n")
    (tmp_path / "images").symlink_to(src / "images")
    assert load_pairs(tmp_path / "images", src / "masks", 16, split="test")[2] == [keys[1]]
    with pytest.raises(InputError, match="split"):
        load_pairs(tmp_path / "images", src / "masks", 16, split="val")
    with pytest.raises(InputError, match="--masks"):
        load_pairs(src / "images", tmp_path / "missing", 16)
    assert torch.is_tensor(images)

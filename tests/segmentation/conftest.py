"""Fixtures for the UnSeg tests: a tiny configuration, a fixed batch of real HC18 images, a checkpoint."""

from __future__ import annotations

import pytest
import torch

from ulmed.segmentation.checkpoint import save_generator
from ulmed.segmentation.config import UnsegConfig
from ulmed.segmentation.data import load_pairs
from ulmed.segmentation.train import BilevelTrainer, build_models

SIZE = 32


@pytest.fixture(autouse=True)
def _one_thread():
    """The machine's cores are shared: one thread per test process."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture()
def config() -> UnsegConfig:
    """The tiny builder at 32 x 32, no warm-up, one round."""
    return UnsegConfig(img_size=SIZE, batch_size=4, rounds=1, backbone_epochs=0, split=None)


@pytest.fixture(scope="session")
def batch(sample_data) -> tuple[torch.Tensor, torch.Tensor]:
    """The three sample HC18 images and masks, letterboxed to 32 x 32."""
    images, masks, _ = load_pairs(sample_data / "hc18/images", sample_data / "hc18/masks", SIZE)
    return images, masks


@pytest.fixture()
def trainer(config) -> BilevelTrainer:
    torch.manual_seed(0)
    generator, surrogate = build_models(config)
    return BilevelTrainer(generator, surrogate, config, seed=0)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory, batch) -> str:
    """A tiny generator after a few bilevel steps on the sample images (a fixture, not a useful model)."""
    torch.manual_seed(0)
    cfg = UnsegConfig(img_size=SIZE, batch_size=4, rounds=1, backbone_epochs=0, split=None)
    generator, surrogate = build_models(cfg)
    t = BilevelTrainer(generator, surrogate, cfg, seed=0)
    images, masks = batch
    for _ in range(2):
        t.epoch("surrogate", images, masks), t.epoch("generator", images, masks)
    path = tmp_path_factory.mktemp("unseg") / "tiny.pt"
    save_generator(generator, path, builder="tiny", config=cfg.to_dict(), history=[{"round": 1, "loss": 0.5}])
    return str(path)

import numpy as np
import pytest
import torch

from ulmed.errors import ConfigError
from ulmed.eval.data import load_split
from ulmed.eval.defenses import build_defense
from ulmed.eval.loading import Preprocess
from ulmed.eval.metrics import segmentation_metrics
from ulmed.eval.train import TrainConfig, evaluate_victim, predict, train_victim
from ulmed.eval.victims import build_victim


@pytest.fixture(scope="module")
def hc18(real_data):
    images, masks, _ = load_split(real_data / "hc18", "train", preprocess=Preprocess(size=(64, 64)), limit=16)
    return images, masks


def _train_unet(images, masks, config):
    model = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, seed=0)
    history = train_victim(model, images, masks, task="segmentation", num_classes=2, config=config)
    return model, history


def test_unet_learns_hc18_and_is_deterministic(hc18):
    images, masks = hc18
    config = TrainConfig(epochs=4, batch_size=4, lr=1e-2, seed=0, device="cpu", num_threads=1)
    model_a, hist_a = _train_unet(images, masks, config)
    model_b, hist_b = _train_unet(images, masks, config)
    assert len(hist_a) == 4 and hist_a[-1]["loss"] < hist_a[0]["loss"]
    assert [h["loss"] for h in hist_a] == [h["loss"] for h in hist_b]
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    trivial = segmentation_metrics(np.zeros_like(masks), masks, num_classes=2)["dice"]
    scores = evaluate_victim(model_a, images, masks, task="segmentation", num_classes=2, config=config)
    assert trivial == 0.0
    assert scores["dice"] > trivial + 0.3
    labels = predict(model_a, images, task="segmentation", config=config)
    assert labels.shape == masks.shape and labels.dtype == np.int64


def test_other_seed_gives_other_weights(hc18):
    images, masks = hc18
    a, _ = _train_unet(images[:8], masks[:8], TrainConfig(epochs=1, batch_size=4, seed=0, device="cpu"))
    b, _ = _train_unet(images[:8], masks[:8], TrainConfig(epochs=1, batch_size=4, seed=1, device="cpu"))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_3d_patch_training_and_sliding_window(real_data):
    images, labels, _ = load_split(real_data / "msd_hippocampus", "train", limit=3)
    config = TrainConfig(epochs=2, batch_size=2, lr=1e-2, device="cpu", patch_size=(24, 24, 24), num_threads=1)
    model = build_victim("unet", spatial_dims=3, in_channels=1, out_channels=3, seed=0)
    history = train_victim(model, images, labels, task="segmentation", num_classes=3, config=config)
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])
    pred = predict(model, images, task="segmentation", config=config)  # roi = patch_size
    assert pred.shape == labels.shape
    logits = predict(model, images[:1], task="segmentation", config=config, roi_size=(16, 16, 16), logits=True)
    assert logits.shape == (1, 3, *labels.shape[1:])
    scores = evaluate_victim(model, images, labels, task="segmentation", num_classes=3, config=config)
    assert {"dice", "dice_1", "dice_2", "iou", "hd95"} <= set(scores)


def test_augmented_training_runs(hc18):
    images, masks = hc18
    config = TrainConfig(epochs=1, batch_size=4, device="cpu", num_threads=1)
    model = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2, seed=0)
    augment = build_defense("augmentation").augment
    history = train_victim(model, images[:8], masks[:8], task="segmentation", num_classes=2, config=config,
                           augment=augment)
    assert len(history) == 1


def test_classification_with_early_stopping(real_data):
    with np.load(real_data / "pneumoniamnist" / "pneumoniamnist.npz") as npz:  # ordered by class: spread the 48
        pick = np.linspace(0, len(npz["train_labels"]) - 1, 48).round().astype(int)
        images = (npz["train_images"][pick].astype(np.float32) / 255.0)[:, None]
        labels = npz["train_labels"].reshape(-1)[pick].astype(np.int64)
    config = TrainConfig(epochs=3, batch_size=16, device="cpu", val_fraction=0.25, patience=1, num_threads=1)
    model = build_victim("resnet18", spatial_dims=2, in_channels=1, out_channels=2, seed=0)
    history = train_victim(model, images, labels, task="classification", num_classes=2, config=config)
    assert 1 <= len(history) <= 3 and all("val_loss" in h for h in history)
    scores = evaluate_victim(model, images, labels, task="classification", num_classes=2, config=config)
    assert 0 <= scores["accuracy"] <= 1 and 0 <= scores["auc"] <= 1
    assert predict(model, images, task="classification", config=config).shape == labels.shape


def test_bad_data_is_refused(hc18):
    images, masks = hc18
    model = build_victim("unet", spatial_dims=2, in_channels=1, out_channels=2)
    config = TrainConfig(epochs=1, device="cpu")
    with pytest.raises(ConfigError, match="shape"):
        train_victim(model, images, masks[:, :32], task="segmentation", num_classes=2, config=config)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        train_victim(model, images * 255, masks, task="segmentation", num_classes=2, config=config)
    with pytest.raises(ConfigError, match="num_classes"):
        train_victim(model, images, masks, task="segmentation", num_classes=3, config=config)
    with pytest.raises(ConfigError, match="patch_size"):
        train_victim(model, images, masks, task="segmentation", num_classes=2,
                     config=TrainConfig(epochs=1, device="cpu", patch_size=(96, 96)))


def test_a_lone_last_sample_is_skipped_and_the_loss_is_a_per_sample_mean():
    torch.manual_seed(0)
    images = np.random.default_rng(0).random((5, 1, 4, 4), dtype=np.float32)
    labels = np.array([0, 1, 0, 1, 1])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    seen = []
    model.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].shape[0]))
    config = TrainConfig(epochs=1, batch_size=2, lr=0.1, device="cpu", optimizer="SGD")
    history = train_victim(model, images, labels, task="classification", num_classes=2, config=config)
    assert seen == [2, 2]  # 5 samples: two batches of 2, the last one alone is skipped
    assert len(history) == 1 and np.isfinite(history[0]["loss"]) and not model.training


def test_a_model_of_the_wrong_width_is_refused():
    images = np.zeros((4, 1, 4, 4), dtype=np.float32)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    with pytest.raises(ConfigError, match="3 channels"):
        train_victim(model, images, np.array([0, 1, 0, 1]), task="classification", num_classes=2,
                     config=TrainConfig(epochs=1, batch_size=2, device="cpu"))

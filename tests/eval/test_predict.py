"""Running a victim (ulmed/eval/predict.py): batches, sliding windows, eval mode, metrics, SAL."""

import numpy as np
import pytest
import torch
from torch import nn

from ulmed.core.tasks import Task, task_loss
from ulmed.errors import ConfigError
from ulmed.eval.predict import eval_mode, evaluate_victim, mean_loss, predict, victim_sal
from ulmed.eval.train_config import TrainConfig


def _segmenter() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Dropout(0.5))
    with torch.no_grad():  # class 1 where the pixel is bright
        model[0].weight.copy_(torch.tensor([[[[-10.0]]], [[[10.0]]]]))
        model[0].bias.copy_(torch.tensor([5.0, -5.0]))
    return model


def _data():
    images = np.zeros((3, 1, 8, 8), dtype=np.float32)
    images[:, :, 2:5, 3:6] = 1.0
    return images, (images[:, 0] > 0.5).astype(np.int64)


def test_labels_and_logits_batch_by_batch_in_eval_mode():
    images, masks = _data()
    model = _segmenter().train()
    config = TrainConfig(batch_size=2, device="cpu")
    labels = predict(model, images, task="segmentation", config=config)
    assert labels.dtype == np.int64 and np.array_equal(labels, masks)  # dropout off: exact
    logits = predict(model, images, task="segmentation", config=config, logits=True)
    assert logits.shape == (3, 2, 8, 8) and logits.dtype == np.float32
    window = predict(model, images, task="segmentation", config=config, roi_size=(4, 4))
    assert np.array_equal(window, masks)  # a 1x1 convolution is the same through sliding windows
    assert model.training  # the mode is restored


def test_metrics_and_mean_loss_of_a_perfect_model():
    images, masks = _data()
    config = TrainConfig(batch_size=2, device="cpu")
    scores = evaluate_victim(_segmenter(), images, masks, task=Task.SEGMENTATION, num_classes=2, config=config)
    assert scores["dice"] == pytest.approx(1.0) and scores["n"] == 3
    loss = mean_loss(_segmenter(), images, masks, Task.SEGMENTATION, config, task_loss("segmentation"))
    assert 0 <= loss < 0.1


def test_eval_mode_turns_off_gradients_and_restores_the_mode():
    model = _segmenter().train()
    with eval_mode(model) as m:
        assert not m.training and not torch.is_grad_enabled()
    assert model.training and torch.is_grad_enabled()


def test_windows_are_for_segmentation_and_sal_has_one_row_per_layer():
    images, masks = _data()
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    with pytest.raises(ConfigError, match="segmentation only"):
        predict(flat, images, task="classification", config=TrainConfig(device="cpu"), roi_size=(4, 4))
    sal = victim_sal(_segmenter(), images, masks, task="segmentation", config=TrainConfig(device="cpu"),
                     n_batches=1, batch_size=2)
    assert [row["layer"] for row in sal] == ["0"] and sal[0]["sal"] >= 0

"""PNG figures of an evaluation: metric bars and picture strips."""

from __future__ import annotations

import shutil

import numpy as np
from PIL import Image

from ulmed.eval.data import load_eval_data
from ulmed.eval.figures import _view, metric_bars, picture_strip
from ulmed.eval.loading import Preprocess


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_metric_bars_draws_one_panel_per_victim(tmp_path):
    cells = [{"victim": v, "defense": d, "protection": p, "value": value}
             for v in ("unet", "segresnet") for d in ("none", "jpeg75")
             for p, value in (("clean", 0.8), ("lsp", float("nan")))]
    report = {"victims": ["unet", "segresnet"], "defenses": ["none", "jpeg75"], "cells": cells, "main_metric": "dice"}
    one = metric_bars({**report, "victims": ["unet"]}, tmp_path / "one.png")
    two = metric_bars(report, tmp_path / "two.png")
    assert _png_size(two)[0] > 1.5 * _png_size(one)[0]  # a second panel beside the first


def test_view_picks_a_2d_picture():
    assert _view(np.zeros((1, 5, 6))).shape == (5, 6)
    assert _view(np.zeros((3, 5, 6))).shape == (5, 6, 3)
    volume = np.zeros((1, 4, 5, 6))
    volume[0, 2] = 1.0
    assert _view(volume).shape == (5, 6) and _view(volume).max() == 1.0  # the middle slice


def test_picture_strip_has_a_row_per_item(real_data, tmp_path):
    data = load_eval_data(real_data / "hc18", preprocess=Preprocess(size=(16, 16)), train_limit=2, test_limit=1)
    copy = tmp_path / "copy"
    shutil.copytree(real_data / "hc18", copy)
    key = data.train_keys[0]
    with Image.open(copy / key) as im:
        arr = np.asarray(im.convert("L")).copy()
    arr[::2, ::2] = np.clip(arr[::2, ::2].astype(int) + 4, 0, 255)
    Image.fromarray(arr).save(copy / key)
    one = _png_size(picture_strip(data, copy, tmp_path / "one.png", "test", items=1))
    two = _png_size(picture_strip(data, copy, tmp_path / "two.png", "test", items=2))
    assert two[1] > 1.5 * one[1]

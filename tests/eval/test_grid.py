"""The evaluation grid's steps: plan, resume of one cell, a defense on its own grid."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ulmed.errors import ConfigError, OutputError
from ulmed.eval.cells import load_examples
from ulmed.eval.defenses import mix_mask
from ulmed.eval.grid import (
    CLEAN,
    CLEAN_PART,
    EvalOptions,
    clean_part,
    load_cell,
    plan_cells,
    prepare,
    run_cell,
    view_of,
)
from ulmed.eval.train import TrainConfig

TINY = TrainConfig(epochs=1, batch_size=4, device="cpu", num_threads=1)


def _options(**kw):
    return EvalOptions(**{"size": (16, 16), "train_limit": 4, "test_limit": 2, "train_config": TINY, **kw})


def test_clean_part_is_the_complement_of_the_mix():
    keep = clean_part(10, "mix0.8", seed=3)
    np.testing.assert_array_equal(keep, ~mix_mask(10, 0.8, np.random.default_rng(3)))
    assert clean_part(10, "jpeg75", 3) is None and clean_part(4, "mix0.8", 3) is None  # under 2 clean samples


@pytest.fixture(scope="module")
def prepared(real_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "out"
    return prepare(real_data / "hc18", {}, out, _options(defenses=("none", "mix0.5"))), out


def test_prepare_and_plan(prepared, real_data):
    run, _ = prepared
    assert run.data.train_images.shape == (4, 1, 16, 16) and set(run.train_sets) == {CLEAN}
    assert run.settings["train_limit"] == 4 and run.settings["loader"]["size"] == (16, 16)
    assert "test" in run.base_fingerprint and "learnability" not in run.settings
    assert plan_cells(run) == [("unet", "none", CLEAN), ("unet", "mix0.5", CLEAN), ("unet", "mix0.5", CLEAN_PART)]
    with pytest.raises(OutputError, match="overlaps"):
        prepare(real_data / "hc18", {}, real_data / "hc18" / "out", _options())


def test_a_finished_cell_is_reused_and_a_stale_one_retrained(prepared):
    run, out = prepared
    first = run_cell(run, out, "unet", "mix0.5", CLEAN_PART)
    assert first["reused"] is False and first["n_train"] == 2 and first["trained_with_defense"] == "none"
    assert first["main_metric"] == "dice" and first["value"] == first["metrics"]["dice"]
    path = out / "cells" / "unet__mix0.5__clean_part.json"
    again = run_cell(run, out, "unet", "mix0.5", CLEAN_PART)
    assert again["reused"] is True and again["metrics"] == first["metrics"]
    assert load_cell(path, "another fingerprint") is None
    path.write_text("{not json")
    assert load_cell(path, first["fingerprint"]) is None
    saved = json.loads(json.dumps(first))
    path.write_text(json.dumps(saved))
    assert load_cell(path, first["fingerprint"])["reused"] is True


def test_a_trainer_grid_defense_reads_the_files_again_on_its_grid(prepared, real_data):
    run, out = prepared
    assert view_of(run, "none").data is run.data
    view = view_of(run, "resize:24")
    assert view.data.train_images.shape == (4, 1, 24, 24) and view.data.test_images.shape[2:] == (24, 24)
    assert view.data.train_keys == run.data.train_keys and view_of(run, "resize:24").data is view.data  # once
    cell = run_cell(run, out, "unet", "resize:24", CLEAN)
    again = run_cell(run, out, "unet", "none", CLEAN)
    assert cell["n_train"] == 4 and cell["fingerprint"] != again["fingerprint"]
    assert load_examples(out / "cells", "unet", "resize:24", CLEAN).shape == (2, 24, 24)
    with pytest.raises(ConfigError, match="for 3D data"):
        prepare(real_data / "hc18", {}, out.parent / "o3", _options(defenses=("resample:1,1,1",)))

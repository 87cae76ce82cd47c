"""An nnU-Net victim as a grid cell: which files it is handed, which defenses it trains under."""

from __future__ import annotations

import shutil

import pytest

from ulmed.errors import ConfigError
from ulmed.eval.grid import CLEAN, EvalOptions, plan_cells, prepare, run_cell
from ulmed.eval.nnunet import cell as nnunet_cell
from ulmed.eval.nnunet.cell import applies, cell_cases, check_nnunet_victim, is_nnunet
from ulmed.eval.train import TrainConfig

TINY = TrainConfig(epochs=2, batch_size=4, device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def copy_run(real_data, tmp_path_factory):
    """A prepared 2D grid with an nnU-Net victim and a 'protected' copy (the originals, copied)."""
    root = tmp_path_factory.mktemp("nn")
    copy = root / "copy"
    shutil.copytree(real_data / "hc18" / "images", copy / "images")
    options = EvalOptions(victims=["unet", "nnunet-2d"], defenses=["none", "flip_jitter", "mix0.5"], size=(16, 16),
                          train_limit=4, test_limit=2, train_config=TINY, iterations=3)
    return prepare(real_data / "hc18", {"copy": copy}, root / "out", options), copy


def test_nnunet_victims_train_only_under_their_own_pipeline(copy_run):
    run, _ = copy_run
    assert is_nnunet("nnunet-3d") and not is_nnunet("unet")
    assert applies("nnunet-2d", "none") and not applies("nnunet-2d", "flip_jitter") and applies("unet", "blur")
    cells = plan_cells(run)
    assert [c for c in cells if c[0] == "nnunet-2d"] == [("nnunet-2d", "none", CLEAN), ("nnunet-2d", "none", "copy")]
    assert ("unet", "mix0.5", "clean_part") in cells
    assert run.settings["nnunet_schedule"]["iterations"] == 3 and run.settings["nnunet_schedule"]["epochs"] == 2


def test_the_cell_hands_nnunet_the_copy_files_with_the_original_masks(copy_run, monkeypatch, tmp_path):
    run, copy = copy_run
    calls = []

    def fake_run(train, test, *, spatial_dims, schedule, workdir):
        calls.append((train, test, spatial_dims, schedule, workdir))
        return {"metrics": {"dice": 0.5, "dice_per_class": {"1": 0.5}}, "train_s": 1.0, "test_s": 0.5, "wall_s": 2.0,
                "plans": {"configuration": "2d"}, "train_losses": [0.9, 0.7], "reused": False}

    monkeypatch.setattr(nnunet_cell, "run_nnunet", fake_run)
    out = tmp_path / "out"
    result = run_cell(run, out, "nnunet-2d", "none", "copy")
    (train, test, dims, schedule, workdir), = calls
    assert [p for p, _ in train] == [copy / key for key in run.data.train_keys]
    assert [t for _, t in train] == run.data.train_target_paths and dims == 2 and workdir == out / "nnunet"
    assert [p for p, _ in test] == run.data.test_image_paths  # tested on the clean files
    assert (schedule.epochs, schedule.iterations, schedule.seed) == (2, 3, 0)
    assert result["value"] == 0.5 and result["final_loss"] == 0.7 and result["nnunet"]["plans"]["configuration"] == "2d"
    assert run_cell(run, out, "nnunet-2d", "none", "copy")["reused"] is True and len(calls) == 1
    clean = cell_cases(run.data, None)
    assert [p for p, _ in clean] == run.data.train_image_paths


def test_an_nnunet_victim_must_fit_the_data(copy_run):
    run, _ = copy_run
    check_nnunet_victim("nnunet-2d", run.data)
    with pytest.raises(ConfigError, match="use nnunet-2d"):
        check_nnunet_victim("nnunet-3d", run.data)

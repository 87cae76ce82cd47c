"""run_nnunet: input checks, the reuse key, the worker's failures, and nnU-Net trained end to end.

The end-to-end runs train nnU-Net's own trainer for 1 epoch of 2 iterations on CPU (3d_fullres on
the 4 MSD hippocampus train volumes, 2d on 3 HC18 images) and predict the clean test cases:
about 45 s and 40 s on 2 cores, most of it nnU-Net's planning processes and prediction.
"""

from __future__ import annotations

import csv
import json
import sys

import nibabel as nib
import numpy as np
import pytest

from ulmed.errors import ConfigError, InputError, MissingDependencyError
from ulmed.eval.nnunet import NNUNET_VICTIMS, NnunetFailed, NnunetSchedule, run_nnunet
from ulmed.eval.nnunet.runner import run_key, run_worker, worker_env

TINY = NnunetSchedule(epochs=1, iterations=2, val_iterations=1)
needs_nnunet = pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("nnunetv2") is None, reason="nnunetv2 not installed")


def _cases(root, split, label_col, limit=None):
    rows = [r for r in csv.DictReader(open(root / "index.csv")) if r["split"] == split][:limit]
    return [(root / r["image"], root / r[label_col]) for r in rows]


def test_missing_nnunet_says_how_to_install(real_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)
    cases = _cases(real_data / "msd_hippocampus", "train", "label", 1)
    with pytest.raises(MissingDependencyError, match=r'pip install "ulmed\[nnunet\]"'):
        run_nnunet(cases, cases, spatial_dims=3, schedule=TINY, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


def test_bad_calls_are_refused_before_any_work(real_data, tmp_path):
    cases = _cases(real_data / "msd_hippocampus", "train", "label", 1)
    with pytest.raises(ConfigError, match="spatial_dims"):
        run_nnunet(cases, cases, spatial_dims=1, schedule=TINY, workdir=tmp_path)
    with pytest.raises(ConfigError, match="0 test"):
        run_nnunet(cases, [], spatial_dims=3, schedule=TINY, workdir=tmp_path)
    with pytest.raises(ConfigError, match="NnunetSchedule"):
        run_nnunet(cases, cases, spatial_dims=3, schedule={"epochs": 1}, workdir=tmp_path)
    assert not any(tmp_path.iterdir())


@needs_nnunet
def test_a_missing_input_file_is_named(real_data, tmp_path):
    image = real_data / "msd_hippocampus/images/hippocampus_003.nii.gz"
    with pytest.raises(InputError, match="nope.nii.gz"):
        run_nnunet([(image, tmp_path / "nope.nii.gz")], [(image, image)], spatial_dims=3, schedule=TINY,
                   workdir=tmp_path / "w")


def test_the_reuse_key_follows_inputs_and_schedule_but_not_threads(real_data, tmp_path):
    cases = _cases(real_data / "msd_hippocampus", "train", "label", 2)
    base = run_key(cases, cases[:1], 3, TINY)
    assert run_key(cases, cases[:1], 3, NnunetSchedule(epochs=1, iterations=2, val_iterations=1, threads=2)) == base
    assert run_key(cases, cases[:1], 3, NnunetSchedule(epochs=2, iterations=2, val_iterations=1)) != base
    assert run_key(cases[::-1], cases[:1], 3, TINY) != base
    assert run_key(cases, cases[:1], 2, TINY) != base
    copy = tmp_path / "copy.nii.gz"
    copy.write_bytes(cases[0][0].read_bytes() + b"\0")
    assert run_key([(copy, cases[0][1]), cases[1]], cases[:1], 3, TINY) != base


def test_victim_names():
    assert NNUNET_VICTIMS == {"nnunet-2d": 2, "nnunet-3d": 3}


@needs_nnunet
def test_a_failing_worker_raises_with_the_end_of_its_log(tmp_path):
    spec = {"dataset_id": 999, "configuration": "3d_fullres", "schedule": TINY.to_dict(), "workers": 0,
            "processes": 1, "test_images": [], "predictions": str(tmp_path / "p"), "output": str(tmp_path / "o.json")}
    with pytest.raises(NnunetFailed, match="exit status 1") as info:
        run_worker(spec, tmp_path, worker_env(tmp_path, TINY))
    assert "999" in str(info.value) and (tmp_path / "worker.log").is_file()


def test_nnunet_missing_in_the_worker_process(tmp_path):
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['nnunetv2'] = None\n")
    env = worker_env(tmp_path, TINY)
    env["PYTHONPATH"] = f"{hide}:{env['PYTHONPATH']}"
    spec = {"dataset_id": 1, "configuration": "2d", "schedule": TINY.to_dict(), "workers": 0, "processes": 1,
            "test_images": [], "predictions": str(tmp_path / "p"), "output": str(tmp_path / "o.json")}
    with pytest.raises(MissingDependencyError, match=r'pip install "ulmed\[nnunet\]"'):
        run_worker(spec, tmp_path, env)


@pytest.fixture(scope="module")
def hippocampus_run(real_data, tmp_path_factory):
    if __import__("importlib.util").util.find_spec("nnunetv2") is None:
        pytest.skip("nnunetv2 not installed")
    root = real_data / "msd_hippocampus"
    train, test = _cases(root, "train", "label"), _cases(root, "test", "label")
    workdir = tmp_path_factory.mktemp("nnunet3d")
    return train, test, workdir, run_nnunet(train, test, spatial_dims=3, schedule=TINY, workdir=workdir)


def test_3d_fullres_end_to_end_scores_every_class(hippocampus_run):
    train, test, _, result = hippocampus_run
    metrics = result["metrics"]
    assert set(metrics["dice_per_class"]) == {"1", "2"}
    assert all(0.0 <= v <= 1.0 for v in metrics["dice_per_class"].values())
    assert metrics["dice"] == pytest.approx(np.mean(list(metrics["dice_per_class"].values())))
    assert metrics["n"] == len(test) == result["n_test"] == 3 and result["n_train"] == len(train) == 4
    assert result["victim"] == "nnunet-3d" and result["reused"] is False
    assert result["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert result["schedule"] == TINY.to_dict() and len(result["train_losses"]) == 1
    assert all(result[k] > 0 for k in ("plan_s", "train_s", "test_s")) and result["wall_s"] >= result["train_s"]


def test_3d_fullres_end_to_end_records_nnunets_plans(hippocampus_run):
    plans = hippocampus_run[3]["plans"]
    assert plans["configuration"] == "3d_fullres" and plans["trainer"] == "nnUNetTrainer_1epochs_2it"
    assert len(plans["patch_size"]) == 3 and all(p % 8 == 0 for p in plans["patch_size"])
    assert plans["batch_size"] >= 2 and plans["spacing"] == pytest.approx([1.0, 1.0, 1.0])
    assert plans["normalization"] == ["ZScoreNormalization"]


def test_3d_predictions_are_in_the_test_geometry_and_names_stay_anonymous(hippocampus_run):
    _, test, _, result = hippocampus_run
    from pathlib import Path

    run_dir = Path(result["run_dir"])
    for i, (image, _) in enumerate(test):
        pred = nib.load(run_dir / "predictions" / f"case_{i:04d}.nii.gz")
        src = nib.load(image)
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}
    names = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*")]
    assert not any("hippocampus" in n for n in names)
    checkpoints = sorted(p.name for p in run_dir.rglob("*.pth"))
    assert checkpoints == ["checkpoint_final.pth"]


def test_3d_rerun_reuses_the_finished_result(hippocampus_run):
    train, test, workdir, first = hippocampus_run
    result_file = next(workdir.glob("nnunet-*/result.json"))
    mtime = result_file.stat().st_mtime_ns
    again = run_nnunet(train, test, spatial_dims=3, schedule=NnunetSchedule(epochs=1, iterations=2,
                       val_iterations=1, threads=1), workdir=workdir)
    assert again["reused"] is True and again["metrics"] == first["metrics"] and again["key"] == first["key"]
    assert result_file.stat().st_mtime_ns == mtime
    assert json.loads(result_file.read_text())["reused"] is False


@needs_nnunet
def test_2d_end_to_end_on_hc18(real_data, tmp_path):
    root = real_data / "hc18"
    train, test = _cases(root, "train", "mask", 3), _cases(root, "test", "mask", 2)
    schedule = NnunetSchedule(epochs=1, iterations=2, val_iterations=1, mirroring=False)
    result = run_nnunet(train, test, spatial_dims=2, schedule=schedule, workdir=tmp_path)
    assert result["victim"] == "nnunet-2d" and result["plans"]["configuration"] == "2d"
    assert len(result["plans"]["patch_size"]) == 2 and result["labels"] == {"background": 0, "label_255": 1}
    assert 0.0 <= result["metrics"]["dice_per_class"]["1"] <= 1.0 and result["metrics"]["n"] == 2
    from PIL import Image

    pred = np.asarray(Image.open(f"{result['run_dir']}/predictions/case_0000.png"))
    assert pred.shape == np.asarray(Image.open(test[0][0])).shape[:2] and set(np.unique(pred)) <= {0, 1}

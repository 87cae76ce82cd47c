"""``ulmed evaluate``: --quick fills what is not given; sizes are read or refused in one line."""

from __future__ import annotations

import json

import pytest

from ulmed.cli import main
from ulmed.cli.evaluation import QUICK, quick_settings


def test_quick_fills_only_what_was_not_given():
    given = {"epochs": None, "batch_size": 16, "size": None, "shape": None, "limit": None}
    assert quick_settings(False, given) == given
    assert quick_settings(True, given) == {**QUICK, "batch_size": 16}


@pytest.fixture
def evaluations(monkeypatch):
    import ulmed.eval.grid as grid

    calls = []
    monkeypatch.setattr(grid, "run_evaluation", lambda *a, **k: calls.append((a, k)) or {"summary": "done"})
    return calls


def test_evaluate_passes_the_settings_to_the_evaluation(tmp_path, evaluations, capsys):
    args = ["--seed", "2", "evaluate", "--clean", str(tmp_path), "-o", str(tmp_path / "r"), "--quick", "--epochs", "7",
            "--protected", f"lsp={tmp_path / 'p'}", "--patch", "16x16"]
    assert main(args) == 0
    (positional, options), = evaluations
    assert positional[1] == {"lsp": tmp_path / "p"}
    assert options["train_config"].epochs == 7 and options["train_config"].batch_size == QUICK["batch_size"]
    assert options["train_config"].patch_size == (16, 16)
    assert options["size"] == (32, 32) and options["shape"] == (24, 32, 24) and options["seed"] == 2
    assert options["masks"] is None and options["labels"] is None and options["subject"] is None
    assert options["test_fraction"] == 0.2 and options["kernel"] == "pil" and options["spacing"] is None
    assert capsys.readouterr().err.strip().endswith("done")


def test_evaluate_passes_the_data_options(tmp_path, evaluations):
    args = ["evaluate", "--clean", str(tmp_path), "-o", str(tmp_path / "r"), "--masks", str(tmp_path / "m"),
            "--labels", str(tmp_path / "l.csv"), "--subject", r"(\d+)_", "--test-fraction", "0.3",
            "--kernel", "cv-area", "--spacing", "1,1,1.5"]
    assert main(args) == 0
    (_, options), = evaluations
    assert options["masks"] == tmp_path / "m" and options["labels"] == tmp_path / "l.csv"
    assert options["subject"] == r"(\d+)_" and options["test_fraction"] == 0.3
    assert options["kernel"] == "cv-area" and options["spacing"] == (1.0, 1.0, 1.5)


def test_a_bad_spacing_is_a_one_line_error(tmp_path, evaluations, capsys):
    assert main(["evaluate", "--clean", str(tmp_path), "-o", str(tmp_path / "r"), "--spacing", "1,a,1"]) == 2
    assert evaluations == [] and "--spacing needs three numbers X,Y,Z in mm, got '1,a,1'" in capsys.readouterr().err


def _quick(clean, out, *extra):
    return main(["--device", "cpu", "evaluate", "--clean", str(clean), "-o", str(out), "--quick", "--epochs", "1",
                 "--size", "16", "--limit", "6", "--threads", "1", *extra])


def test_evaluate_a_folder_without_an_index(plain_folders, tmp_path, capsys):
    out = tmp_path / "seg"
    assert _quick(plain_folders["seg2d"], out, "--subject", r"(\d+)_HC", "--test-fraction", "0.3") == 0, \
        capsys.readouterr().err
    saved = json.loads((out / "report.json").read_text())
    split = json.loads((out / "split.json").read_text())
    assert saved["settings"]["split"]["rule"]["subject"] == r"(\d+)_HC" and split["items"] == {"train": 7, "test": 3}
    assert saved["settings"]["n_train"] == 6 and saved["cells"][0]["main_metric"] == "dice"
    assert _quick(plain_folders["seg2d"], out, "--subject", r"(\d+)_HC", "--test-fraction", "0.3") == 0
    assert json.loads((out / "split.json").read_text()) == split and "1 reused" in capsys.readouterr().err


def test_evaluate_images_with_a_labels_csv(plain_folders, tmp_path, capsys):
    out = tmp_path / "cls"
    code = _quick(plain_folders["cls"], out, "--labels", str(plain_folders["cls"] / "labels.csv"), "--victim",
                  "resnet18", "--subject", "^(pt[0-9]+)_")
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "report.json").read_text())
    assert saved["main_metric"] == "accuracy" and saved["settings"]["data"]["classes"] == ["normal", "pneumonia"]
    assert saved["settings"]["split"]["subjects"] == {"train": 10, "test": 2}


def test_a_bad_shape_is_a_one_line_error(tmp_path, evaluations, capsys):
    assert main(["evaluate", "--clean", str(tmp_path), "-o", str(tmp_path / "r"), "--shape", "big"]) == 2
    assert evaluations == [] and "--shape needs three integers D,H,W, got 'big'" in capsys.readouterr().err

"""``ulmed evaluate``: --quick fills what is not given; sizes are read or refused in one line."""

from __future__ import annotations

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
    assert capsys.readouterr().err.strip().endswith("done")


def test_a_bad_shape_is_a_one_line_error(tmp_path, evaluations, capsys):
    assert main(["evaluate", "--clean", str(tmp_path), "-o", str(tmp_path / "r"), "--shape", "big"]) == 2
    assert evaluations == [] and "--shape needs three integers D,H,W, got 'big'" in capsys.readouterr().err

"""benchmarks/device_check.py: its CPU part runs on the repository's data, in a tiny setting."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "device_check.py"


@pytest.fixture(scope="module")
def device_check():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


def test_tiny_cpu_run_writes_the_table_and_json(device_check, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    out = tmp_path / "check.json"
    result = device_check.main(["--methods", "em,unseg", "--images", "3", "--size", "32", "--rounds", "1",
                                "--train-steps", "1", "--pgd-steps", "1", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["notes"] == ["CUDA was not available: only the CPU part ran"]
    cells = {(r["method"], r["precision"]): r for r in result["rows"]}
    assert set(cells) == {("em", "fp32"), ("em", "bf16"), ("unseg", "fp32"), ("unseg", "bf16")}
    assert all(r["device"] == "cpu" for r in result["rows"])
    assert "CUDA-only" in cells["em", "bf16"]["skipped"]
    for key in (("em", "fp32"), ("unseg", "fp32"), ("unseg", "bf16")):
        row = cells[key]
        assert "error" not in row, row
        assert row["images"] == 3 and row["images_per_s"] > 0 and row["peak_gpu_mb"] is None
        assert 0 < row["max_change_255"] <= 8  # within the 8/255 budget, in stored steps
    assert cells["em", "fp32"]["rounds_run"] == 1
    assert cells["unseg", "bf16"]["agree_with"] == "cpu fp32" and 0.5 < cells["unseg", "bf16"]["agree"] <= 1
    printed = capsys.readouterr().out
    assert "images/s" in printed and "CUDA was not available" in printed


def test_a_failing_cell_is_reported_and_the_run_goes_on(device_check, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this dtype")

    monkeypatch.setattr(device_check, "protect_all", broken)
    result = device_check.main(["--devices", "cpu", "--methods", "unseg", "--precisions", "fp32", "--images", "2",
                                "--size", "32", "--out", str(tmp_path / "c.json")])
    assert result["notes"] == [] and result["rows"][0]["error"] == "RuntimeError: no kernel for this dtype"

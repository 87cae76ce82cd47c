"""A cell on disk: digest, example predictions and the fingerprint check of load_cell."""

from __future__ import annotations

import json

import numpy as np

from ulmed.eval.cells import cell_key, digest, load_cell, load_examples, write_examples


def test_digest_tells_content_dtype_and_shape_apart():
    a = np.zeros((2, 3), dtype=np.float32)
    assert digest(a) == digest(a.copy())
    assert len({digest(a), digest(a.astype(np.float64)), digest(a.reshape(3, 2)), digest(a + 1)}) == 4
    assert digest(a, a) != digest(a)


def test_examples_round_trip_and_absent_ones_are_none(tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, size=(2, 8, 8)).astype(np.uint8)
    write_examples(tmp_path / f"{cell_key('unet', 'none', 'lsp')}.examples.npz", labels)
    np.testing.assert_array_equal(load_examples(tmp_path, "unet", "none", "lsp"), labels)
    assert load_examples(tmp_path, "unet", "none", "clean") is None
    (tmp_path / f"{cell_key('unet', 'none', 'bad')}.examples.npz").write_bytes(b"not an npz")
    assert load_examples(tmp_path, "unet", "none", "bad") is None


def test_cell_keys_are_file_names_everywhere():
    assert cell_key("unet", "mix0.5", "lsp") == "unet__mix0.5__lsp"
    assert cell_key("unet", "resize:128:torch", "clean") == "unet__resize=128=torch__clean"
    assert cell_key("unet", "resample:1,1,1.5", "clean") == "unet__resample=1_1_1.5__clean"


def test_load_cell_checks_the_fingerprint(tmp_path):
    path = tmp_path / "c.json"
    assert load_cell(path, "fp") is None
    path.write_text(json.dumps({"fingerprint": "fp", "metrics": {"dice": None, "iou": 0.5}}))
    cell = load_cell(path, "fp")
    assert cell["reused"] is True and np.isnan(cell["metrics"]["dice"]) and cell["metrics"]["iou"] == 0.5
    assert load_cell(path, "other") is None
    path.write_text("{broken")
    assert load_cell(path, "fp") is None

"""ML-ready releases (``ulmed release --size N``) of real HC18 images: one grid, masks kept as labels, geometry,
resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import tree_hashes
from tests.pipeline.conftest import SUBJECTS
from ulmed.cli import app, main
from ulmed.core.grid import Fit, WorkingGrid
from ulmed.errors import ConfigError
from ulmed.pipeline.protect import summarize
from ulmed.pipeline.release import release_dataset, verify_release
from ulmed.pipeline.resample import GEOMETRY_NAME, fit_array


@pytest.fixture(scope="module")
def released(dataset, tmp_path_factory):
    before = tree_hashes(dataset)
    report = release_dataset(dataset, tmp_path_factory.mktemp("rel") / "release", method="lsp", eps="8/255", size=64)
    assert tree_hashes(dataset) == before, "the input was modified"
    return report


def test_every_image_and_mask_is_on_the_grid_and_masks_keep_their_labels(released, dataset):
    for s in SUBJECTS:
        image = np.asarray(Image.open(released.path / "images" / f"{s}.png"))
        mask = np.asarray(Image.open(released.path / "masks" / f"{s}.png"))
        source = np.asarray(Image.open(dataset / "masks" / f"{s}.png"))
        assert image.shape == mask.shape == (64, 64) and image.dtype == np.uint8
        assert set(np.unique(mask)) == set(np.unique(source))  # nearest neighbour: no new label values
        rows = np.flatnonzero(image.any(axis=1))  # letterbox: HC18 is wider than tall, padded rows stay 0
        assert rows[0] > 0 and rows[-1] < 63 and not mask[: rows[0]].any()
    assert (released.path / "index.csv").read_bytes() == (dataset / "index.csv").read_bytes()


def test_the_geometry_maps_back_to_the_native_pixels(released, dataset):
    geometry = json.loads((released.path / GEOMETRY_NAME).read_text())
    assert geometry["size"] == 64 and geometry["fit"] == "letterbox" and len(geometry["images"]) == len(SUBJECTS)
    entry = geometry["images"][f"images/{SUBJECTS[0]}.png"]
    h, w = np.asarray(Image.open(dataset / "images" / f"{SUBJECTS[0]}.png")).shape
    assert entry["shape"] == [h, w] and entry["offset"][1] == 0
    assert round(h * entry["scale"][0]) + 2 * entry["offset"][0] in (63, 64)


def test_the_card_says_what_was_resampled_and_the_release_verifies(released):
    card = released.datacard.read_text()
    assert "64 x 64" in card and "nearest neighbour" in card and "resampled" in card
    assert verify_release(released.path).ok
    assert released.records == len(SUBJECTS)


def test_a_rerun_writes_the_same_release(released, dataset, tmp_path):
    before = tree_hashes(released.path)
    again = release_dataset(dataset, tmp_path / "again", method="lsp", eps="8/255", size=64)
    assert summarize(again.manifest)["written"] == len(SUBJECTS)
    after = tree_hashes(again.path)
    assert {k: v for k, v in after.items() if k not in ("manifest.json", "DATACARD.md", "SHA256SUMS")} == \
        {k: v for k, v in before.items() if k not in ("manifest.json", "DATACARD.md", "SHA256SUMS")}


def test_stretch_fills_the_square_and_rgb_keeps_its_channels():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    out, geo = fit_array(rgb, WorkingGrid((16,), Fit.STRETCH), nearest=False)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8 and geo["offset"] == [0, 0]
    labels = np.zeros((30, 50), np.uint16)
    labels[10:20, 10:40] = 300
    small, _ = fit_array(labels, WorkingGrid((16,)), nearest=True)
    assert set(np.unique(small)) == {0, 300} and small.dtype == np.uint16


def test_volumes_and_an_outside_masks_folder_are_refused(real_data, tmp_path, dataset):
    with pytest.raises(ConfigError, match="volumes"):
        release_dataset(real_data / "msd_hippocampus", tmp_path / "a", method="none", size=32)
    with pytest.raises(ConfigError, match="masks"):
        release_dataset(dataset / "images", tmp_path / "b", method="none", size=32, masks=dataset / "masks")


def test_the_cli_writes_an_ml_ready_release(dataset, tmp_path, capsys):
    result = CliRunner().invoke(app, ["release", "-i", str(dataset), "-o", str(tmp_path / "r"), "--size", "48",
                                      "--fit", "stretch", "--method", "none"])
    assert result.exit_code == 0, result.output
    assert np.asarray(Image.open(tmp_path / "r" / "images" / f"{SUBJECTS[0]}.png")).shape == (48, 48)
    assert main(["release", "-i", str(dataset), "-o", str(tmp_path / "s"), "--size", "48", "--fit", "square"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: fit:") and "letterbox" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_a_broken_image_fails_as_that_file_and_the_rest_is_released(dataset, tmp_path):
    import shutil

    src = Path(shutil.copytree(dataset, tmp_path / "hc18"))
    (src / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    report = release_dataset(src, tmp_path / "rel", method="none", size=32)
    assert [e.input for e in report.failed] == ["images/broken.png"]
    assert np.asarray(Image.open(tmp_path / "rel" / "images" / f"{SUBJECTS[0]}.png")).shape == (32, 32)


def _code_on_the_grid(release: Path, staged_src: Path, subject: str) -> np.ndarray:
    protected = np.asarray(Image.open(release / "images" / f"{subject}.png"), dtype=np.int16)
    return protected - np.asarray(Image.open(staged_src / "images" / f"{subject}.png"), dtype=np.int16)


def test_the_release_codes_lsp_in_cells_of_two_and_a_given_cell_wins(released, dataset, tmp_path):
    from ulmed.pipeline.release import RELEASE_CELL, release_options
    from ulmed.pipeline.resample import resample_dataset

    assert released.manifest.params["cell"] == RELEASE_CELL == 2
    staged = resample_dataset(dataset, tmp_path / "staged", 64, "letterbox")  # the grid the release protected on
    code = _code_on_the_grid(released.path, staged.root, SUBJECTS[0])
    mask = np.asarray(Image.open(staged.root / "masks" / f"{SUBJECTS[0]}.png")) > 0
    inner = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    rows, cols = np.nonzero(inner[:-1, :-1] & inner[1:, 1:])
    # cells of 2 x 2: a position and its neighbour inside the same cell move the same way (where not clipped)
    same = [(r, c) for r, c in zip(rows, cols) if r % 2 == 0 and c % 2 == 0]
    assert same and np.mean([code[r, c] == code[r + 1, c + 1] for r, c in same]) > 0.9
    assert np.mean([code[r, c] == -code[r, c + 2] for r, c in same if inner[r, c + 2]]) > 0.9
    one = release_dataset(dataset, tmp_path / "cell1", method="lsp", eps="8/255", size=64,
                          method_options={"cell": 1})
    assert one.manifest.params["cell"] == 1
    code1 = _code_on_the_grid(one.path, staged.root, SUBJECTS[0])
    assert np.mean([code1[r, c] == -code1[r, c + 1] for r, c in same]) > 0.9
    assert release_options({"method": "none"}) == {"method": "none"}
    assert release_options({"method": "lsp", "method_options": {"tile": 4}})["method_options"] == {"tile": 4, "cell": 2}
    assert release_options({"method": "LSP"}) == {"method": "LSP"}  # the method registry's names are exact

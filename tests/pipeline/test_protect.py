"""End-to-end protection runs on real data: counts, budgets, copies, safety rules."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from tests.conftest import tree_hashes
from ulmed.errors import InputError, OutputError
from ulmed.pipeline.protect import protect_path


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory, sample_data):
    before = tree_hashes(sample_data)
    out = tmp_path_factory.mktemp("run") / "out"
    manifest = protect_path(sample_data, out, method="random", eps="8/255", seed=0)
    assert tree_hashes(sample_data) == before, "the input tree was modified"
    return out, manifest


def test_sample_run_protects_every_kind(sample_run, sample_data):
    out, manifest = sample_run
    written = [e for e in manifest.entries if e.status == "written"]
    kinds = {e.kind for e in written}
    assert kinds == {"dicom", "nifti", "image"}
    assert sum(e.kind == "dicom" for e in written) == 6  # 4-slice series + CT_small + MR_small
    assert len({e.record for e in written if e.kind == "dicom"}) == 3
    assert sum(e.kind == "nifti" for e in written) == 2
    assert sum(e.kind == "image" for e in written) == 3
    assert manifest.counts()["failed"] == 0
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["counts"]["written"] == 11
    for entry in saved["entries"]:
        if entry["status"] in ("written", "copied"):
            assert (out / entry["output"]).is_file()


def test_masks_labels_and_other_files_copied_byte_identical(sample_run, sample_data):
    out, manifest = sample_run
    copied = {e.input for e in manifest.entries if e.status == "copied"}
    for rel in ["hc18/masks/012_HC.png", "msd_hippocampus/labels/hippocampus_003.nii.gz", "hc18/index.csv", "dicom/rtstruct.dcm"]:
        assert rel in copied
        assert (out / rel).read_bytes() == (sample_data / rel).read_bytes()


def test_images_perturbed_within_budget(sample_run, sample_data):
    out, manifest = sample_run
    clean = np.asarray(Image.open(sample_data / "hc18/images/012_HC.png")).astype(int)
    prot = np.asarray(Image.open(out / "hc18/images/012_HC.png")).astype(int)
    assert clean.shape == prot.shape
    diff = np.abs(prot - clean)
    assert diff.max() <= 8 and diff.mean() > 1.0
    entry = next(e for e in manifest.entries if e.input == "hc18/images/012_HC.png")
    assert entry.budget["eps_native"] == pytest.approx(8.0)
    assert 30 < entry.metrics["psnr"] < 60


def test_dicom_series_gets_one_new_series_uid(sample_run, sample_data):
    out, _ = sample_run
    files = sorted((out / "dicom/ct_series").iterdir())
    uids = {pydicom.dcmread(f).SeriesInstanceUID for f in files}
    old = {pydicom.dcmread(f).SeriesInstanceUID for f in (sample_data / "dicom/ct_series").iterdir()}
    assert len(files) == 4 and len(uids) == 1 and uids != old


def test_same_seed_same_output(sample_run, sample_data, tmp_path):
    out, _ = sample_run
    again = tmp_path / "again"
    protect_path(sample_data, again, method="random", eps="8/255", seed=0)
    a, b = tree_hashes(out), tree_hashes(again)
    a.pop("manifest.json"), b.pop("manifest.json")
    assert a == b


def test_skip_non_image(sample_data, tmp_path):
    m = protect_path(sample_data / "dicom", tmp_path / "o", method="none", skip_non_image=True)
    entry = next(e for e in m.entries if e.input == "rtstruct.dcm")
    assert entry.status == "skipped" and not (tmp_path / "o/rtstruct.dcm").exists()


def test_output_inside_input_refused(sample_data, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(sample_data / "hc18", src)
    before = tree_hashes(src)
    with pytest.raises(OutputError, match="inside the input"):
        protect_path(src, src / "out")
    with pytest.raises(OutputError, match="contain the input"):
        protect_path(src, tmp_path)
    assert tree_hashes(src) == before


def test_non_empty_output_needs_overwrite(sample_data, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(OutputError, match="--overwrite"):
        protect_path(sample_data / "hc18", out)
    m = protect_path(sample_data / "hc18", out, overwrite=True)
    assert m.counts()["written"] == 3


def test_unwritable_output_is_a_clear_error(sample_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError):
        protect_path(sample_data / "hc18", blocker / "out")


def _dataset_with_bad_files(sample_data: Path, tmp_path: Path) -> Path:
    src = tmp_path / "ds"
    shutil.copytree(sample_data / "hc18", src)
    good = (src / "images/012_HC.png").read_bytes()
    (src / "images/truncated.png").write_bytes(good[: len(good) // 3])
    Image.open(src / "masks/015_HC.png").resize((50, 40)).save(src / "masks/015_HC.png")  # wrong-size mask
    return src


def test_bad_files_are_reported_and_skipped(sample_data, tmp_path):
    src = _dataset_with_bad_files(sample_data, tmp_path)
    out = tmp_path / "out"
    m = protect_path(src, out)
    failed = {e.input: e.reason for e in m.entries if e.status == "failed"}
    assert set(failed) == {"images/truncated.png", "images/015_HC.png"}
    assert "does not match" in failed["images/015_HC.png"]
    assert not (out / "images/truncated.png").exists()
    assert not (out / "images/015_HC.png").exists()
    assert (out / "images/012_HC.png").exists() and (out / "images/017_HC.png").exists()
    saved = json.loads((out / "manifest.json").read_text())["entries"]
    assert {e["input"] for e in saved if e["status"] == "failed"} == set(failed)


def test_strict_stops_at_first_bad_file(sample_data, tmp_path):
    src = _dataset_with_bad_files(sample_data, tmp_path)
    with pytest.raises(InputError) as err:
        protect_path(src, tmp_path / "out", strict=True)
    assert "015_HC.png" in str(err.value) or "truncated.png" in str(err.value)


def test_nan_volume_is_reported(real_data, tmp_path):
    import nibabel as nib

    img = nib.load(real_data / "msd_hippocampus/images/hippocampus_003.nii.gz")
    data = img.get_fdata().astype(np.float32)
    data[3, 3, 3] = np.nan
    src = tmp_path / "vols"
    src.mkdir()
    nib.save(nib.Nifti1Image(data, img.affine, img.header), src / "nan.nii.gz")
    shutil.copy(real_data / "msd_hippocampus/images/hippocampus_004.nii.gz", src / "ok.nii.gz")
    m = protect_path(src, tmp_path / "out")
    failed = [e for e in m.entries if e.status == "failed"]
    assert [e.input for e in failed] == ["nan.nii.gz"] and "NaN" in failed[0].reason
    assert (tmp_path / "out/ok.nii.gz").exists() and not (tmp_path / "out/nan.nii.gz").exists()


def test_empty_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        protect_path(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_explicit_masks_folder(sample_data, tmp_path):
    m = protect_path(sample_data / "hc18/images", tmp_path / "out", masks=sample_data / "hc18/masks")
    assert m.counts()["written"] == 3
    assert (tmp_path / "out/masks/012_HC.png").read_bytes() == (sample_data / "hc18/masks/012_HC.png").read_bytes()


def test_manifest_is_strict_json_for_unchanged_images(sample_data, tmp_path):
    protect_path(sample_data / "hc18", tmp_path / "o", method="none")
    text = (tmp_path / "o/manifest.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    entries = json.loads(text)["entries"]
    written = [e for e in entries if e["status"] == "written"]
    assert written and all(e["metrics"]["psnr"] is None and e["metrics"]["linf"] == 0 for e in written)


def test_default_method_draws_the_masks_foreground_as_a_checkerboard(sample_data, tmp_path):
    """`ulmed protect` with no method on an images + masks data set: lsp's Nyquist code, background untouched."""
    manifest = protect_path(sample_data / "hc18", tmp_path / "out", eps="8/255", seed=0)
    assert manifest.counts()["failed"] == 0
    clean = np.asarray(Image.open(sample_data / "hc18/images/012_HC.png")).astype(int)
    prot = np.asarray(Image.open(tmp_path / "out/images/012_HC.png")).astype(int)
    mask = np.asarray(Image.open(sample_data / "hc18/masks/012_HC.png")) > 0
    i, j = np.indices(clean.shape)
    board = np.where((i + j) % 2 == 0, 8, -8)
    free = mask & (clean >= 8) & (clean <= 247)
    assert free.sum() > 1000 and np.array_equal((prot - clean)[free], board[free])
    assert np.array_equal(prot[~mask], clean[~mask])
    saved = json.loads((tmp_path / "out/manifest.json").read_text())
    assert json.dumps(saved).count('"style": "auto"') >= 1

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
    copies = ["hc18/masks/012_HC.png", "msd_hippocampus/labels/hippocampus_003.nii.gz", "hc18/index.csv",
              "dicom/rtstruct.dcm"]
    for rel in copies:
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


def test_default_method_draws_the_masks_foreground_as_a_checkerboard_on_the_trainers_grid(sample_data, tmp_path):
    """`ulmed protect` with no method on an images + masks data set: lsp's Nyquist code for a trainer at 128 x 128."""
    from scipy.ndimage import distance_transform_edt

    from ulmed.baselines.lsp import GRID_CELL
    from ulmed.core.patterns import nyquist_coded

    manifest = protect_path(sample_data / "hc18", tmp_path / "out", eps="8/255", seed=0)
    assert manifest.counts()["failed"] == 0
    clean = np.asarray(Image.open(sample_data / "hc18/images/012_HC.png")).astype(np.float32)
    prot = np.asarray(Image.open(tmp_path / "out/images/012_HC.png")).astype(np.float32)
    mask = np.asarray(Image.open(sample_data / "hc18/masks/012_HC.png")) > 0
    assert np.abs(prot - clean).max() <= 8
    far = distance_transform_edt(~mask) > 3.5 * 400 / 128  # the code cells and one cell around them, diagonals included
    assert np.array_equal(prot[far], clean[far])
    shape = (round(clean.shape[0] * 128 / clean.shape[1]), 128)  # Pillow's letterbox resize to 128
    small = [np.asarray(Image.fromarray(a).resize(shape[::-1], Image.Resampling.BILINEAR)) for a in (prot, clean)]
    small_mask = np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(shape[::-1], Image.Resampling.NEAREST))
    # in the phase of the 128 x 128 frame that a centred letterbox pads the image into
    board = 8 * nyquist_coded(small_mask, 1, shape, cell=GRID_CELL, origin=((128 - shape[0]) // 2, 0))[0]
    assert ((small[0] - small[1]) * board).sum() / (board * board).sum() > 0.4  # 0.55 of a period-4 code survives
    saved = json.loads((tmp_path / "out/manifest.json").read_text())
    assert json.dumps(saved).count('"grid": "auto"') >= 1 and json.dumps(saved).count('"grid_2d": "size:128"') >= 1


# -- issue 15 (6, 17): the budget holds on the written values, and the manifest describes them --------------


def _saved_written(out: Path) -> list[dict]:
    return [e for e in json.loads((out / "manifest.json").read_text())["entries"] if e["status"] == "written"]


def _mixed_input(sample_data: Path, tmp_path: Path) -> Path:
    """Two real 16-bit DICOM files (pydicom's CT_small and MR_small) and one 8-bit HC18 PNG."""
    src = tmp_path / "in"
    (src / "dicom").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(sample_data / "dicom/single" / name, src / "dicom" / name)
    (src / "images").mkdir()
    shutil.copy(sample_data / "hc18/images/012_HC.png", src / "images/012_HC.png")
    return src


def _clean_and_written(src: Path, out: Path, entry: dict):
    """The clean record of an entry's input and the native values read back from its written file."""
    from ulmed.io.dicom import read_series, scan_dicom
    from ulmed.io.images import read_image

    if entry["kind"] == "dicom":
        clean = read_series(scan_dicom(src, [src / entry["input"]]).series[0], src)
        ds = pydicom.dcmread(out / entry["output"])
        slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
        written = ds.pixel_array.astype(np.float64) * slope + intercept
    else:
        clean = read_image(src / entry["input"], key=entry["input"])
        written = np.asarray(Image.open(out / entry["output"]), dtype=np.float64)
    return clean, written.reshape(clean.image.shape)


def _assert_manifest_metrics_are_the_written_files(entry: dict, clean, written: np.ndarray) -> None:
    from ulmed.eval.imperceptibility import imperceptibility

    m = clean.mapping
    expected = imperceptibility((clean.image - m.low) / m.scale, (written - m.low) / m.scale, m.scale)
    got = entry["metrics"]
    for key, value in expected.items():
        if key == "psnr" and np.isinf(value):
            assert got[key] is None, entry["input"]
        else:
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (entry["input"], key)


@pytest.mark.parametrize("eps", ["8/255", "0.022"])
def test_written_values_keep_the_linf_budget_and_match_the_manifest(sample_data, tmp_path, eps):
    """Quantisation to the stored integers never exceeds eps_native; PSNR, SSIM, L-inf, L0 are the files'."""
    src = _mixed_input(sample_data, tmp_path)
    out = tmp_path / "out"
    protect_path(src, out, method="random", eps=eps, seed=0)
    entries = _saved_written(out)
    assert sorted(e["input"] for e in entries) == ["dicom/CT_small.dcm", "dicom/MR_small.dcm", "images/012_HC.png"]
    for e in entries:
        clean, written = _clean_and_written(src, out, e)
        moved = np.abs(written - clean.image).max()
        eps_native = e["budget"]["eps_native"]
        assert moved <= eps_native, f"{e['input']}: {moved} > {eps_native}"
        assert moved > eps_native - 1  # the budget is used up to its last whole stored step
        _assert_manifest_metrics_are_the_written_files(e, clean, written)


@pytest.mark.parametrize(("rel", "eps"), [("dicom/single/CT_small.dcm", "0.1HU"), ("hc18/images/012_HC.png", "1/1000")])
def test_budget_below_one_stored_step_warns_and_reports_no_change(sample_data, tmp_path, caplog, rel, eps):
    import logging

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    shutil.copy(sample_data / rel, src / Path(rel).name)
    with caplog.at_level(logging.WARNING, logger="ulmed"):
        protect_path(src, out, method="random", eps=eps, seed=0)
    (entry,) = _saved_written(out)
    assert "smaller than one stored step" in entry["reason"]
    assert any("smaller than one stored step" in r.getMessage() for r in caplog.records)
    metrics = entry["metrics"]
    assert metrics["psnr"] is None and metrics["linf"] == 0 and metrics["l0"] == 0 and metrics["l0_fraction"] == 0
    clean, written = _clean_and_written(src, out, entry)
    np.testing.assert_array_equal(written, clean.image)


def test_l2_budget_holds_on_the_written_files(sample_data, tmp_path):
    """`--eps l2:2` reaches the projection and the quantisation: the written perturbation's L2 norm is <= eps."""
    src = _mixed_input(sample_data, tmp_path)
    out = tmp_path / "out"
    protect_path(src, out, method="random", eps="l2:2", seed=0)
    entries = _saved_written(out)
    assert len(entries) == 3
    for e in entries:
        assert e["budget"]["norm"] == "l2"
        clean, written = _clean_and_written(src, out, e)
        norm = float(np.sqrt(np.sum((written - clean.image) ** 2)))
        eps_native = e["budget"]["eps_native"]
        assert 0.9 * eps_native < norm <= eps_native, f"{e['input']}: {norm} vs {eps_native}"
        _assert_manifest_metrics_are_the_written_files(e, clean, written)
    assert pydicom.dcmread(out / "dicom/CT_small.dcm").DerivationDescription == "ulmed random L2 2"


def test_l2_budget_through_em_keeps_the_written_norm(sample_data, tmp_path):
    """EM's PGD core takes the L2 budget: its written noise lies inside the L2 ball, not an L-inf one of radius 0.5."""
    out = tmp_path / "out"
    protect_path(sample_data / "hc18", out, method="em", eps="l2:0.5", seed=0, device="cpu",
                 method_options={"rounds": 1, "train_steps": 1, "pgd_steps": 2, "batch_size": 3})
    entries = _saved_written(out)
    assert len(entries) == 3
    for e in entries:
        clean, written = _clean_and_written(sample_data / "hc18", out, e)
        norm = float(np.sqrt(np.sum((written - clean.image) ** 2)))
        assert 0 < norm <= e["budget"]["eps_native"] == pytest.approx(0.5 * 255)


def test_l2_budget_refused_by_lsp_naming_the_methods_that_take_it():
    from ulmed.errors import ConfigError
    from ulmed.pipeline.protect import build_method

    with pytest.raises(ConfigError, match=r"'lsp' does not support L2 .*sign codes.*: em, none, random, salm$"):
        build_method("lsp", "l2:0.5", 0, "cpu")


# ------------------------------------------------- keys and paths in the manifest (issue 15, item 10)


def test_series_keys_are_not_derivable_from_the_uids_without_the_salt(sample_data, tmp_path, monkeypatch):
    import hashlib

    monkeypatch.delenv("ULMED_KEY_SALT")  # the default: a random salt kept beside the journal
    out = tmp_path / "out"
    first = protect_path(sample_data / "dicom", out, method="random")
    files = [p for p in (sample_data / "dicom").rglob("*") if p.is_file()]
    uids = {pydicom.dcmread(p, stop_before_pixels=True, force=True).get("SeriesInstanceUID", "") for p in files}
    keys = {e.record for e in first.entries if e.kind == "dicom"}
    assert len(keys) == 3
    unsalted = {hashlib.sha256(u.encode()).hexdigest()[:n] for u in uids for n in (8, 12, 16)}
    assert not any(h in k for k in keys for h in unsalted)
    secret = (out / ".ulmed/secret").read_text()
    text = (out / "manifest.json").read_text() + (out / ".ulmed/run.json").read_text()
    assert len(secret) >= 16 and secret not in text
    again = protect_path(sample_data / "dicom", out, method="random")  # the stored salt: same keys, resumed
    assert again.run["resumed"] == 3 and {e.record for e in again.entries if e.kind == "dicom"} == keys
    other = protect_path(sample_data / "dicom", tmp_path / "other", method="random")
    assert {e.record for e in other.entries if e.kind == "dicom"}.isdisjoint(keys)  # another run, another salt
    monkeypatch.setenv("ULMED_KEY_SALT", "a-different-salt-0123456789")
    with pytest.raises(OutputError, match="key_salt_fingerprint"):
        protect_path(sample_data / "dicom", out, method="random")


def test_the_manifest_names_the_input_folder_and_relative_paths_only(sample_data, tmp_path):
    src = tmp_path / "export"
    shutil.copytree(sample_data, src)
    (src / "hc18/images/zz_broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    protect_path(src, out, method="random", masks=None)
    text = (out / "manifest.json").read_text()
    data = json.loads(text)
    assert str(tmp_path) not in text
    assert data["params"]["input"] == "export" and data["params"]["output"] == "."
    assert any(e["status"] == "failed" and e["input"] == "hc18/images/zz_broken.png" for e in data["entries"])


def test_a_volume_budget_is_a_share_of_its_robust_range_as_the_manifest_states(real_data, tmp_path):
    import nibabel as nib

    src = tmp_path / "in"
    src.mkdir()
    path = sorted((real_data / "msd_hippocampus" / "images").glob("*.nii*"))[0]
    img = nib.load(path)
    data = np.asarray(img.dataobj).astype(np.int16)
    data[0, 0, :4] = 20000  # a few bright voxels widen the data range, not the budget
    nib.save(nib.Nifti1Image(data, img.affine), src / "bright.nii.gz")
    manifest = protect_path(src, tmp_path / "out", method="lsp", eps="8/255", seed=0, device="cpu")
    entry = next(e for e in manifest.entries if e.input == "bright.nii.gz")
    lo, hi = np.percentile(data, [0.5, 99.5])
    assert entry.budget["scale"] == "p0.5-p99.5"
    assert entry.budget["scale_native"] == pytest.approx(hi - lo, rel=0.02)
    assert entry.budget["eps_native"] == pytest.approx(8 / 255 * entry.budget["scale_native"])
    written = np.asarray(nib.load(tmp_path / "out" / "bright.nii.gz").dataobj).astype(np.int64)
    moved = np.abs(written - data).max()
    assert 0 < moved <= entry.budget["eps_native"] < 8 / 255 * (20000 - data.min()) / 10
    assert entry.metrics["psnr_robust"] < entry.metrics["psnr"]


def test_the_default_budget_keeps_a_dicom_export_at_40_db_of_its_robust_range(sample_data, tmp_path):
    """``auto`` (no ``--eps``): each DICOM series and NIfTI volume at >= 40 dB against its robust range, the
    floor in the manifest; PNGs at 8/255 with a 38 dB floor against their data range."""
    manifest = protect_path(sample_data, tmp_path / "out", seed=0, device="cpu")
    written = [e for e in manifest.entries if e.status == "written"]
    assert manifest.params["budget"] == "auto"
    medical = [e for e in written if e.kind in ("dicom", "nifti")]
    images = [e for e in written if e.kind == "image"]
    assert medical and images
    for e in medical:
        assert e.budget["psnr_floor"] == 40.0 and e.budget["scale"] == "p0.5-p99.5"
        assert e.budget["eps_native"] == pytest.approx(16 / 255 * e.budget["scale_native"])
        assert 40.0 <= e.metrics["psnr_robust"] < 41.0
    for e in images:
        assert e.budget["psnr_floor"] == 38.0 and e.budget["eps_native"] == 8.0
        assert e.metrics["psnr"] >= 38.0 and 0 < e.metrics["linf_native"] <= 8.0
    import pydicom

    dicom = next(e for e in medical if e.kind == "dicom")
    ds = pydicom.dcmread(tmp_path / "out" / dicom.output, stop_before_pixels=True)
    assert ds.DerivationDescription == "ulmed lsp Linf 8/255 at >= 38 dB, DICOM/NIfTI 16/255 at >= 40 dB"

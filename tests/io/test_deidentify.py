"""De-identification with dicognito (ulmed.io.deidentify) and through the DICOM writer."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from tests.io.test_dicom import DCIODVFY_FALSE_POSITIVE, copy_in, data, dciodvfy_errors
from ulmed.errors import ConfigError, InputError, MissingDependencyError, OutputError
from ulmed.io.base import WriteOptions
from ulmed.io.deidentify import DeidentifyOptions, copy_deidentified, deidentify_dataset
from ulmed.io.dicom import new_uid, read_series, scan_dicom, write_series

pytest.importorskip("dicognito")

REPO = Path(__file__).resolve().parents[2]
SEED = "a-secret-seed"
BIRTH_DATE = "19610412"
IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate")


def write(root: Path, out: Path, seed: str | None, quanta: int = 0) -> list[tuple[Path, Path]]:
    """Write every series under ``root`` to ``out`` with ``quanta`` stored steps of noise added."""
    options = WriteOptions(method="none", budget="0", uid_salt="salt",
                           deidentify=DeidentifyOptions(seed) if seed is not None else None)
    scan = scan_dicom(root, sorted(p for p in root.rglob("*") if p.is_file()))
    pairs = []
    for series in scan.series:
        record = read_series(series, root)
        if quanta:
            record.image = record.image + quanta * record.mapping.quantum
        pairs += write_series(record, root, out, options)
    return pairs


def identifying_values(ds: pydicom.Dataset) -> list[tuple[str, bytes]]:
    """Names, IDs, dates and every instance UID (file meta included) of a dataset, as bytes.

    A UID that is the root of pydicom's implementation UID is left out: every output names
    its writer (pydicom) by that UID, whatever the input was (rtstruct.dcm was made by pydicom).
    """
    found = [(kw, str(ds.get(kw, "")).encode()) for kw in IDENTITY]
    for elem in [*ds.file_meta.iterall(), *ds.iterall()]:
        if elem.VR == "UI" and elem.value and not elem.keyword.endswith("ClassUID") \
                and elem.keyword != "TransferSyntaxUID":
            for uid in elem.value if elem.VM > 1 else [elem.value]:
                if not PYDICOM_IMPLEMENTATION_UID.startswith(str(uid)):
                    found.append((elem.keyword, str(uid).encode()))
    return [(kw, value) for kw, value in found if value]


def leaks(original: pydicom.Dataset, written: Path) -> list[str]:
    raw = written.read_bytes()
    return [kw for kw, value in identifying_values(original) if value in raw]


def dataset_json(path: Path, seed: str) -> str:
    """A dataset de-identified by a fresh dicognito Anonymizer, as DICOM JSON."""
    from dicognito.anonymizer import Anonymizer

    ds = pydicom.dcmread(path)
    Anonymizer(seed=seed).anonymize(ds)
    as_json = ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda e: "bulk")
    return json.dumps(as_json, sort_keys=True)


def test_options_validate_hide_the_seed_and_pickle() -> None:
    options = DeidentifyOptions(SEED)
    assert SEED not in repr(options) and SEED not in repr(WriteOptions(deidentify=options))
    assert pickle.loads(pickle.dumps(options)) == options and hash(options) == hash(DeidentifyOptions(SEED))
    with pytest.raises(ConfigError, match="seed"):
        DeidentifyOptions(" ")
    with pytest.raises(ConfigError, match="DeidentifyOptions"):
        WriteOptions(deidentify=SEED)  # type: ignore[arg-type]


def test_dicognito_is_deterministic_across_instances_and_processes() -> None:
    path = data("CT_small.dcm")
    here = dataset_json(path, SEED)
    assert here == dataset_json(path, SEED)  # a second Anonymizer with the same seed
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from tests.io.test_deidentify import dataset_json; print(dataset_json(Path(sys.argv[2]), sys.argv[3]))"
    )
    other = subprocess.run([sys.executable, "-c", script, str(REPO), str(path), SEED], capture_output=True,
                           text=True, check=True, cwd=REPO, timeout=120).stdout.strip()
    assert other == here
    assert dataset_json(path, "another seed") != here


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_write_removes_identity_keeps_our_pixels_and_stays_valid(tmp_path: Path, name: str) -> None:
    root = tmp_path / "in"
    (src,) = copy_in([name], root)
    ds = pydicom.dcmread(src)
    ds.PatientBirthDate = BIRTH_DATE  # the shipped files have none
    ds.save_as(src)
    before = src.read_bytes()
    ((_, plain),) = write(root, tmp_path / "plain", None, quanta=2)
    ((_, deid),) = write(root, tmp_path / "deid", SEED, quanta=2)
    assert src.read_bytes() == before

    original = pydicom.dcmread(src)
    assert {"PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "SeriesInstanceUID",
            "SOPInstanceUID"} <= {kw for kw, _ in identifying_values(original)}
    assert leaks(original, plain) and not leaks(original, deid)
    a, b = pydicom.dcmread(plain), pydicom.dcmread(deid)
    assert np.array_equal(a.pixel_array, b.pixel_array)  # ours, untouched by the de-identifier
    assert not np.array_equal(b.pixel_array, original.pixel_array)  # and the noise is there
    assert "DICOGNITO" in b.DeidentificationMethod and b.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "BurnedInAnnotation" not in original and "PatientIdentityRemoved" not in b  # not claimed: see module doc
    assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
    # the documented order: de-identify, then derive ulmed's UIDs from the de-identified ones
    seen = pydicom.dcmread(src)
    deidentify_dataset(seen, DeidentifyOptions(SEED))
    assert b.SOPInstanceUID == new_uid(seen.SOPInstanceUID, "salt") != a.SOPInstanceUID
    assert b.SeriesInstanceUID == new_uid(seen.SeriesInstanceUID, "salt")
    assert b.StudyInstanceUID == seen.StudyInstanceUID
    assert b.DerivationDescription == "ulmed none 0" and b.ImageType[0] == "DERIVED"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "emri_small.dcm", "US1_UNCR.dcm"])
def test_dciodvfy_finds_no_new_errors(tmp_path: Path, name: str) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not on PATH; apt-get install dicom3tools")
    copy_in([name], tmp_path / "in")
    ((_, plain),) = write(tmp_path / "in", tmp_path / "plain", None)
    ((_, deid),) = write(tmp_path / "in", tmp_path / "deid", SEED)
    new = {e for e in dciodvfy_errors(deid) - dciodvfy_errors(plain) if not DCIODVFY_FALSE_POSITIVE.search(e)}
    assert not new
    assert not leaks(pydicom.dcmread(tmp_path / "in" / name), deid)


def test_series_and_study_uids_stay_consistent(tmp_path: Path) -> None:
    """Study A: CT2 (4 files). Study B: CT5N (5 files) and CT2N, whose two localizers share a
    SeriesInstanceUID but become two records, i.e. the series is written in two parts."""
    root = tmp_path / "in"
    folders = ["77654033/CT2", "98892001/CT2N", "98892001/CT5N"]
    for sub in folders:
        shutil.copytree(data("DICOMDIR").parent / sub, root / sub)
    pairs = write(root, tmp_path / "out", SEED)
    assert len(pairs) == 11
    by_folder: dict[str, list[tuple[pydicom.Dataset, pydicom.Dataset]]] = {}
    for src, dst in pairs:
        original = pydicom.dcmread(src)
        assert not leaks(original, dst), dst
        by_folder.setdefault(str(src.parent.relative_to(root)), []).append((original, pydicom.dcmread(dst)))
    series = {f: {d.SeriesInstanceUID for _, d in pairs} for f, pairs in by_folder.items()}
    study = {f: {d.StudyInstanceUID for _, d in pairs} for f, pairs in by_folder.items()}
    assert all(len(uids) == 1 for uids in series.values()) and len(set.union(*series.values())) == 3
    assert all(len(uids) == 1 for uids in study.values())
    assert study["98892001/CT2N"] == study["98892001/CT5N"] != study["77654033/CT2"]
    patients = {f: {(str(d.PatientName), d.PatientID) for _, d in pairs} for f, pairs in by_folder.items()}
    assert patients["98892001/CT2N"] == patients["98892001/CT5N"] != patients["77654033/CT2"]
    assert all(len(p) == 1 for p in patients.values())
    sops = [d.SOPInstanceUID for pairs in by_folder.values() for _, d in pairs]
    assert len(set(sops)) == len(sops)


WRITE_IN_CHILD = (
    "import sys; sys.path.insert(0, sys.argv[1]); from pathlib import Path;"
    "from tests.io.test_deidentify import write; write(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4])"
)


def test_same_seed_same_bytes_in_any_process_other_seed_other_ids(tmp_path: Path) -> None:
    root = tmp_path / "in"
    copy_in(["CT_small.dcm", "MR_small.dcm"], root)
    runs = {"a": SEED, "b": SEED, "c": "another seed"}
    outs = {run: {dst.name: dst.read_bytes() for _, dst in write(root, tmp_path / run, seed)}
            for run, seed in runs.items()}
    subprocess.run([sys.executable, "-c", WRITE_IN_CHILD, str(REPO), str(root), str(tmp_path / "child"), SEED],
                   check=True, cwd=REPO, timeout=120, capture_output=True)
    child = {p.name: p.read_bytes() for p in (tmp_path / "child").iterdir()}
    assert outs["a"] == outs["b"] == child
    for name in outs["a"]:
        a, c = (pydicom.dcmread(tmp_path / run / name) for run in "ac")
        assert a.PatientID != c.PatientID and str(a.PatientName) != str(c.PatientName)
        assert a.StudyInstanceUID != c.StudyInstanceUID and a.StudyDate != c.StudyDate


@pytest.mark.parametrize("name", ["rtstruct.dcm", "rtplan.dcm"])
def test_copy_deidentified_non_image_matches_the_images_study(tmp_path: Path, name: str) -> None:
    (src,) = copy_in([name], tmp_path / "in")
    before = src.read_bytes()
    dst = copy_deidentified(src, tmp_path / "out" / "sub" / name, DeidentifyOptions(SEED))
    assert dst == tmp_path / "out" / "sub" / name and src.read_bytes() == before
    original, copied = pydicom.dcmread(src, force=True), pydicom.dcmread(dst)
    assert dst.read_bytes()[128:132] == b"DICM" and copied.SOPClassUID == original.SOPClassUID
    assert not leaks(original, dst) and "DICOGNITO" in copied.DeidentificationMethod
    assert copied.file_meta.MediaStorageSOPInstanceUID == copied.SOPInstanceUID

    # an image of the same study, written by the DICOM writer with the same seed, lands in the same study
    (image,) = copy_in(["CT_small.dcm"], tmp_path / "img")
    ds = pydicom.dcmread(image)
    ds.StudyInstanceUID = original.StudyInstanceUID
    ds.save_as(image)
    ((_, written),) = write(tmp_path / "img", tmp_path / "img_out", SEED)
    assert pydicom.dcmread(written).StudyInstanceUID == copied.StudyInstanceUID != original.StudyInstanceUID


def test_copy_deidentified_refuses_dicomdir_and_overwriting(tmp_path: Path) -> None:
    (dicomdir,) = copy_in(["DICOMDIR"], tmp_path / "in")
    with pytest.raises(InputError, match="DICOMDIR"):
        copy_deidentified(dicomdir, tmp_path / "out" / "DICOMDIR", DeidentifyOptions(SEED))
    (src,) = copy_in(["rtstruct.dcm"], tmp_path / "in")
    with pytest.raises(OutputError, match="overwrite"):
        copy_deidentified(src, src, DeidentifyOptions(SEED))
    assert not (tmp_path / "out").exists()


def test_bad_value_error_names_the_tag_never_the_value(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = pydicom.dcmread(data("CT_small.dcm"))
    with pytest.warns(UserWarning, match="Invalid value for VR DA"):
        ds.StudyDate = "2004XX19"
    with caplog.at_level(logging.DEBUG, logger="ulmed"), pytest.raises(InputError) as err:
        deidentify_dataset(ds, DeidentifyOptions(SEED), "study.dcm")
    message = str(err.value)
    assert "(0008,0020)" in message and "study.dcm" in message
    assert "2004XX19" not in message and "CompressedSamples" not in message and err.value.__cause__ is None
    # pydicom logs bad values itself
    ours = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("ulmed"))
    assert "2004XX19" not in ours and SEED not in ours


def test_writer_logs_no_identity(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (src,) = copy_in(["CT_small.dcm"], tmp_path / "in")
    with caplog.at_level(logging.DEBUG, logger="ulmed"):
        write(tmp_path / "in", tmp_path / "out", "a seed only used here")  # a fresh Anonymizer is built and logged
    original = pydicom.dcmread(src)
    assert "dicognito" in caplog.text  # the check below looks at real log output
    assert not [kw for kw, value in identifying_values(original) if value.decode() in caplog.text]
    assert "a seed only used here" not in caplog.text


def test_missing_dicognito_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (src,) = copy_in(["CT_small.dcm"], tmp_path / "in")
    record = read_series(scan_dicom(tmp_path / "in", [src]).series[0], tmp_path / "in")
    deidentify_dataset(pydicom.dcmread(src), DeidentifyOptions(SEED))  # an Anonymizer is cached for SEED
    monkeypatch.setitem(sys.modules, "dicognito", None)
    monkeypatch.setitem(sys.modules, "dicognito.anonymizer", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "ulmed\[deid\]"'):
        deidentify_dataset(pydicom.dcmread(src), DeidentifyOptions(SEED))
    with pytest.raises(MissingDependencyError, match=r"ulmed\[deid\]"):
        write_series(record, tmp_path / "in", tmp_path / "out", WriteOptions(deidentify=DeidentifyOptions(SEED)))
    with pytest.raises(MissingDependencyError, match=r"ulmed\[deid\]"):
        copy_deidentified(src, tmp_path / "out" / "copy.dcm", DeidentifyOptions(SEED))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

"""A PACS-like DICOM export converted end to end: counts, layout, UIDs, shards, de-identification, privacy.

The export is built in a temporary folder from real files that pydicom ships (the
``dicomdirtests`` studies and ``rtstruct.dcm``), with neutral folder names (PAT1, STUDY1,
SER1 ...) so that any patient name or ID found in a log or an output came from the DICOM
values, not from a path:

    export/DICOMDIR                          index of the original export (skipped)
    export/PAT1/STUDY1/SER1/*.dcm            CT, 4 slices                     study A
    export/PAT1/STUDY1/RT1/rtstruct.dcm      RT structure set (non-image)     study A
    export/PAT1/STUDY2/SER1/*.dcm            CR, 1 image                      study A2 (same patient)
    export/PAT2/STUDY1/SER1/*.dcm            CT, 5 slices + a truncated copy  study B
    export/PAT2/STUDY1/SER7/*.dcm            CT, 2 localizers: one SeriesInstanceUID,
                                             two records (orientations differ)  study B
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

from tests.io.test_dicom import data
from ulmed.cli import main
from ulmed.errors import ConfigError, InputError, OutputError
from ulmed.pipeline.merge import merge_manifests
from ulmed.pipeline.protect import DEID_KEY_ENV, protect_path, summarize
from ulmed.pipeline.shard import part_of

KEY = "0123456789abcdef0123"
OTHER_KEY = "fedcba9876543210fedc"
PRIVACY_KEY = "a-key-for-the-privacy-test-only"
#: Export folder <- pydicom dicomdirtests folder. SER7 was chosen so that the two records of
#: the split localizer series fall into different parts of a 2-part run (checked below).
SERIES = {
    "PAT1/STUDY1/SER1": "77654033/CT2",
    "PAT1/STUDY2/SER1": "77654033/CR1",
    "PAT2/STUDY1/SER1": "98892001/CT5N",
    "PAT2/STUDY1/SER7": "98892001/CT2N",
}
SPLIT = "PAT2/STUDY1/SER7"
RTSTRUCT = "PAT1/STUDY1/RT1/rtstruct.dcm"
TRUNCATED = "PAT2/STUDY1/SER1/9999.dcm"
STUDY_OF_FOLDER = {"PAT1/STUDY1": "A", "PAT1/STUDY2": "A2", "PAT2/STUDY1": "B"}
N_RECORDS = 5  # CT2, CR1, CT5N, and CT2N as two records
N_IMAGE_FILES = 12  # 4 + 1 + 5 + 2
COUNTS = {"written": N_IMAGE_FILES, "copied": 1, "skipped": 1, "failed": 1}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def input_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def output_hashes(out: Path) -> dict[str, str]:
    """sha256 of every output file, without the manifests and the ``.ulmed`` control folder."""
    found = {}
    for p in sorted(out.rglob("*")):
        rel = p.relative_to(out)
        manifest = re.fullmatch(r"manifest(\.part-\d+-of-\d+)?\.json", rel.name)
        if p.is_file() and rel.parts[0] != ".ulmed" and not manifest:
            found[str(rel)] = sha256(p)
    return found


def read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(path, force=True)


def patient_values(export: Path) -> set[str]:
    """Every PatientName (and its longer name parts) and PatientID of the export's readable files."""
    values: set[str] = set()
    for rel in input_files(export):
        if rel in ("DICOMDIR", TRUNCATED):
            continue
        ds = read(export / rel)
        name = str(ds.get("PatientName", "") or "")
        values |= {name, str(ds.get("PatientID", "") or "")} | {part for part in name.split("^") if len(part) >= 5}
    values.discard("")
    return values


def original_uids(export: Path) -> set[str]:
    """Every instance UID of every readable input (file meta included), not class or transfer syntax UIDs.

    pydicom's implementation UID is left out: every output names its writer by it.
    """
    uids: set[str] = set()
    for rel in input_files(export):
        if rel in ("DICOMDIR", TRUNCATED):
            continue
        ds = read(export / rel)
        for elem in [*ds.file_meta.iterall(), *ds.iterall()]:
            instance_uid = not elem.keyword.endswith("ClassUID") and elem.keyword != "TransferSyntaxUID"
            if elem.VR == "UI" and elem.value and instance_uid:
                uids |= {str(u) for u in (elem.value if elem.VM > 1 else [elem.value])}
    return {u for u in uids if not PYDICOM_IMPLEMENTATION_UID.startswith(u)}


def build_export(root: Path, truncate_at: int | None = None) -> Path:
    """The PACS-like export described in the module docstring.

    Args:
        root: Folder to create.
        truncate_at: Length of the truncated copy; default: all but its last 100 bytes (inside the pixel data).
    """
    base = data("DICOMDIR").parent
    for dst, src in SERIES.items():
        (root / dst).mkdir(parents=True)
        for f in sorted((base / src).iterdir()):
            shutil.copy(f, root / dst / f"{f.name}.dcm")
    shutil.copy(data("DICOMDIR"), root / "DICOMDIR")
    # The structure set joins study A (the shipped one belongs to a study of its own).
    rt = read(data("rtstruct.dcm"))
    rt.StudyInstanceUID = read(root / "PAT1/STUDY1/SER1/17106.dcm").StudyInstanceUID
    (root / RTSTRUCT).parent.mkdir(parents=True)
    rt.save_as(root / RTSTRUCT)
    whole = (root / "PAT2/STUDY1/SER1/2062.dcm").read_bytes()
    (root / TRUNCATED).write_bytes(whole[: truncate_at if truncate_at is not None else len(whole) - 100])
    return root


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    root = build_export(tmp_path_factory.mktemp("pacs") / "export")
    studies = {f: {read(p).StudyInstanceUID for p in (root / f).rglob("*.dcm") if p.name != "9999.dcm"}
               for f in STUDY_OF_FOLDER}
    assert all(len(uids) == 1 for uids in studies.values())
    assert len(set.union(*studies.values())) == 3, "the export must hold distinct studies"
    return root


@pytest.fixture(scope="module")
def plain_run(export, tmp_path_factory):
    before = output_hashes(export)
    out = tmp_path_factory.mktemp("plain") / "out"
    manifest = protect_path(export, out, method="random")
    assert output_hashes(export) == before, "the input export was modified"
    return out, manifest


def by_input(manifest_entries: list[dict]) -> dict[str, dict]:
    return {e["input"]: e for e in manifest_entries}


# ---------------------------------------------------------------- 1. counts, layout, UIDs


def test_manifest_counts_every_kind_of_file(export, plain_run):
    out, manifest = plain_run
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["counts"] == COUNTS == manifest.counts()
    entries = by_input(saved["entries"])
    assert sorted(entries) == input_files(export)  # every input once, nothing else
    status = {rel: e["status"] for rel, e in entries.items()}
    assert [rel for rel, s in status.items() if s == "failed"] == [TRUNCATED]
    assert [rel for rel, s in status.items() if s == "skipped"] == ["DICOMDIR"]
    assert [rel for rel, s in status.items() if s == "copied"] == [RTSTRUCT]
    assert entries[RTSTRUCT]["kind"] == "dicom-non-image"
    failed = entries[TRUNCATED]["reason"]
    assert "truncated" in failed and "re-export" in failed  # what happened and what to do
    assert "dcmmkdir" in entries["DICOMDIR"]["reason"]
    written = [e for e in saved["entries"] if e["status"] == "written"]
    assert len({e["record"] for e in written}) == N_RECORDS and {e["kind"] for e in written} == {"dicom"}
    assert all(0 < e["metrics"]["psnr"] < 100 for e in written)
    s = summarize(manifest)
    assert s["by_kind"] == {"series": N_RECORDS} and s["psnr_min"] <= s["psnr_max"]
    assert saved["wall_time_s"] >= 0 and saved["run"]["failed_units"] == 0  # the bad file never became a unit


def test_folder_layout_is_kept(export, plain_run):
    out, manifest = plain_run
    for e in manifest.entries:
        if e.status in ("written", "copied"):
            assert e.output == e.input
    assert set(output_hashes(out)) == set(input_files(export)) - {"DICOMDIR", TRUNCATED}
    assert (out / RTSTRUCT).read_bytes() == (export / RTSTRUCT).read_bytes()  # copied as it is


def test_series_and_instance_uids_are_new_and_consistent_study_uids_kept(export, plain_run):
    out, _ = plain_run
    series_map: dict[str, set[str]] = {}
    study_in: dict[str, set[str]] = {}
    study_out: dict[str, set[str]] = {}
    sops_in, sops_out = [], []
    for folder in SERIES:
        for src in sorted((export / folder).glob("*.dcm")):
            if str(src.relative_to(export)) == TRUNCATED:
                continue
            a, b = read(src), read(out / src.relative_to(export))
            series_map.setdefault(a.SeriesInstanceUID, set()).add(b.SeriesInstanceUID)
            study = STUDY_OF_FOLDER[str(Path(folder).parent)]
            study_in.setdefault(study, set()).add(a.StudyInstanceUID)
            study_out.setdefault(study, set()).add(b.StudyInstanceUID)
            sops_in.append(a.SOPInstanceUID)
            sops_out.append(b.SOPInstanceUID)
            assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
    # every input series (CT2N too, written as two records) has exactly one new SeriesInstanceUID
    assert len(series_map) == len(SERIES) and all(len(new) == 1 for new in series_map.values())
    new_series = {next(iter(new)) for new in series_map.values()}
    assert len(new_series) == len(SERIES) and not new_series & set(series_map)
    # StudyInstanceUIDs are kept: three studies in, the same three out
    assert study_out == study_in and len(set.union(*study_out.values())) == 3
    assert len(sops_out) == N_IMAGE_FILES == len(set(sops_out)) and not set(sops_out) & set(sops_in)


def test_cli_summary_line_and_exit_code(export, plain_run, tmp_path, capsys, restore_logging):
    out = tmp_path / "cli"
    code = main(["protect", "-i", str(export), "-o", str(out), "--method", "random"])
    err = capsys.readouterr().err
    assert code == 3, err  # records protected, but a file failed
    assert f"{N_RECORDS} series protected ({N_IMAGE_FILES} file(s) written), 1 copied, 1 skipped, 1 failed" in err
    assert re.search(r"1 failed, PSNR \d+\.\d-\d+\.\d dB in \d+\.\d s -> " + re.escape(str(out / "manifest.json")), err)
    failed_line = next(line for line in err.splitlines() if line.startswith("failed "))
    assert failed_line.startswith(f"failed {TRUNCATED}: the file is truncated") and "re-export" in failed_line
    assert json.loads((out / "manifest.json").read_text())["counts"] == COUNTS
    assert output_hashes(out) == output_hashes(plain_run[0])  # same defaults as the API run


# ---------------------------------------------------------------- 2. sharded run + merge


def protect_in_parts(export: Path, out: Path, **kwargs) -> list[dict]:
    for part in (0, 1):
        protect_path(export, out, method="random", num_parts=2, part_id=part, **kwargs)
    return [json.loads((out / f"manifest.part-{k}-of-2.json").read_text()) for k in (0, 1)]


def test_sharded_run_merges_to_the_unsharded_output(export, plain_run, tmp_path):
    out = tmp_path / "sharded"
    parts = protect_in_parts(export, out)
    assert not (out / "manifest.json").exists()
    # the split localizer series really is split over the parts
    split = [e["record"] for p in parts for e in p["entries"] if e["input"].startswith(SPLIT)]
    assert len(set(split)) == 2 and {part_of(k, 2) for k in split} == {0, 1}
    assert all(p["part"]["units"] for p in parts)  # each part did some work

    merged = merge_manifests(out)
    inputs = Counter(e.input for e in merged.entries)
    assert sorted(inputs) == input_files(export) and set(inputs.values()) == {1}
    plain = {e.input: (e.status, e.output, e.sha256) for e in plain_run[1].entries}
    assert {e.input: (e.status, e.output, e.sha256) for e in merged.entries} == plain
    assert json.loads((out / "manifest.json").read_text())["counts"] == COUNTS
    assert output_hashes(out) == output_hashes(plain_run[0])
    split_series = {read(p).SeriesInstanceUID for p in (out / SPLIT).iterdir()}
    assert len(split_series) == 1  # written by two parts, one new SeriesInstanceUID

    # a missing part is named
    missing = tmp_path / "missing"
    missing.mkdir()
    shutil.copy(out / "manifest.part-0-of-2.json", missing)
    with pytest.raises(InputError, match=r"part\(s\) \[1\] of 2 are missing \(manifest\.part-1-of-2\.json\)"):
        merge_manifests(missing)

    # a unit claimed by both parts is refused
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    shutil.copy(out / "manifest.part-0-of-2.json", tampered)
    parts[1]["part"]["units"].append(parts[0]["part"]["units"][0])
    (tampered / "manifest.part-1-of-2.json").write_text(json.dumps(parts[1]))
    with pytest.raises(InputError, match="was done by parts 0 and 1"):
        merge_manifests(tampered)
    assert not (tampered / "manifest.json").exists()


# ---------------------------------------------------------------- 3. de-identification


@pytest.fixture(scope="module")
def deid_runs(export, tmp_path_factory):
    """One unsharded and one 2-part de-identified run with the same key from $ULMED_DEID_KEY."""
    pytest.importorskip("dicognito")
    root = tmp_path_factory.mktemp("deid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DEID_KEY_ENV, KEY)
        manifest = protect_path(export, root / "whole", method="random", deidentify=True)
        protect_in_parts(export, root / "parts", deidentify=True)
        merged = merge_manifests(root / "parts")
    return root / "whole", manifest, root / "parts", merged


def test_deidentified_outputs_hold_no_names_ids_or_original_uids(export, plain_run, deid_runs):
    out, manifest, _, _ = deid_runs
    assert manifest.counts() == COUNTS
    names, uids = patient_values(export), original_uids(export)
    assert {"Doe^Archibald", "77654033", "Doe^Peter", "98890234"} <= names and len(uids) > 20
    files = [p for p in out.rglob("*") if p.is_file()]  # manifests and the control folder too
    assert len(files) > N_IMAGE_FILES + 1
    for path in files:
        raw = path.read_bytes()
        leaked = [v for v in (*names, *uids) if v.encode() in raw]
        assert not leaked, f"{path.relative_to(out)} holds {leaked}"
    # the check can fail: without --deidentify the names and UIDs are there
    plain_raw = b"".join((plain_run[0] / rel).read_bytes() for rel in output_hashes(plain_run[0]))
    assert b"Doe^Archibald" in plain_raw and any(u.encode() in plain_raw for u in uids)

    # the structure set is de-identified too, not copied as it is
    rt_in, rt_out = read(export / RTSTRUCT), read(out / RTSTRUCT)
    assert (out / RTSTRUCT).read_bytes() != (export / RTSTRUCT).read_bytes()
    assert rt_out.SOPClassUID == rt_in.SOPClassUID and "DICOGNITO" in rt_out.DeidentificationMethod
    assert rt_out.SOPInstanceUID != rt_in.SOPInstanceUID


def test_deidentified_run_keeps_study_and_series_grouping(export, deid_runs):
    out = deid_runs[0]
    study: dict[str, set[str]] = {}
    series: dict[str, set[str]] = {}
    for path in sorted(out.rglob("*.dcm")):
        rel = path.relative_to(out)
        ds = read(path)
        study.setdefault(STUDY_OF_FOLDER["/".join(rel.parts[:2])], set()).add(ds.StudyInstanceUID)
        series.setdefault(str(rel.parent), set()).add(ds.SeriesInstanceUID)
    assert all(len(uids) == 1 for uids in study.values())  # the structure set joins its images' new study
    new_studies = {next(iter(uids)) for uids in study.values()}
    assert len(new_studies) == 3 and not new_studies & original_uids(export)
    assert all(len(uids) == 1 for uids in series.values())  # SER7: two records, one new series
    assert len(set.union(*series.values())) == len(series) == len(SERIES) + 1  # + the structure set


def test_same_key_sharded_run_gives_the_same_bytes(deid_runs):
    whole, manifest, parts, merged = deid_runs
    assert output_hashes(parts) == output_hashes(whole)
    assert merged.counts() == manifest.counts() == COUNTS


def test_deidentify_needs_the_key(export, tmp_path, monkeypatch):
    pytest.importorskip("dicognito")
    monkeypatch.delenv(DEID_KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=DEID_KEY_ENV):
        protect_path(export, tmp_path / "out", method="random", deidentify=True)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(DEID_KEY_ENV, "too-short")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        protect_path(export, tmp_path / "out", method="random", deidentify=True)


def test_rerun_with_another_key_is_refused(export, deid_runs, monkeypatch):
    out = deid_runs[0]

    def files() -> dict[str, str]:  # manifest.json is rewritten by a resumed run
        return {str(p.relative_to(out)): sha256(p) for p in out.rglob("*") if p.is_file() and p.name != "manifest.json"}

    before = files()
    monkeypatch.setenv(DEID_KEY_ENV, KEY)
    again = protect_path(export, out, method="random", deidentify=True)  # same key: the finished run is resumed
    # records; the copy too is skipped
    assert again.run["resumed"] == N_RECORDS and again.run["done_now"] == 0 and files() == before
    monkeypatch.setenv(DEID_KEY_ENV, OTHER_KEY)
    with pytest.raises(OutputError, match="--overwrite") as err:
        protect_path(export, out, method="random", deidentify=True)
    assert "deid_key_fingerprint" in str(err.value) and OTHER_KEY not in str(err.value) and KEY not in str(err.value)
    assert files() == before
    for secret in (KEY, OTHER_KEY):
        assert not any(secret.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())


BAD_DATE = "NOTADATE"
BAD_SERIES_FILE = "ct_series/17136"


def bad_date_export(root: Path, sample_dir: Path, *bad: str) -> Path:
    """:func:`small_export` and sample_data's structure set, the files ``bad`` with StudyDate NOTADATE."""
    small_export(root, sample_dir)
    shutil.copy(sample_dir / "dicom" / "rtstruct.dcm", root / "rtstruct.dcm")
    for rel in bad:
        ds = read(root / rel)
        with pydicom.config.disable_value_validation():  # written as a faulty modality would; nothing logged here
            ds.StudyDate = BAD_DATE
        ds.save_as(root / rel)
        assert read(root / rel).StudyDate == BAD_DATE
    return root


def test_deidentify_bad_date_fails_that_series_only(sample_data, tmp_path, monkeypatch):
    pytest.importorskip("dicognito")
    monkeypatch.setenv(DEID_KEY_ENV, KEY)
    src = bad_date_export(tmp_path / "in", sample_data, BAD_SERIES_FILE)
    out = tmp_path / "out"
    manifest = protect_path(src, out, method="random", deidentify=True)  # returns: the run is not aborted
    entries = by_input(json.loads((out / "manifest.json").read_text())["entries"])
    series = [f"ct_series/{n}" for n in ("17106", "17136", "17166", "17196")]
    assert {rel: entries[rel]["status"] for rel in series} == dict.fromkeys(series, "failed")
    culprit = entries[BAD_SERIES_FILE]["reason"]
    assert "cannot be de-identified at tag (0008,0020)" in culprit and "fix the value or leave the file out" in culprit
    for rel in set(series) - {BAD_SERIES_FILE}:  # the good slices say which file took their series out
        assert entries[rel]["reason"] == f"left out with its series because {BAD_SERIES_FILE}: {culprit}"
    statuses = [entries[r]["status"] for r in ("CT_small.dcm", "MR_small.dcm", "rtstruct.dcm")]
    assert statuses == ["written", "written", "copied"]
    assert manifest.run["failed_units"] == 1 and manifest.counts()["failed"] == 4
    assert not (out / "ct_series").exists() or not any((out / "ct_series").iterdir())  # no partial series left
    assert "DICOGNITO" in read(out / "CT_small.dcm").DeidentificationMethod
    assert BAD_DATE not in (out / "manifest.json").read_text()  # the message names the tag, never the value
    with pytest.raises(InputError, match=r"17136: cannot be de-identified at tag \(0008,0020\)"):
        protect_path(src, tmp_path / "strict", method="random", deidentify=True, strict=True)


def test_deidentify_bad_date_in_a_non_image_file_fails_that_file(sample_data, tmp_path, monkeypatch, capsys,
                                                                   restore_logging):
    pytest.importorskip("dicognito")
    monkeypatch.setenv(DEID_KEY_ENV, KEY)
    src = bad_date_export(tmp_path / "in", sample_data, "rtstruct.dcm")
    out = tmp_path / "out"
    code = main(["protect", "-i", str(src), "-o", str(out), "--method", "random", "--deidentify"])
    err = capsys.readouterr().err
    assert code == 3, err  # records protected, one file failed
    assert "3 series protected (6 file(s) written), 0 copied, 0 skipped, 1 failed" in err
    failed = [line for line in err.splitlines() if line.startswith("failed ")]
    assert len(failed) == 1 and failed[0].startswith("failed rtstruct.dcm: cannot be de-identified at tag (0008,0020)")
    entry = by_input(json.loads((out / "manifest.json").read_text())["entries"])["rtstruct.dcm"]
    assert entry["status"] == "failed" and entry["kind"] == "dicom-non-image" and not (out / "rtstruct.dcm").exists()
    assert BAD_DATE not in err


# ---------------------------------------------------------------- 4. privacy of messages


@pytest.mark.parametrize("deidentify", [False, True], ids=["plain", "deidentify"])
def test_verbose_cli_never_logs_patient_names_or_ids(export, tmp_path, capsys, caplog, monkeypatch, restore_logging,
                                                     deidentify):
    if deidentify:
        pytest.importorskip("dicognito")
        monkeypatch.setenv(DEID_KEY_ENV, PRIVACY_KEY)  # a key used only here: its de-identifier is built and logged
    args = ["-vv", "protect", "-i", str(export), "-o", str(tmp_path / "out"), "--method", "random"]
    ulmed_log = logging.getLogger("ulmed")
    caplog.set_level(logging.DEBUG)
    ulmed_log.addHandler(caplog.handler)  # the CLI replaces the root handlers, caplog's among them
    try:
        code = main(args + (["--deidentify"] if deidentify else []))
    finally:
        ulmed_log.removeHandler(caplog.handler)
    captured = capsys.readouterr()
    assert code == 3, captured.err
    text = f"{caplog.text}\n{captured.out}\n{captured.err}"
    # the check looks at real output: the warning about the bad file, the summary, the failure line
    assert "skipped" in caplog.text and TRUNCATED in captured.err and "series protected" in captured.err
    if deidentify:
        assert "de-identifier ready" in caplog.text  # a DEBUG message really was captured
    names = patient_values(export)
    assert names and not [v for v in names if v in text]
    assert PRIVACY_KEY not in text


# ---------------------------------------------------------------- known gap


def test_file_truncated_inside_its_header_fails(tmp_path):
    root = tmp_path / "export"
    build_export(root, truncate_at=1968)  # half of the 3936-byte file: ends inside ImageOrientationPatient
    manifest = protect_path(root, tmp_path / "out", method="random")
    entry = next(e for e in manifest.entries if e.input == TRUNCATED)
    assert entry.status == "failed", f"{TRUNCATED} was {entry.status} ({entry.kind})"


# ---------------------------------------------------------------- 5. nothing lost on bad input (issue 15)


def small_export(root: Path, sample_dir: Path) -> Path:
    """sample_data's 4-slice CT series (ct_series/), CT_small.dcm and MR_small.dcm."""
    dicom = sample_dir / "dicom"
    shutil.copytree(dicom / "ct_series", root / "ct_series")
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(dicom / "single" / name, root / name)
    return root


SIZE_REASON = re.compile(r"^pixel data holds \d+ values, Rows x Columns x frames x samples says \d+ \(.*\); "
                         r"the file is damaged or its header is wrong$")


def test_pixel_data_that_disagrees_with_its_header_fails_as_that_file(sample_data, tmp_path):
    src = small_export(tmp_path / "in", sample_data)
    slice_ = read(src / "ct_series/17136")
    slice_.PixelData = slice_.PixelData[: -2 * slice_.Columns]  # one row short, Rows unchanged
    slice_.save_as(src / "ct_series/17136")
    cropped = read(src / "CT_small.dcm")
    cropped.Rows = 100  # pydicom would crop its 128 rows to 100 without a word
    cropped.save_as(src / "CT_small.dcm")
    manifest = protect_path(src, tmp_path / "out", method="random")
    entries = by_input([asdict(e) for e in manifest.entries])
    assert SIZE_REASON.match(entries["CT_small.dcm"]["reason"]) and entries["CT_small.dcm"]["status"] == "failed"
    culprit = entries["ct_series/17136"]["reason"]
    assert SIZE_REASON.match(culprit), culprit
    for rel in ("ct_series/17106", "ct_series/17166", "ct_series/17196"):
        assert entries[rel]["status"] == "failed" and entries[rel]["reason"].endswith(f"ct_series/17136: {culprit}")
    assert entries["MR_small.dcm"]["status"] == "written"  # the run went on
    assert manifest.run["failed_units"] == 2 and not (tmp_path / "out" / "CT_small.dcm").exists()


def test_duplicates_are_written_once_and_a_split_series_says_why(sample_data, tmp_path, caplog):
    src = small_export(tmp_path / "in", sample_data)
    (src / "ct_series_copy").mkdir()
    shutil.copy(src / "ct_series/17136", src / "ct_series_copy/17136")  # the same instance in another folder
    (src / "ct_series/latest").symlink_to(src / "ct_series/17196")  # a link to a file of the tree
    shutil.copy(sample_data / "dicom/rtstruct.dcm", src / "rtstruct.dcm")
    shutil.copy(sample_data / "dicom/rtstruct.dcm", src / "rtstruct_copy.dcm")
    mr = read(src / "MR_small.dcm")
    mr.SeriesInstanceUID = read(src / "CT_small.dcm").SeriesInstanceUID  # one series, two image sizes
    mr.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    mr.save_as(src / "MR_small.dcm")
    caplog.set_level(logging.WARNING, logger="ulmed")
    manifest = protect_path(src, tmp_path / "out", method="random")
    entries = by_input([asdict(e) for e in manifest.entries])
    assert sorted(entries) == input_files(src)  # every input once
    skipped = {rel: (e["kind"], e["reason"]) for rel, e in entries.items() if e["status"] == "skipped"}
    assert skipped == {
        "ct_series/latest": ("dicom", "duplicate of ct_series/17196 (same SOPInstanceUID); written once"),
        "ct_series_copy/17136": ("dicom", "duplicate of ct_series/17136 (same SOPInstanceUID); written once"),
        "rtstruct_copy.dcm": ("dicom", "duplicate of rtstruct.dcm (same SOPInstanceUID); copied once"),
    }
    assert sum("duplicate of" in r.getMessage() for r in caplog.records) == 3
    written = [tmp_path / "out" / e["output"] for e in entries.values() if e["status"] == "written"]
    sops = [read(p).SOPInstanceUID for p in written]
    assert len(written) == 6 and len(set(sops)) == len(sops)
    for rel in ("CT_small.dcm", "MR_small.dcm"):
        assert entries[rel]["reason"].startswith("series split into 2 parts because its slices differ in size")
    assert entries["ct_series/17106"]["reason"] is None
    assert any("split into 2 parts" in r.getMessage() for r in caplog.records)


def broken_j2k(dst: Path) -> Path:
    """MR_small_jp2klossless.dcm with its codestream cut short: every J2K plugin fails, pydicom logs each traceback."""
    from pydicom.encaps import encapsulate, generate_frames

    ds = read(data("MR_small_jp2klossless.dcm"))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))[:400]  # the SIZ header is intact
    ds.PixelData = encapsulate([frame])
    ds.SOPInstanceUID, ds.SeriesInstanceUID = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()  # not MR_small's
    ds.save_as(dst)
    return dst


def test_library_warnings_go_to_the_manifest_not_the_terminal(sample_data, tmp_path, capsys, recwarn, monkeypatch,
                                                              restore_logging):
    from ulmed.io.notices import DEBUG_ENV

    monkeypatch.setenv(DEBUG_ENV, "0")  # restored after the --debug run below
    src = small_export(tmp_path / "in", sample_data)
    mr = read(src / "MR_small.dcm")
    # pydicom checks a value when it is read, and ulmed reads only what it uses or replaces (values
    # it copies through go out byte for byte, unparsed): an invalid SOP Instance UID, as a faulty
    # modality writes it, is read to derive the new one, and pydicom quotes it back.
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        mr.SOPInstanceUID = "1.2.NOTAUID"
    mr.save_as(src / "MR_small.dcm")
    broken_j2k(src / "broken_j2k.dcm")
    recwarn.clear()

    code = main(["protect", "-i", str(src), "-o", str(tmp_path / "out"), "--method", "random"])
    err = capsys.readouterr().err
    assert code == 3, err  # records written, the J2K file failed
    assert "Traceback" not in err and "Invalid value" not in err, err
    lines = err.splitlines()  # ulmed's own warnings name the file they skip; nothing else is logged
    shown = [line for line in lines if line.startswith(("WARNING", "ERROR"))]
    assert not [line for line in shown if not line.startswith("WARNING skipped")]
    assert not [w for w in recwarn if "pydicom" in w.filename or "VR" in str(w.message)]
    text = (tmp_path / "out" / "manifest.json").read_text()
    entries = by_input(json.loads(text)["entries"])
    mr_notes = entries["MR_small.dcm"]["warnings"]
    assert entries["MR_small.dcm"]["status"] == "written" and mr_notes
    assert any(w.startswith("Invalid value for VR UI: '...'.") for w in mr_notes) and "NOTAUID" not in text  # masked
    j2k = entries["broken_j2k.dcm"]
    assert j2k["status"] == "failed" and any("Error decoding the J2K data" in w for w in j2k["warnings"])
    assert entries["CT_small.dcm"]["warnings"] is None

    code = main(["--debug", "protect", "-i", str(src), "-o", str(tmp_path / "debug"), "--method", "random"])
    err = capsys.readouterr().err
    assert code == 3 and "Invalid value for VR UI" in err and "Traceback" in err  # let through as well
    debug_entries = json.loads((tmp_path / "debug" / "manifest.json").read_text())["entries"]
    assert by_input(debug_entries)["MR_small.dcm"]["warnings"]

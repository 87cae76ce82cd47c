"""Data-set releases on real HC18 images: untouched masks and split file, data card, checksums, verify."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import tree_hashes
from tests.pipeline.conftest import SUBJECTS
from tests.pipeline.test_dicom_export import BAD_SERIES_FILE, bad_date_export
from ulmed.cli import app, main
from ulmed.core.method import METHODS
from ulmed.errors import InputError
from ulmed.pipeline.checksums import read_sums, write_sums
from ulmed.pipeline.protect import DEID_KEY_ENV
from ulmed.pipeline.release import release_dataset, verify_release

SUM_LINE = re.compile(r"^[0-9a-f]{64}  [^/].*$")


@pytest.fixture(scope="module")
def released(dataset, tmp_path_factory):
    before = tree_hashes(dataset)
    report = release_dataset(dataset, tmp_path_factory.mktemp("rel") / "release", method="random", eps="8/255")
    assert tree_hashes(dataset) == before, "the input was modified"
    return report


@pytest.fixture
def release_copy(released, tmp_path) -> Path:
    """A copy of the release that a test may damage."""
    return Path(shutil.copytree(released.path, tmp_path / "release"))


def test_masks_and_split_file_are_byte_identical_images_are_not(released, dataset):
    out = released.path
    for s in SUBJECTS:
        assert (out / "masks" / f"{s}.png").read_bytes() == (dataset / "masks" / f"{s}.png").read_bytes()
        assert (out / "images" / f"{s}.png").read_bytes() != (dataset / "images" / f"{s}.png").read_bytes()
    assert (out / "index.csv").read_bytes() == (dataset / "index.csv").read_bytes()
    assert released.copies.targets == 4 and released.copies.others == 1 and not released.copies.mismatched
    assert released.records == 4 and not released.failed and not released.foreign


def test_datacard_names_method_budget_and_measured_psnr(released, dataset):
    card = released.datacard.read_text()
    psnrs = [e.metrics["psnr"] for e in released.manifest.entries if e.status == "written"]
    ssims = [e.metrics["ssim"] for e in released.manifest.entries if e.status == "written"]
    assert card.startswith("# Data card: hc18")
    assert "`random`" in card and "control, no paper" in card
    assert "8/255" in card and "0.031373 in [0, 1] units" in card and "±8 (stored pixel values)" in card
    assert f"| PSNR (dB) | {min(psnrs):.2f} |" in card
    assert f"{max(psnrs):.2f} |" in card and f"| SSIM | {min(ssims):.4f} |" in card
    assert "| protected (perturbed) | 4 (4 record(s)) |" in card
    assert "| copied unchanged | 5 (4 mask/label, 1 other) |" in card
    assert "Masks and labels are unchanged" in card
    assert f"| ulmed | {released.manifest.versions['ulmed']} |" in card
    assert str(dataset) not in card, "the card must not carry local paths"


def test_release_holds_no_run_state_and_no_local_paths(released, dataset):
    out = released.path
    assert not (out / ".ulmed").exists()
    text = (out / "manifest.json").read_text()
    assert str(dataset) not in text and str(out) not in text
    assert json.loads(text)["params"]["input"] == dataset.name


def test_sha256sums_covers_every_file_in_gnu_format(released):
    out = released.path
    lines = (out / "SHA256SUMS").read_text().splitlines()
    assert all(SUM_LINE.match(line) for line in lines)
    listed = [line[66:] for line in lines]
    assert listed == sorted(listed)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {"SHA256SUMS"} - {p for p in on_disk if p.startswith(".ulmed/")}
    outputs = {e.output for e in released.manifest.entries if e.output}
    assert set(listed) == outputs | {"manifest.json", "DATACARD.md"}
    for line in lines:
        assert hashlib.sha256((out / line[66:]).read_bytes()).hexdigest() == line[:64]
    assert released.files == len(lines) == 11


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="GNU sha256sum not installed")
def test_gnu_sha256sum_accepts_the_file(released, release_copy):
    ok = subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=released.path, capture_output=True,
                        text=True, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == released.files
    (release_copy / "index.csv").write_text("changed\n")
    bad = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=release_copy, capture_output=True, text=True,
                         check=False)
    assert bad.returncode != 0 and "index.csv: FAILED" in bad.stdout


def test_verify_passes_on_a_fresh_release(released):
    report = verify_release(released.path)
    assert report.ok and report.problems() == []
    assert report.verified == released.files


def test_one_flipped_byte_names_exactly_that_file(release_copy):
    target = release_copy / "images" / "015_HC.png"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    report = verify_release(release_copy)
    assert report.changed == ["images/015_HC.png"]
    assert report.missing == [] and report.extra == [] and not report.ok
    assert report.problems() == ["changed: images/015_HC.png"]


def test_deleted_file_is_missing_and_added_file_is_extra(release_copy):
    (release_copy / "masks" / "017_HC.png").unlink()
    (release_copy / "images" / "notes.txt").write_text("added after release\n")
    report = verify_release(release_copy)
    assert report.missing == ["masks/017_HC.png"]
    assert report.extra == ["images/notes.txt"]
    assert report.changed == []
    assert report.problems() == ["missing: masks/017_HC.png", "extra: images/notes.txt"]


def test_missing_datacard_is_reported_even_when_unlisted(release_copy):
    sums = release_copy / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if not line.endswith("DATACARD.md")))
    (release_copy / "DATACARD.md").unlink()
    report = verify_release(release_copy)
    assert report.datacard_missing and report.problems() == ["missing: DATACARD.md"]


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("nothex  index.csv", "not '<digest>  <path>'"),
        (f"{'0' * 64}  /etc/passwd", "absolute path"),
        (f"{'0' * 64}  ../outside.txt", "steps out of the release"),
        (f"{'0' * 64}  masks/../../outside.txt", "steps out of the release"),
        (f"{'0' * 64}  index.csv", "listed twice"),
    ],
)
def test_malformed_sums_line_is_a_clear_error(release_copy, line, why):
    sums = release_copy / "SHA256SUMS"
    lines = sums.read_text().splitlines()
    sums.write_text("\n".join([*lines, line]) + "\n")
    with pytest.raises(InputError) as err:
        verify_release(release_copy)
    message = str(err.value)
    assert message.startswith(str(sums)) and f"line {len(lines) + 1} is malformed" in message
    assert why in message and "restore the file" in message


def test_missing_sums_is_a_clear_error(release_copy):
    (release_copy / "SHA256SUMS").unlink()
    with pytest.raises(InputError, match="SHA256SUMS: is missing.*ulmed release"):
        verify_release(release_copy)


def test_awkward_file_names_round_trip(tmp_path):
    """Names with a backslash or a newline are escaped as GNU sha256sum does."""
    (tmp_path / "a\\b.txt").write_text("one")
    (tmp_path / "new\nline.txt").write_text("two")
    (tmp_path / "plain.txt").write_text("three")
    sums, n = write_sums(tmp_path)
    assert n == 3 and sums.read_text().count("\n") == 3
    parsed = read_sums(sums)
    assert set(parsed) == {"a\\b.txt", "new\nline.txt", "plain.txt"}
    assert parsed["plain.txt"] == hashlib.sha256(b"three").hexdigest()
    assert verify_release(tmp_path).verified == 3
    if shutil.which("sha256sum"):
        check = ["sha256sum", "--strict", "-c", "SHA256SUMS"]
        assert subprocess.run(check, cwd=tmp_path, capture_output=True, check=False).returncode == 0


def test_failed_inputs_are_counted_on_the_card_without_names(dataset, tmp_path):
    src = Path(shutil.copytree(dataset, tmp_path / "hc18"))
    (src / "images" / "999_HC.png").write_bytes(b"not an image")
    report = release_dataset(src, tmp_path / "release", method="random")
    card = report.datacard.read_text()
    assert [e.input for e in report.failed] == ["images/999_HC.png"]
    assert "## Failures" in card and "1 input file(s) could not be protected" in card
    assert "cannot read this image" in card
    assert "999_HC" not in card and str(tmp_path) not in card
    assert verify_release(report.path).ok and report.records == 4


def test_every_paper_method_has_a_citation():
    from ulmed.pipeline.protect import available_methods

    available_methods()  # registers every method
    expected = {"em": "ICLR 2021", "unseg": "NeurIPS 2024", "lsp": "KDD 2022", "salm": "Sparsity-Aware Local Masking"}
    for name, venue in expected.items():
        assert venue in METHODS.get(name).citation
    assert METHODS.get("random").citation == METHODS.get("none").citation == ""


def test_cli_release_then_verify(dataset, tmp_path):
    runner = CliRunner()
    out = tmp_path / "release"
    made = runner.invoke(app, ["release", "-i", str(dataset), "-o", str(out), "--method", "random"])
    assert made.exit_code == 0, made.output
    assert "4 record(s) protected, PSNR" in made.output and str(out / "DATACARD.md") in made.output
    ok = runner.invoke(app, ["verify", str(out)])
    assert ok.exit_code == 0 and "OK: 11 files verified" in ok.output
    (out / "masks" / "012_HC.png").write_bytes(b"tampered")
    bad = runner.invoke(app, ["verify", str(out)])
    assert bad.exit_code == 1
    assert bad.output.strip().splitlines() == ["changed: masks/012_HC.png"]


def test_cli_malformed_sums_is_one_line_error(release_copy, capsys):
    (release_copy / "SHA256SUMS").write_text("garbage\n")
    assert main(["verify", str(release_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "SHA256SUMS: line 1 is malformed" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- --deidentify


DEID_KEY = "0123456789abcdef0123"


def _identities(root: Path) -> set[str]:
    """PatientName and PatientID of every DICOM file under ``root``."""
    import pydicom

    found: set[str] = set()
    for p in root.rglob("*"):
        if p.is_file() and p.suffix != ".txt":
            ds = pydicom.dcmread(p, force=True)
            found |= {str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))}
    return found - {""}


def test_release_deidentify_dicom_dataset(sample_data, tmp_path, monkeypatch):
    pytest.importorskip("dicognito")
    monkeypatch.setenv(DEID_KEY_ENV, DEID_KEY)
    src = bad_date_export(tmp_path / "in", sample_data, BAD_SERIES_FILE)
    (src / "README.txt").write_text("a licence\n")
    report = release_dataset(src, tmp_path / "release", method="random", deidentify=True)  # returns: not aborted
    out = report.path
    assert sorted(e.input for e in report.failed) == [f"ct_series/{n}" for n in ("17106", "17136", "17166", "17196")]
    assert report.records == 2 and not report.copies.mismatched and report.copies.deidentified == 1
    card = report.datacard.read_text()
    assert "- De-identification: the headers of the 3 DICOM file(s) were de-identified with dicognito" in card
    assert "| copied de-identified (non-image DICOM) | 1 |" in card
    assert "| copied unchanged | 1 (0 mask/label, 1 other) |" in card
    assert "4 input file(s) could not be protected" in card and "cannot be de-identified at tag (0008,0020)" in card
    assert "17136" not in card and "NOTADATE" not in card
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert params["deidentify"] == "dicognito" and params["deidentifier"]["tool"] == "dicognito"
    assert not (out / ".ulmed").exists() and verify_release(out).ok
    names = _identities(src)
    assert {"Doe^Archibald", "CompressedSamples^CT1"} <= names
    for p in (p for p in out.rglob("*") if p.is_file()):
        raw = p.read_bytes()
        assert not [v for v in names if v.encode() in raw], p
        assert DEID_KEY.encode() not in raw


def test_cli_release_deidentify(sample_data, dataset, tmp_path, monkeypatch, capsys, restore_logging):
    pytest.importorskip("dicognito")
    src = bad_date_export(tmp_path / "in", sample_data)
    monkeypatch.delenv(DEID_KEY_ENV, raising=False)
    assert main(["release", "-i", str(src), "-o", str(tmp_path / "nokey"), "--method", "random", "--deidentify"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --deidentify needs a secret key of at least 16 characters in $ULMED_DEID_KEY")
    assert len(err.splitlines()) == 1 and not (tmp_path / "nokey").exists()

    runner = CliRunner()
    env = {DEID_KEY_ENV: DEID_KEY}
    made = runner.invoke(app, ["release", "-i", str(src), "-o", str(tmp_path / "rel"), "--method", "random",
                               "--deidentify"], env=env)
    assert made.exit_code == 0, made.output
    assert "3 record(s) protected" in made.output
    card = (tmp_path / "rel" / "DATACARD.md").read_text()
    assert "the headers of the 7 DICOM file(s) were de-identified with dicognito" in card
    assert not _identities(tmp_path / "rel") & _identities(src)
    # an image data set holds nothing to de-identify: the card says so rather than claim it
    images = runner.invoke(app, ["release", "-i", str(dataset), "-o", str(tmp_path / "hc18"), "--method", "random",
                                 "--deidentify"], env=env)
    assert images.exit_code == 0, images.output
    assert "requested (dicognito" in (tmp_path / "hc18" / "DATACARD.md").read_text()
    assert "holds no DICOM file" in (tmp_path / "hc18" / "DATACARD.md").read_text()

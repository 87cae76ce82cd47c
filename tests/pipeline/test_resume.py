"""Resume: an interrupted run, rerun with the same command, ends byte-identical to an uninterrupted one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

import ulmed.pipeline.work as work
from tests.conftest import tree_hashes
from ulmed.errors import OutputError
from ulmed.pipeline.journal import CONTROL_DIR, Journal
from ulmed.pipeline.protect import protect_path


def outputs(root: Path) -> dict[str, str]:
    """Hashes of the output files proper (no manifest, no run control folder)."""
    return {k: v for k, v in tree_hashes(root).items() if not k.startswith((CONTROL_DIR, "manifest"))}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory, sample_data) -> Path:
    """Six 32x32 images with masks cut from the sample HC18 images (fast enough for em)."""
    root = tmp_path_factory.mktemp("small") / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = sorted(p.name for p in (sample_data / "hc18/images").glob("*.png"))
    for i in range(6):
        name = names[i % len(names)]
        img = Image.open(sample_data / "hc18/images" / name).resize((32 + 8 * (i // 3), 32), Image.BILINEAR)
        mask = Image.open(sample_data / "hc18/masks" / name).resize(img.size, Image.NEAREST)
        img.save(root / "images" / f"im{i}.png")
        mask.save(root / "masks" / f"im{i}.png")
    return root


class Crash(Exception):
    """Stands for a killed process."""


def crash_after(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make the run die after ``n`` units were processed (when the next one is about to be written)."""
    real = work._finish
    seen = {"n": 0}

    def dying(unit, clean, protected, ctx):
        if seen["n"] >= n:
            raise Crash(unit.key)
        seen["n"] += 1
        return real(unit, clean, protected, ctx)

    monkeypatch.setattr(work, "_finish", dying)


def test_resume_after_failure_is_byte_identical(sample_data, tmp_path, monkeypatch):
    whole = protect_path(sample_data, tmp_path / "whole", method="random")
    with monkeypatch.context() as m:
        crash_after(m, 5)
        with pytest.raises(Crash):
            protect_path(sample_data, tmp_path / "cut", method="random")
    done = Journal(tmp_path / "cut").load(tmp_path / "cut")
    assert len(done.units) == 5
    again = protect_path(sample_data, tmp_path / "cut", method="random")
    assert again.run["resumed"] == 5
    assert again.run["done_now"] == whole.run["done_now"] - 5
    assert outputs(tmp_path / "cut") == outputs(tmp_path / "whole")
    assert [e.input for e in again.entries] == [e.input for e in whole.entries]
    saved = json.loads((tmp_path / "cut/manifest.json").read_text())
    assert saved["counts"] == json.loads((tmp_path / "whole/manifest.json").read_text())["counts"]


def test_finished_run_reruns_as_a_no_op(sample_data, tmp_path):
    first = protect_path(sample_data / "hc18", tmp_path / "o", method="random")
    before = outputs(tmp_path / "o")
    second = protect_path(sample_data / "hc18", tmp_path / "o", method="random")
    assert second.run["done_now"] == 0 and second.run["resumed"] == first.run["units"] == 3  # records, not mask copies
    assert outputs(tmp_path / "o") == before


def test_torn_journal_line_and_stale_temporaries_are_cleaned(sample_data, tmp_path):
    out = tmp_path / "o"
    protect_path(sample_data / "hc18", out, method="random")
    journal = Journal(out)
    lines = journal.path.read_bytes().splitlines(keepends=True)
    journal.path.write_bytes(b"".join(lines[:2]) + lines[2][:25])  # killed while appending line 3
    stale = [out / "images" / ".012_HC.png.ab12cd_3.part.png", out / ".manifest.json.x1y2z3_4.part.json",
             out / CONTROL_DIR / ".state.chunk-0.pt.q9w8e7r6.part.pt"]
    foreign = out / "images" / ".notes.txt.ab12cd_3.part.txt"  # not an output of this run: left alone
    for path in (*stale, foreign):
        path.write_bytes(b"half")
    again = protect_path(sample_data / "hc18", out, method="random")
    assert again.run["resumed"] == 2
    assert not any(p.exists() for p in stale) and foreign.exists()
    assert journal.path.read_bytes().endswith(b"\n")
    assert len(Journal(out).load(out).units) == again.run["units"] + again.run["copies"]


def test_deleted_output_is_redone(sample_data, tmp_path):
    out = tmp_path / "o"
    protect_path(sample_data / "hc18", out, method="random")
    before = outputs(out)
    (out / "images/012_HC.png").unlink()
    again = protect_path(sample_data / "hc18", out, method="random")
    assert again.run["done_now"] == 1
    assert outputs(out) == before


def test_changed_parameter_is_refused_unless_overwrite(sample_data, tmp_path):
    out = tmp_path / "o"
    protect_path(sample_data / "hc18", out, method="random")
    with pytest.raises(OutputError, match=r"budget.*--overwrite"):
        protect_path(sample_data / "hc18", out, method="random", eps="4/255")
    fresh = protect_path(sample_data / "hc18", out, method="random", eps="4/255", overwrite=True)
    assert fresh.run["resumed"] == 0 and fresh.run["done_now"] == fresh.run["units"] + fresh.run["copies"]
    with pytest.raises(OutputError, match="--overwrite"):
        protect_path(sample_data / "hc18", out, method="random", eps="8/255")


EM = {"rounds": 1, "train_steps": 2, "pgd_steps": 2, "batch_size": 2}


def test_chunked_fit_resumes_byte_identical(small_set, tmp_path, monkeypatch):
    whole = protect_path(small_set, tmp_path / "whole", method="em", method_options=EM, chunk_size=2)
    assert len(whole.fit["chunks"]) == 3
    assert not list((tmp_path / "whole" / CONTROL_DIR).glob("state*"))  # the surrogate is not left behind
    with monkeypatch.context() as m:
        crash_after(m, 3)  # dies inside the second chunk
        with pytest.raises(Crash):
            protect_path(small_set, tmp_path / "cut", method="em", method_options=EM, chunk_size=2)
    assert list((tmp_path / "cut" / CONTROL_DIR).glob("state*.chunk-0.pt"))
    again = protect_path(small_set, tmp_path / "cut", method="em", method_options=EM, chunk_size=2)
    assert again.run["resumed"] == 3
    assert outputs(tmp_path / "cut") == outputs(tmp_path / "whole")
    assert again.fit["chunks"] == whole.fit["chunks"]
    assert whole.fit["chunks"][0] != whole.fit["chunks"][1]


def test_chunks_carry_the_surrogate(small_set, tmp_path):
    one = protect_path(small_set, tmp_path / "one", method="em", method_options=EM, chunk_size=None)
    three = protect_path(small_set, tmp_path / "three", method="em", method_options=EM, chunk_size=2)
    assert "chunks" not in one.fit and len(three.fit["chunks"]) == 3
    a, b = outputs(tmp_path / "one"), outputs(tmp_path / "three")
    assert a.keys() == b.keys() and a != b  # a different optimisation, same files
    prot = np.asarray(Image.open(tmp_path / "three/images/im5.png")).astype(int)
    clean = np.asarray(Image.open(small_set / "images/im5.png")).astype(int)
    assert 0 < np.abs(prot - clean).max() <= 8


# ------------------------------------------------- reruns after the input changed (issue 15, item 4)


def _series_copy(sample_data: Path, dst: Path, slices: list[str]) -> Path:
    """A copy of the sample CT series holding only ``slices``."""
    (dst / "ct").mkdir(parents=True)
    for name in slices:
        shutil.copy2(sample_data / "dicom/ct_series" / name, dst / "ct" / name)
    return dst


def _written(manifest) -> list[str]:
    return sorted(e.output for e in manifest.entries if e.status == "written")


def test_a_slice_added_to_a_finished_series_is_protected_on_rerun(sample_data, tmp_path, capsys):
    from ulmed.cli import main

    src = _series_copy(sample_data, tmp_path / "in", ["17106", "17136", "17166"])
    out = tmp_path / "out"
    protect_path(src, out, method="random")
    shutil.copy2(sample_data / "dicom/ct_series/17196", src / "ct" / "17196")
    capsys.readouterr()
    assert main(["protect", "-i", str(src), "-o", str(out), "--method", "random"]) == 0
    err = capsys.readouterr().err
    assert "1 changed since the earlier run, redone" in err and "resumed" not in err
    again = json.loads((out / "manifest.json").read_text())
    written = sorted(e["output"] for e in again["entries"] if e["status"] == "written")
    assert written == [f"ct/{n}" for n in ("17106", "17136", "17166", "17196")]
    fresh = protect_path(src, tmp_path / "fresh", method="random")
    assert outputs(out) == outputs(tmp_path / "fresh")  # the whole series redone as one: as a fresh run
    assert _written(fresh) == sorted(e["output"] for e in again["entries"] if e["status"] == "written")


def test_a_changed_slice_is_redone_and_a_removed_one_leaves_no_output(sample_data, tmp_path):
    src = _series_copy(sample_data, tmp_path / "in", ["17106", "17136", "17166", "17196"])
    out = tmp_path / "out"
    protect_path(src, out, method="random")
    ds = pydicom.dcmread(src / "ct/17136")
    old = ds.pixel_array.astype(int)
    pixels = ds.pixel_array.copy()
    pixels[:8, :8] += 500
    ds.PixelData = pixels.tobytes()
    ds.save_as(src / "ct/17136")
    (src / "ct/17196").unlink()
    again = protect_path(src, out, method="random")
    assert again.run["changed"] == 1 and again.run["resumed"] == 0
    assert not (out / "ct/17196").exists() and _written(again) == ["ct/17106", "ct/17136", "ct/17166"]
    protect_path(src, tmp_path / "fresh", method="random")
    assert outputs(out) == outputs(tmp_path / "fresh")
    written = pydicom.dcmread(out / "ct/17136").pixel_array.astype(int)
    eps = next(e.budget["eps_native"] for e in again.entries if e.output == "ct/17136")
    assert np.abs(written - pixels.astype(int)).max() <= eps  # made from the changed slice,
    assert np.abs(written - old)[:8, :8].min() > eps  # not from the old one


def test_an_image_gone_from_the_input_has_its_output_removed(sample_data, tmp_path):
    src = tmp_path / "hc18"
    shutil.copytree(sample_data / "hc18", src)
    out = tmp_path / "out"
    protect_path(src, out, method="random")
    (src / "images/012_HC.png").unlink()
    (src / "masks/012_HC.png").unlink()
    again = protect_path(src, out, method="random")
    assert again.run["removed"] == 2 and again.run["resumed"] == 2  # the image and its mask copy
    assert not (out / "images/012_HC.png").exists() and not (out / "masks/012_HC.png").exists()
    assert "images/012_HC.png" not in {e.input for e in again.entries}


def test_a_moved_or_copied_input_folder_resumes(sample_data, tmp_path):
    first = tmp_path / "first"
    shutil.copytree(sample_data, first)
    out = tmp_path / "out"
    done = protect_path(first, out, method="random")
    moved = tmp_path / "moved"
    first.rename(moved)  # same content, same mtimes, new path
    again = protect_path(moved, out, method="random")
    assert again.run["resumed"] == done.run["units"] and again.run["done_now"] == 0 and again.run["changed"] == 0
    copied = tmp_path / "copied"
    shutil.copytree(moved, copied, copy_function=shutil.copyfile)  # new mtimes: the content hashes decide
    assert protect_path(copied, out, method="random").run["resumed"] == done.run["units"]


# ------------------------------------------------- --overwrite starts over (issue 15, item 9)


def test_overwrite_removes_what_the_earlier_run_wrote_and_nothing_else(sample_data, tmp_path):
    out = tmp_path / "out"
    protect_path(sample_data, out, method="random")
    mine = out / "notes.txt"
    mine.write_text("the user's own file")
    edited = out / "hc18/images/012_HC.png"  # written by the run, then changed by the user
    edited.write_bytes(edited.read_bytes() + b"user edit")
    fresh = protect_path(sample_data / "hc18", out, method="random", eps="4/255", overwrite=True)
    left = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and CONTROL_DIR not in p.parts}
    ours = {e.output for e in fresh.entries if e.output} | {"manifest.json"}
    assert left == ours | {"notes.txt", "hc18/images/012_HC.png"}  # no stale DICOM or NIfTI output remains
    assert not (out / "dicom").exists() and not (out / "msd_hippocampus").exists()
    assert mine.read_text() == "the user's own file"

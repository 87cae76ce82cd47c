"""The unit of work: records of a batch share one protect_many call, and still fail and warn alone."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import tree_hashes
from ulmed.pipeline import work
from ulmed.pipeline.protect import protect_path
from ulmed.pipeline.units import Unit
from ulmed.segmentation.generator import UnsegGenerator

IMAGES = 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, real_data) -> Path:
    """Seven real HC18 images with their masks (reduced to 80 x 54) and one truncated PNG among them."""
    root = tmp_path_factory.mktemp("batch") / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for path in sorted((real_data / "hc18/images").glob("*.png"))[:IMAGES]:
        Image.open(path).resize((80, 54), Image.BILINEAR).save(root / "images" / path.name)
        mask = Image.open(real_data / "hc18/masks" / path.name).resize((80, 54), Image.NEAREST)
        mask.save(root / "masks" / path.name)
    good = (root / "images" / path.name).read_bytes()
    (root / "images/010_bad.png").write_bytes(good[: len(good) // 3])
    return root


def _passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the UnSeg generator's forward passes (their batch sizes) in the runs that follow."""
    sizes: list[int] = []
    real = UnsegGenerator.forward

    def counted(self, images, prompt):
        sizes.append(images.shape[0])
        return real(self, images, prompt)

    monkeypatch.setattr(UnsegGenerator, "forward", counted)
    return sizes


def _images(out: Path) -> dict[str, str]:
    return {k: v for k, v in tree_hashes(out).items() if k.startswith("images/")}


def test_a_run_batches_images_through_the_generator_and_a_bad_file_fails_alone(dataset, tmp_path, monkeypatch):
    said = "a library warning about 006_HC.png"
    real_read = work.read_record

    def warning_read(unit, ctx):
        if unit.key.endswith("006_HC.png"):
            warnings.warn(said, UserWarning, stacklevel=1)
        return real_read(unit, ctx)

    monkeypatch.setattr(work, "read_record", warning_read)
    sizes = _passes(monkeypatch)
    batched = protect_path(dataset, tmp_path / "batched", method="unseg")
    assert sizes == [16]  # one forward pass for the whole run (batch_size 16, padded)
    failed = [e for e in batched.entries if e.status == "failed"]
    assert [e.input for e in failed] == ["images/010_bad.png"]
    written = [e for e in batched.entries if e.status == "written" and e.kind == "image"]
    assert len(written) == IMAGES and all(e.metrics and e.budget for e in written)
    assert {e.input for e in written if e.warnings} == {"images/006_HC.png"}  # its warning stays with it
    assert [e.warnings for e in written if e.warnings] == [[said]]

    sizes.clear()
    monkeypatch.setattr(work, "_groups", lambda units, size: [[u] for u in units])  # one record at a time
    alone = protect_path(dataset, tmp_path / "alone", method="unseg")
    assert sizes == [16] * IMAGES
    assert _images(tmp_path / "batched") == _images(tmp_path / "alone")  # byte for byte
    def seen(m):
        return [(e.input, e.status, e.sha256) for e in m.entries]

    assert seen(alone) == seen(batched)
    # one record per group: every record after the first was read ahead, in the reader thread
    assert [e.warnings for e in alone.entries if e.warnings] == [[said]]
    assert {e.input for e in alone.entries if e.warnings} == {"images/006_HC.png"}


@pytest.mark.parametrize("limit", [work.READ_AHEAD_BYTES, 0])
def test_the_next_group_is_read_in_a_thread_unless_it_is_too_large(dataset, tmp_path, monkeypatch, limit):
    import threading

    readers: dict[str, str] = {}
    real_read = work.read_record

    def noted(unit, ctx):
        readers[unit.key] = threading.current_thread().name
        return real_read(unit, ctx)

    monkeypatch.setattr(work, "read_record", noted)
    monkeypatch.setattr(work, "READ_AHEAD_BYTES", limit)
    manifest = protect_path(dataset, tmp_path / "out", method="lsp")
    ahead = sorted(k for k, name in readers.items() if name.startswith("ulmed-read"))
    assert len(readers) == IMAGES + 1 and ahead == (sorted(readers)[1:] if limit else [])
    assert [e.input for e in manifest.entries if e.status == "failed"] == ["images/010_bad.png"]


def test_groups_join_consecutive_images_only():
    def unit(kind: str, key: str) -> Unit:
        return Unit(kind, key, None)  # type: ignore[arg-type]

    units = [unit("image", "a"), unit("image", "b"), unit("image", "c"), unit("nifti", "v"), unit("image", "d"),
             unit("copy", "m"), unit("image", "e")]
    assert [[u.key for u in g] for g in work._groups(units, 2)] == [["a", "b"], ["c"], ["v"], ["d"], ["m"], ["e"]]
    assert [len(g) for g in work._groups(units, 1)] == [1] * len(units)


def test_a_file_to_copy_that_cannot_be_read_fails_alone_and_the_run_goes_on(dataset, tmp_path, monkeypatch):
    import shutil

    import ulmed.io.atomic

    root = tmp_path / "ds"
    shutil.copytree(dataset, root)
    (root / "README.md").write_text("about the data")
    (root / "index.csv").write_text("image\n")
    real_copy = shutil.copy2

    def refused(src, dst, **kwargs):
        if str(src).endswith("README.md"):
            raise PermissionError(13, "Permission denied", str(src))
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(ulmed.io.atomic.shutil, "copy2", refused)
    manifest = protect_path(root, tmp_path / "out", method="lsp")
    by_input = {e.input: e for e in manifest.entries}
    assert by_input["README.md"].status == "failed"
    assert "cannot be read (Permission denied); check its permissions" in by_input["README.md"].reason
    assert by_input["index.csv"].status == "copied" and (tmp_path / "out/index.csv").read_text() == "image\n"
    assert not (tmp_path / "out/README.md").exists()
    assert sum(e.status == "written" and e.kind == "image" for e in manifest.entries) == IMAGES

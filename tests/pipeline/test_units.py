"""Units of work: which records and copies an inventory makes, where they go, and when their inputs changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ulmed.io.discover import discover
from ulmed.pipeline.units import copies_of, input_stamps, inputs_changed, output_paths, relative, units_of


def test_an_image_data_set_is_three_images_and_four_copies(sample_data):
    inv = discover(sample_data / "hc18")
    units = units_of(inv)
    assert [(u.kind, u.key) for u in units] == [("image", f"images/{s}_HC.png") for s in ("012", "015", "017")]
    assert units[0].inputs == [inv.root / "images/012_HC.png", inv.root / "masks/012_HC.png"]  # the mask shapes it
    copies = copies_of(inv, None, skip_non_image=False)
    masks = [f"copy:masks/{s}_HC.png" for s in ("012", "015", "017")]
    assert sorted(u.key for u in copies) == ["copy:index.csv", *masks]
    assert output_paths(units[0], inv.root) == ["images/012_HC.png"]


def test_masks_from_outside_go_to_masks_and_jpeg_becomes_png(sample_data, tmp_path):
    images, masks = tmp_path / "in", tmp_path / "labels"
    images.mkdir()
    shutil.copy(sample_data / "hc18/images/012_HC.png", images / "scan.png")
    from PIL import Image

    Image.open(images / "scan.png").convert("L").save(images / "photo.jpg")
    masks.mkdir()
    shutil.copy(sample_data / "hc18/masks/012_HC.png", masks / "scan.png")
    inv = discover(images, masks)
    copies = copies_of(inv, masks, skip_non_image=False)
    assert [u.key for u in copies] == ["copy:masks/scan.png"]
    photo = next(u for u in units_of(inv) if u.key == "photo.jpg")
    assert output_paths(photo, inv.root) == ["photo.png"]


def test_skip_non_image_leaves_structure_sets_out(sample_data):
    inv = discover(sample_data / "dicom")
    kinds = {u.source.kind for u in copies_of(inv, None, skip_non_image=False)}
    assert "dicom-non-image" in kinds
    assert all(u.source.kind != "dicom-non-image" for u in copies_of(inv, None, skip_non_image=True))


def test_inputs_changed_by_size_or_content_not_by_a_touch(sample_data, tmp_path):
    src = tmp_path / "hc18"
    shutil.copytree(sample_data / "hc18", src)
    inv = discover(src)
    unit = units_of(inv)[0]
    stamps = input_stamps(unit, inv.root)
    assert set(stamps) == {"images/012_HC.png", "masks/012_HC.png"}
    assert not inputs_changed(unit, inv.root, stamps)
    os.utime(src / "images/012_HC.png", ns=(1, 1))  # a copied folder: new mtime, same bytes
    assert not inputs_changed(unit, inv.root, stamps)
    mask = src / "masks/012_HC.png"
    mask.write_bytes(mask.read_bytes()[:-1] + b"\0")
    assert inputs_changed(unit, inv.root, stamps)
    assert inputs_changed(unit, inv.root, None)  # journalled without stamps: redone


def test_relative_falls_back_to_the_absolute_path():
    assert relative(Path("/a/b/c.png"), Path("/a")) == "b/c.png"
    assert relative(Path("/x/c.png"), Path("/a")) == "/x/c.png"

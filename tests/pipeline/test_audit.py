"""The protection audit: its plans, its rows and card, and a real run on HC18 images, alone and in a release."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import tree_hashes
from ulmed.core.tasks import Task
from ulmed.errors import ConfigError, InputError
from ulmed.pipeline import audit as audit_mod
from ulmed.pipeline.audit import (
    AuditLevel,
    AuditPlan,
    AuditResult,
    audit_card,
    audit_grid,
    audit_plan,
    audit_rows,
    run_audit,
)
from ulmed.pipeline.checksums import read_sums
from ulmed.pipeline.protect import protect_path
from ulmed.pipeline.release import release_dataset, verify_release

TINY = AuditPlan(("unet",), ("none", "flip_jitter"), epochs=1, batch_size=4, size=16)


def test_plans_are_looked_up_by_level_and_task():
    assert audit_plan("QUICK", Task.SEGMENTATION).victims == ("unet",)
    assert audit_plan(AuditLevel.FULL, Task.CLASSIFICATION).epochs > audit_plan("quick", Task.CLASSIFICATION).epochs
    with pytest.raises(ConfigError, match="medium.*full"):
        audit_plan("medium", Task.SEGMENTATION)
    with pytest.raises(ConfigError, match="bad schedule"):
        AuditPlan(("unet",), ("none",), epochs=0)


def test_rows_pair_each_protected_cell_with_its_clean_cell():
    cells = [{"victim": "unet", "defense": "none", "protection": "clean", "value": 0.8},
             {"victim": "unet", "defense": "none", "protection": "protected", "value": 0.2},
             {"victim": "unet", "defense": "blur", "protection": "clean", "value": 0.0},
             {"victim": "unet", "defense": "blur", "protection": "protected", "value": 0.1},
             {"victim": "unet", "defense": "none", "protection": "other", "value": 0.5}]
    rows = audit_rows(cells)
    assert [(r["defense"], r["clean"], r["protected"]) for r in rows] == [("none", 0.8, 0.2), ("blur", 0.0, 0.1)]
    assert math.isclose(rows[0]["ratio"], 0.25) and rows[1]["ratio"] is None  # no ratio to a zero baseline


def test_card_names_victims_schedule_split_and_the_weakest_ratio(tmp_path):
    settings = {"victims": ["unet"], "defenses": ["none"], "epochs": 3, "batch_size": 4, "grid": "images at 16",
                "limit": None, "seed": 0, "n_train": 10, "n_test": 3, "split": "hash of the file stem"}
    rows = [{"victim": "unet", "defense": "none", "clean": 0.8, "protected": 0.4, "ratio": 0.5},
            {"victim": "unet", "defense": "jpeg10", "clean": 0.7, "protected": 0.63, "ratio": 0.9}]
    result = AuditResult("quick", "dice", rows, settings, figure=tmp_path / "glance.png")
    text = "\n".join(result.card_lines("AUDIT.png"))
    assert "| unet | jpeg10 | 0.700 | 0.630 | 0.90 |" in text and "weakest measured ratio is 0.90" in text
    assert "10 train, 3 test" in text and "3 epochs" in text and "![audit](AUDIT.png)" in text
    assert result.to_manifest()["figure"] == "glance.png"  # a name, never a local path
    card = audit_card(result, tmp_path)
    assert card.read_text().startswith("# Protection audit") and json.loads((tmp_path / "audit.json").read_text())


@pytest.fixture(scope="module")
def split_set(real_data, tmp_path_factory) -> Path:
    """HC18 images with masks and a fixed split: 6 train and 3 test rows."""
    src, dst = real_data / "hc18", tmp_path_factory.mktemp("audit") / "hc18"
    with open(src / "index.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    keep = [r for r in rows if r["split"] == "train"][:6] + [r for r in rows if r["split"] == "test"][:3]
    for sub in ("images", "masks"):
        (dst / sub).mkdir(parents=True)
    for r in keep:
        shutil.copy2(src / r["image"], dst / r["image"])
        shutil.copy2(src / r["mask"], dst / r["mask"])
    with open(dst / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(keep[0]))
        writer.writeheader()
        writer.writerows(keep)
    return dst


@pytest.fixture
def tiny_plans(monkeypatch):
    for level in AuditLevel:
        monkeypatch.setitem(audit_mod.AUDIT_PLANS, (level, Task.SEGMENTATION), TINY)


def test_the_plan_meets_the_data_working_sizes_for_2d_nnunet_and_a_median_volume_shape(plain_folders):
    plan = AuditPlan(("unet",), ("none",), epochs=1, grid_2d=("resize:32",), nnunet=True)
    flat = audit_grid(plan, plain_folders["seg2d"], {})
    assert flat.defenses == ("none", "resize:32") and flat.victims == ("unet", "nnunet-2d") and flat.spatial_dims == 2
    vol = audit_grid(plan, plain_folders["seg3d"], {})
    assert vol.defenses == ("none",) and vol.victims == ("unet", "nnunet-3d")
    assert vol.shape == (40, 56, 40)  # hippocampus crops are about 36 x 50 x 35: the median rounded up to 8s
    assert all(v % 8 == 0 and v <= 96 for v in vol.shape)


@pytest.mark.parametrize("kind", ["seg2d", "seg3d"])
def test_an_audit_runs_on_a_plain_folder_without_a_split_file(plain_folders, kind, tmp_path, tiny_plans):
    protected = tmp_path / "protected"
    protect_path(plain_folders[kind], protected, method="random", eps="8/255")
    result = run_audit(plain_folders[kind], protected, tmp_path / "audit", "quick")
    assert {r["defense"] for r in result.rows} == {"none", "flip_jitter"}
    assert "stable hash of the subject" in result.settings["split"] and result.settings["n_test"] >= 1
    assert (tmp_path / "audit" / "split.json").is_file()


def test_an_audit_trains_clean_and_protected_victims_per_defense(split_set, tmp_path, tiny_plans):
    protected = tmp_path / "protected"
    protect_path(split_set, protected, method="random", eps="8/255")
    before = tree_hashes(split_set)
    result = run_audit(split_set, protected, tmp_path / "audit", "quick")
    assert tree_hashes(split_set) == before
    assert [(r["victim"], r["defense"]) for r in result.rows] == [("unet", "none"), ("unet", "flip_jitter")]
    assert all(0 <= r["clean"] <= 1 and 0 <= r["protected"] <= 1 for r in result.rows)
    assert result.settings["n_train"] == 6 and result.settings["n_test"] == 3 and result.settings["epochs"] == 1
    assert result.settings["split"] == "the data set's fixed split (index.csv)"
    assert result.figure is not None and result.figure.is_file()
    assert result.imperceptibility["psnr"] > 30
    with pytest.raises(InputError, match="protected copy not found"):
        run_audit(split_set, tmp_path / "nowhere", tmp_path / "audit2")


def test_a_release_carries_its_audit_on_the_card_in_the_manifest_and_as_a_figure(split_set, tmp_path, tiny_plans):
    report = release_dataset(split_set, tmp_path / "release", method="random", eps="8/255", audit="quick")
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert [r["defense"] for r in manifest["audit"]["rows"]] == ["none", "flip_jitter"]
    assert manifest["audit"]["figure"] == "AUDIT.png" and "AUDIT.png" in read_sums(report.sums)
    card = report.datacard.read_text()
    assert "## Measured protection (audit)" in card and "![audit](AUDIT.png)" in card
    assert verify_release(report.path).ok and not report.foreign
    with pytest.raises(ConfigError, match="audit level"):
        release_dataset(split_set, tmp_path / "r2", method="random", audit="medium")
    assert not (tmp_path / "r2").exists()  # refused before any work

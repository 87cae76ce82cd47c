"""`ulmed evaluate` end to end on a handful of real HC18 images: grid, report files, resume, CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil

import pytest
from PIL import Image

from tests.conftest import tree_hashes
from ulmed.cli import main
from ulmed.eval.grid import CLEAN, CLEAN_PART, run_evaluation
from ulmed.eval.report import transfer_notes
from ulmed.eval.sources import read_protection
from ulmed.eval.train import TrainConfig
from ulmed.pipeline.protect import protect_path

QUICK = {"victims": ["unet"], "defenses": ["none", "flip_jitter"], "size": (32, 32), "seed": 0}


def _config(epochs: int = 2) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=4, device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, real_data):
    """6 train + 3 test HC18 items with their own index.csv, and an lsp-protected copy."""
    src = real_data / "hc18"
    root = tmp_path_factory.mktemp("eval")
    clean = root / "clean"
    with open(src / "index.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    pick = [r for r in rows if r["split"] == "train"][:6] + [r for r in rows if r["split"] == "test"][:3]
    for r in pick:
        for col in ("image", "mask"):
            (clean / r[col]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / r[col], clean / r[col])
    with open(clean / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(pick)
    protect_path(clean, root / "lsp", method="lsp", eps="8/255", device="cpu")
    return clean, root / "lsp"


@pytest.fixture(scope="module")
def first_run(tiny, tmp_path_factory):
    clean, lsp = tiny
    before = tree_hashes(clean)
    out = tmp_path_factory.mktemp("report") / "out"
    report = run_evaluation(clean, {"lsp": lsp}, out, train_config=_config(), **QUICK)
    assert tree_hashes(clean) == before, "the clean input was modified"
    return out, report


def test_report_has_one_cell_per_victim_defense_protection(first_run):
    out, _ = first_run
    saved = json.loads((out / "report.json").read_text())
    cells = {(c["victim"], c["defense"], c["protection"]) for c in saved["cells"]}
    assert cells == {(v, d, p) for v in ["unet"] for d in ["none", "flip_jitter"] for p in (CLEAN, "lsp")}
    assert len(saved["cells"]) == 4 and saved["trained"] == 4 and saved["reused"] == 0
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(
        f"unet__{d}__{p}{ext}" for d in ("none", "flip_jitter") for p in (CLEAN, "lsp")
        for ext in (".json", ".examples.npz"))  # each segmentation cell keeps its example predictions
    for c in saved["cells"]:
        for metric in ("dice", "iou"):
            value = c["metrics"][metric]
            assert isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0
        assert c["value"] == c["metrics"]["dice"] and c["main_metric"] == "dice"
        assert c["wall_s"] > 0 and c["n_train"] == 6 and c["reused"] is False
        if c["protection"] == CLEAN:
            assert c["ratio"] == 1.0
        else:
            base = next(b["value"] for b in saved["cells"] if b["protection"] == CLEAN and b["defense"] == c["defense"])
            assert c["ratio"] == pytest.approx(c["value"] / base, abs=1e-5)
    assert saved["settings"]["n_train"] == 6 and saved["settings"]["n_test"] == 3


def test_imperceptibility_and_transfer_are_recorded(first_run):
    _, report = first_run
    (prot,) = report["protections"]
    assert prot["method"] == "lsp" and prot["budget"] == "8/255" and prot["surrogate"] is None
    imp = prot["imperceptibility"]
    assert imp["n"] == 6 and imp["unchanged"] == 0
    assert imp["linf"] == pytest.approx(8 / 255, abs=1e-6) and imp["linf_native"] == pytest.approx(8.0, abs=1e-4)
    assert 20 < imp["psnr"] < 60 and 0 < imp["ssim"] < 1 and 0 < imp["l0_fraction"] <= 1
    (note,) = report["transfer"]
    assert note["victim"] == "unet" and "lsp" in note["note"] and note["transfer"] is None


def test_markdown_and_figures(first_run):
    out, report = first_run
    md = (out / "report.md").read_text()
    assert "| defense | protection | Dice | ratio to clean | PSNR (dB) | SSIM |" in md
    assert "## Victim unet" in md and "| none | clean |" in md and "| flip_jitter | lsp |" in md
    assert "## Transfer" in md and "evaluated on victim unet" in md
    pngs = [f for f in report["files"] if f.endswith(".png")]
    assert set(pngs) == {"glance.png", "metric_bars.png", "strip_lsp.png"}
    for name in pngs:
        with Image.open(out / name) as im:
            assert im.format == "PNG" and min(im.size) > 50
            im.verify()
        assert f"]({name})" in md


def test_rerun_reuses_every_cell(first_run, tiny):
    out, report = first_run
    clean, lsp = tiny
    before = {p.name: p.read_bytes() for p in (out / "cells").iterdir()}
    again = run_evaluation(clean, {"lsp": lsp}, out, train_config=_config(), **QUICK)
    assert again["trained"] == 0 and again["reused"] == 4
    assert all(c["reused"] for c in again["cells"])
    assert {p.name: p.read_bytes() for p in (out / "cells").iterdir()} == before, "a finished cell was rewritten"
    assert [c["value"] for c in again["cells"]] == [c["value"] for c in report["cells"]]
    assert "0 cell(s) trained, 4 reused" in (out / "report.md").read_text()


def test_changed_settings_retrain_and_mixing_adds_clean_part(tiny, tmp_path):
    clean, lsp = tiny
    args = {"victims": ["unet"], "defenses": ["mix0.5"], "size": (32, 32), "figures": False}
    first = run_evaluation(clean, {"lsp": lsp}, tmp_path / "out", train_config=_config(1), **args)
    assert [c["protection"] for c in first["cells"]] == [CLEAN, "lsp", CLEAN_PART]
    part = first["cells"][2]
    assert part["n_train"] == 3 and part["trained_with_defense"] == "none"
    again = run_evaluation(clean, {"lsp": lsp}, tmp_path / "out", train_config=_config(2), **args)
    assert again["trained"] == 3 and not any(c["reused"] for c in again["cells"])


def test_transfer_note_names_surrogate_and_victim(tiny, tmp_path):
    _, lsp = tiny
    copy = tmp_path / "salm"
    shutil.copytree(lsp, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["params"].update(method="salm", surrogate="auto")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    prot = read_protection("salm", copy, "segmentation")
    assert prot.method == "salm" and prot.surrogate == "unet"
    notes = transfer_notes({"protections": [prot.to_dict()], "victims": ["unet", "segresnet"]})
    assert [n["transfer"] for n in notes] == [False, True]
    assert "made with salm on surrogate unet, evaluated on victim segresnet" in notes[1]["note"]
    assert read_protection("bare", tmp_path, "segmentation").method is None


def test_cli_evaluate_writes_report(tiny, tmp_path, capsys):
    clean, lsp = tiny
    out = tmp_path / "cli"
    code = main(["--device", "cpu", "evaluate", "--clean", str(clean), "--protected", f"lsp={lsp}", "-o", str(out),
                 "--quick", "--epochs", "1", "--threads", "1", "--learnability"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert (out / "report.md").is_file() and (out / "report.json").is_file()
    assert "2 cell(s) (2 trained, 0 reused)" in err and str(out / "report.md") in err
    saved = json.loads((out / "report.json").read_text())
    assert saved["settings"]["loader"]["size"] == [32, 32]
    assert [c["ud"] for c in saved["cells"]][0] == 1.0 and all(c["sal"] for c in saved["cells"])


def test_cli_evaluate_trains_on_patches(tiny, tmp_path, capsys):
    clean, _ = tiny
    out = tmp_path / "patch"
    code = main(["--device", "cpu", "evaluate", "--clean", str(clean), "-o", str(out), "--quick", "--epochs", "1",
                 "--threads", "1", "--patch", "16x16"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "report.json").read_text())
    assert saved["settings"]["train_config"]["patch_size"] == [16, 16]
    assert main(["evaluate", "--clean", str(clean), "-o", str(tmp_path / "bad"), "--patch", "16,x"]) == 2
    assert "--patch needs integers" in capsys.readouterr().err
    assert main(["evaluate", "--clean", str(clean), "-o", str(tmp_path / "big"), "--quick", "--epochs", "1",
                 "--patch", "64,64"]) == 2
    assert "patch_size" in capsys.readouterr().err  # larger than the 32 x 32 images: refused, named


def test_cli_missing_clean_is_one_line_error(tmp_path, capsys):
    code = main(["evaluate", "--clean", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "nope" in err and "--clean" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_cli_rejects_bad_protected_and_victim(tiny, tmp_path, capsys):
    clean, lsp = tiny
    assert main(["evaluate", "--clean", str(clean), "--protected", f"clean={lsp}", "-o", str(tmp_path / "a")]) == 2
    assert "reserved" in capsys.readouterr().err
    assert main(["evaluate", "--clean", str(clean), "--victim", "densenet121", "-o", str(tmp_path / "b")]) == 2
    assert "needs segmentation" in capsys.readouterr().err
    assert main(["evaluate", "--clean", str(clean), "-o", str(clean / "out")]) == 2
    assert "overlaps the input" in capsys.readouterr().err


def test_learnability_adds_sal_and_ud_and_retrains_cells_without_it(tiny, tmp_path):
    clean, lsp = tiny
    args = {"victims": ["unet"], "defenses": ["none"], "size": (32, 32), "figures": False}
    out = tmp_path / "out"
    plain = run_evaluation(clean, {"lsp": lsp}, out, train_config=_config(1), **args)
    assert all("sal" not in c and "ud" not in c for c in plain["cells"])
    assert "| UD |" not in (out / "report.md").read_text()
    report = run_evaluation(clean, {"lsp": lsp}, out, train_config=_config(1), learnability=True, **args)
    assert report["trained"] == 2, "cells cached without SAL must be trained again"
    assert report["settings"]["learnability"]["gamma"] == 0.05
    saved = json.loads((out / "report.json").read_text())
    cells = {c["protection"]: c for c in saved["cells"]}
    for c in cells.values():
        assert len(c["sal"]) > 5 and all(row["sal"] >= 0 and row["loss"] > 0 for row in c["sal"])
        assert c["sal_s"] > 0
        assert json.loads((out / "cells" / f"unet__none__{c['protection']}.json").read_text())["sal"] == c["sal"]
    assert [r["layer"] for r in cells["lsp"]["sal"]] == [r["layer"] for r in cells[CLEAN]["sal"]]
    assert cells[CLEAN]["ud"] == 1.0
    ud, detail = cells["lsp"]["ud"], cells["lsp"]["ud_detail"]
    assert isinstance(ud, float) and ud == pytest.approx(detail["n_protected"] / detail["n_clean"], abs=1e-6)
    md = (out / "report.md").read_text()
    assert "| defense | protection | Dice | ratio to clean | UD | PSNR (dB) |" in md
    assert f"| none | lsp | {cells['lsp']['value']:.3f} | {cells['lsp']['ratio']:.3f} | {ud:.3f} |" in md
    again = run_evaluation(clean, {"lsp": lsp}, out, train_config=_config(1), learnability=True, **args)
    assert again["trained"] == 0 and [c["ud"] for c in again["cells"]] == [1.0, ud]

"""DATACARD.md: numbers from the manifest, one line per record, and no input file named."""

from __future__ import annotations

import math

from ulmed.pipeline.datacard import CopyCheck, record_budgets, record_metrics, render_datacard, scrub_reason, spread
from ulmed.pipeline.manifest import Entry, Manifest

BUDGET = {"eps_unit": 8 / 255, "native_unit": "HU", "eps_native": 40.0}


def _manifest() -> Manifest:
    series = [Entry(f"ct/{i}.dcm", "written", output=f"ct/{i}.dcm", kind="dicom", record="ct",
                    budget=BUDGET, metrics={"psnr": 40.0, "ssim": 0.99}) for i in range(3)]
    image = Entry("a.png", "written", output="a.png", kind="image", record="a.png",
                  budget={"eps_unit": 8 / 255, "native_unit": "value", "eps_native": 8.0},
                  metrics={"psnr": 44.0, "ssim": 0.97})
    mask = Entry("masks/a.png", "copied", output="masks/a.png", kind="target")
    bad = Entry("Doe_John/b.png", "failed", kind="input", reason="/data/study/Doe_John/b.png: truncated file")
    return Manifest(params={"method": "random", "budget": "8/255", "seed": 3, "input": "/data/study",
                            "engine": "local", "workers": 2, "rounds": 5},
                    entries=[*series, image, mask, bad])


def test_spread_is_min_median_max_of_the_finite_values():
    assert spread([3.0, None, 1.0, math.inf, 2.0]) == (1.0, 2.0, 3.0)
    assert spread([None, math.inf]) is None


def test_a_series_counts_once_in_metrics_and_budgets():
    m = _manifest()
    assert record_metrics(m) == {"ct": {"psnr": 40.0, "ssim": 0.99}, "a.png": {"psnr": 44.0, "ssim": 0.97}}
    assert record_budgets(m) == {(round(8 / 255, 6), "HU"): [40.0], (round(8 / 255, 6), "value"): [8.0]}


def test_scrub_reason_replaces_the_input_folder_and_file_names():
    m = _manifest()
    assert scrub_reason("/data/study/Doe_John/b.png: truncated file", m) == "<input>/<file>: truncated file"


def test_the_card_states_the_run_and_names_no_input_file():
    card = render_datacard("study", _manifest(), CopyCheck(targets=1))
    assert card.startswith("# Data card: study (protected release)")
    assert "- Seed: 3" in card and "`rounds=5`" in card and "workers" not in card  # how it ran is not printed
    assert "| protected (perturbed) | 4 (2 record(s)) |" in card
    assert "| failed (not in this release) | 1 |" in card
    assert "| PSNR (dB) | 40.00 | 42.00 | 44.00 |" in card
    assert "1 x <input>/<file>: truncated file" in card
    assert "Doe_John" not in card and "/data/study" not in card
    assert "sha256sum -c SHA256SUMS" in card


def test_the_card_states_the_default_budget_per_kind_and_its_floor():
    m = _manifest()
    assert "- Budget: Linf 8/255 (the most any value moved)" in render_datacard("study", m, CopyCheck(targets=1))
    m.params["budget"] = "auto"
    card = render_datacard("study", m, CopyCheck(targets=1))
    assert ("- Budget: Linf 8/255 at >= 38 dB, DICOM/NIfTI 16/255 at >= 40 dB (the most any value moved; "
            "scaled down where needed: images to a PSNR of at least 38 dB against their data range and DICOM and "
            "NIfTI records to a PSNR of at least 40 dB against their robust range)") in card

"""The command line: one-line errors, exit codes, info without patient identifiers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ulmed.cli import main

PATIENT_STRINGS = ("Doe^Archibald", "CompressedSamples", "Archibald")


def test_info_lists_all_kinds_without_identifiers(sample_data, capsys):
    assert main(["info", str(sample_data)]) == 0
    out = capsys.readouterr().out
    for expected in ("dicom", "nifti", "image", "CT", "MR", "HU"):
        assert expected in out
    assert "1 non-image DICOM" in out
    for name in PATIENT_STRINGS:
        assert name not in out


def test_missing_input_is_one_line_error(tmp_path, capsys):
    code = main(["protect", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "nope" in err and "check the -i path" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_debug_shows_the_exception(tmp_path):
    from ulmed.errors import InputError

    with pytest.raises(InputError):
        main(["--debug", "protect", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "out")])


def test_bad_budget_and_method_are_one_line_errors(sample_data, tmp_path, capsys):
    assert main(["protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "a"), "--eps", "lots"]) == 2
    assert "cannot read budget" in capsys.readouterr().err
    assert main(["protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "b"), "--method", "magic"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().err


def test_protect_then_summary(sample_data, tmp_path, capsys):
    assert main(["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o/manifest.json").is_file()
    assert main(["protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "p")]) == 0
    assert "3 image(s) protected" in capsys.readouterr().err


def test_train_generator_needs_its_folders(tmp_path, capsys):
    assert main(["train-generator"]) == 2
    assert "--data" in capsys.readouterr().err
    args = ["train-generator", "--data", str(tmp_path / "none"), "--masks", str(tmp_path), "--out", str(tmp_path / "g.pt")]
    assert main(args + ["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_console_entry_point_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "ulmed.cli", "protect", "-i", str(tmp_path / "missing"), "-o", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "missing" in proc.stderr


def test_config_file_fills_unset_options_and_flags_win(sample_data, tmp_path):
    import json

    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: none\neps: 2/255\n")
    assert main(["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "a"), "--config", str(cfg)]) == 0
    params = json.loads((tmp_path / "a/manifest.json").read_text())["params"]
    assert params["method"] == "none" and params["budget"] == "2/255"
    assert main(["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "b"), "--config", str(cfg), "--method", "random"]) == 0
    assert json.loads((tmp_path / "b/manifest.json").read_text())["params"]["method"] == "random"
    cfg.write_text("colour: blue\n")
    assert main(["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "c"), "--config", str(cfg)]) == 2


def test_lossy_dicom_output_refused_and_lossless_accepted(sample_data, tmp_path, capsys):
    import pydicom

    assert main(["protect", "-i", str(sample_data / "dicom"), "-o", str(tmp_path / "a"), "--dicom-encoding", "jpeg"]) == 2
    assert "lossy" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert main(["-q", "protect", "-i", str(sample_data / "dicom"), "-o", str(tmp_path / "b"), "--dicom-encoding", "jpegls"]) == 0
    ds = pydicom.dcmread(tmp_path / "b/single/CT_small.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    assert "ulmed lsp" in ds.DerivationDescription and list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]


def test_robust_flags_reach_the_method_and_the_manifest(sample_data, tmp_path, capsys):
    import json

    out = tmp_path / "eot"
    args = ["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(out), "--method", "em", "--augment", "flip_jitter",
            "--objective", "loss", "--set", "rounds=1", "--set", "train_steps=1", "--set", "pgd_steps=1"]
    assert main(args) == 0
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert params["augment"]["flips"] is True and params["augment"]["brightness"] == 0.2
    assert params["objective"] == "loss"
    fit = json.loads((out / "manifest.json").read_text())["fit"]
    assert len(fit["history"]["2d-1ch"]) == 1 and "augment_choice" not in fit
    assert main(["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "bad"), "--method", "em",
                 "--augment", "sideways"]) == 2
    assert "sideways" in capsys.readouterr().err

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
    args = ["train-generator", "--data", str(tmp_path / "none"), "--masks", str(tmp_path), "--out",
            str(tmp_path / "g.pt")]
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
    def protect(out, *more):
        return main(["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / out), "--config", str(cfg),
                     *more])

    assert protect("a") == 0
    params = json.loads((tmp_path / "a/manifest.json").read_text())["params"]
    assert params["method"] == "none" and params["budget"] == "2/255"
    assert protect("b", "--method", "random") == 0
    assert json.loads((tmp_path / "b/manifest.json").read_text())["params"]["method"] == "random"
    cfg.write_text("colour: blue\n")
    assert protect("c") == 2


def test_lossy_dicom_output_refused_and_lossless_accepted(sample_data, tmp_path, capsys):
    import pydicom

    def protect(out, encoding, *flags):
        return main([*flags, "protect", "-i", str(sample_data / "dicom"), "-o", str(tmp_path / out),
                     "--dicom-encoding", encoding])

    assert protect("a", "jpeg") == 2
    assert "lossy" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert protect("b", "jpegls", "-q") == 0
    ds = pydicom.dcmread(tmp_path / "b/single/CT_small.dcm")
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGLSLossless
    assert "ulmed lsp" in ds.DerivationDescription and list(ds.ImageType[:2]) == ["DERIVED", "SECONDARY"]


def test_robust_flags_reach_the_method_and_the_manifest(sample_data, tmp_path, capsys):
    import json

    out = tmp_path / "eot"
    args = ["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(out), "--method", "em", "--augment",
            "flip_jitter", "--objective", "loss", "--set", "rounds=1", "--set", "train_steps=1", "--set", "pgd_steps=1"]
    assert main(args) == 0
    params = json.loads((out / "manifest.json").read_text())["params"]
    assert params["augment"]["flips"] is True and params["augment"]["brightness"] == 0.2
    assert params["objective"] == "loss"
    fit = json.loads((out / "manifest.json").read_text())["fit"]
    assert len(fit["history"]["2d-1ch"]) == 1 and "augment_choice" not in fit
    assert main(["-q", "protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "bad"), "--method", "em",
                 "--augment", "sideways"]) == 2
    assert "sideways" in capsys.readouterr().err


@pytest.mark.parametrize("item, hint", [("seed=5", "use --seed 5"), ("device=cpu", "use --device cpu"),
                                        ("eps=0.03", "use --eps 0.03"), ("budget=4/255", "use --eps 4/255")])
def test_set_of_a_run_option_names_the_real_option(sample_data, tmp_path, capsys, item, hint):
    code = main(["protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "o"), "--set", item])
    err = capsys.readouterr().err.strip()
    assert code == 2 and hint in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_unknown_set_key_lists_the_methods_keys_from_its_constructor(sample_data, tmp_path, capsys):
    args = ["protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "o"), "--method"]
    assert main(args + ["lsp", "--set", "colour=blue"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'colour'" in err and "block, cell, fit, grid, psnr, style, tile" in err and len(err.splitlines()) == 1
    assert main(args + ["salm", "--set", "colour=blue"]) == 2  # inherited constructor keys are valid keys too
    err = capsys.readouterr().err
    assert all(k in err for k in ("rho", "rounds", "tile_size", "augment")) and "seed" not in err


def test_set_value_of_the_wrong_type_says_what_is_wanted(sample_data, tmp_path, capsys):
    args = ["protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "o"), "--method", "lsp"]
    assert main(args + ["--set", "tile=abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "tile wants an integer, got 'abc'" in err and len(err.splitlines()) == 1
    assert main(["-q"] + args + ["--set", "tile=4", "--set", "block=2"]) == 0


def test_release_checks_set_keys_too(sample_data, tmp_path, capsys):
    args = ["release", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "r"), "--method", "lsp"]
    assert main(args + ["--set", "seed=5"]) == 2
    assert "use --seed 5" in capsys.readouterr().err
    assert main(args + ["--set", "tiles=4"]) == 2
    assert "valid --set keys: block, cell, fit, grid, psnr, style, tile" in capsys.readouterr().err


def _single_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_full_disk_at_the_manifest_is_one_line_and_a_rerun_completes(sample_data, tmp_path, monkeypatch, capsys):
    import errno
    import pathlib

    out = tmp_path / "o"
    args = ["protect", "-i", str(sample_data / "hc18"), "-o", str(out)]
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".manifest.json."):
            raise OSError(errno.ENOSPC, None)
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)
    assert main(args) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert str(out / "manifest.json") in line and "No space left on device" in line
    assert not (out / "manifest.json").exists() and not list(out.rglob("*.part*"))
    monkeypatch.undo()
    assert main(args) == 0
    assert "done earlier, resumed" in capsys.readouterr().err and (out / "manifest.json").is_file()


def test_full_disk_while_writing_an_image_is_one_line_and_a_rerun_completes(sample_data, tmp_path, monkeypatch, capsys):
    from PIL import Image

    out = tmp_path / "o"
    args = ["protect", "-i", str(sample_data / "hc18"), "-o", str(out)]
    monkeypatch.setattr(Image.Image, "save", lambda *a, **k: (_ for _ in ()).throw(OSError(28, None)))
    assert main(args) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert str(out) in line and ".png" in line and "No space left on device" in line and "None" not in line
    assert not list(out.rglob("*.part*"))
    monkeypatch.undo()
    assert main(args) == 0
    assert "3 image(s) protected" in capsys.readouterr().err


def test_full_disk_at_the_journal_names_it_and_the_reason(sample_data, tmp_path, monkeypatch, capsys):
    import builtins

    import ulmed.pipeline.journal as journal

    class Full:
        def __init__(self, *a):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(28, None)

    def fake_open(path, mode="r", *a, **k):
        return Full() if "a" in mode else builtins.open(path, mode, *a, **k)

    out = tmp_path / "o"
    args = ["protect", "-i", str(sample_data / "hc18"), "-o", str(out)]
    monkeypatch.setattr(journal, "open", fake_open, raising=False)
    assert main(args) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert "journal" in line and str(out) in line and "No space left on device" in line
    monkeypatch.undo()
    assert main(args) == 0


def test_an_os_error_outside_ulmed_is_one_line_too(tmp_path, monkeypatch, capsys):
    import ulmed.pipeline.protect as protect

    def boom(*a, **k):
        raise OSError(28, None, str(tmp_path / "o/.ulmed/state.chunk-0.pt"))

    monkeypatch.setattr(protect, "run_protection", boom)
    assert main(["protect", "-i", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert "state.chunk-0.pt" in line and "No space left on device" in line


def test_full_disk_while_writing_dicom_names_the_file_and_the_reason(sample_data, tmp_path, monkeypatch, capsys):
    import pydicom

    out = tmp_path / "o"
    args = ["protect", "-i", str(sample_data / "dicom"), "-o", str(out)]
    monkeypatch.setattr(pydicom, "dcmwrite", lambda *a, **k: (_ for _ in ()).throw(OSError(28, None)))
    assert main(args) == 2
    line = _single_error_line(capsys.readouterr().err)
    assert str(out) in line and "No space left on device" in line and "(None)" not in line
    assert not list(out.rglob("*.part*"))
    monkeypatch.undo()
    assert main(args) == 0


def _info_folders(sample_data, tmp_path):
    """A folder with one good and one broken image, and one with only the broken image."""
    import shutil

    mixed, broken = tmp_path / "mixed", tmp_path / "broken"
    for folder in (mixed, broken):
        folder.mkdir()
        (folder / "bad.png").write_bytes(b"not a png")
    shutil.copy(sample_data / "hc18/images/012_HC.png", mixed / "good.png")
    return mixed, broken


def test_info_exit_codes_make_it_a_preflight_check(sample_data, tmp_path, capsys):
    mixed, broken = _info_folders(sample_data, tmp_path)
    assert main(["info", str(mixed)]) == 3
    out = capsys.readouterr().out
    assert "good.png" in out
    assert any(line.startswith("bad: bad.png: ") and "re-export" in line for line in out.splitlines())
    assert main(["info", str(broken)]) == 2
    assert main(["info", str(sample_data / "hc18")]) == 0
    capsys.readouterr()
    assert main(["info", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "0 when every input is readable, 3 when some inputs are bad, 2 when none is readable" in text


def test_info_piped_prints_whole_keys_as_tsv(sample_data, tmp_path):
    import shutil

    mixed, _ = _info_folders(sample_data, tmp_path)
    long = "a_series_exported_with_a_very_long_name_" + "0123456789" * 8 + ".png"
    shutil.copy(sample_data / "hc18/images/012_HC.png", mixed / long)
    proc = subprocess.run([sys.executable, "-m", "ulmed.cli", "info", str(mixed)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3
    rows = [line.split("\t") for line in proc.stdout.splitlines() if "\t" in line]
    assert rows[0][:3] == ["key", "kind", "modality"] and len({len(r) for r in rows}) == 1
    assert sorted(r[0] for r in rows[1:]) == sorted([long, "good.png"]) and {r[1] for r in rows[1:]} == {"image"}
    assert "…" not in proc.stdout


def test_info_on_a_terminal_folds_long_keys_instead_of_cutting_them(sample_data, tmp_path, monkeypatch, capsys):
    import shutil

    long = "k" * 30 + "_" + "0123456789" * 6 + ".png"
    shutil.copy(sample_data / "hc18/images/012_HC.png", tmp_path / long)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "1 record(s)" in out
    first_column = "".join(line.split("│")[1].strip() for line in out.splitlines() if line.count("│") > 2)
    assert long in first_column


def test_global_options_may_follow_the_subcommand(sample_data, tmp_path, capsys):
    import json

    hc18 = str(sample_data / "hc18")
    assert main(["protect", "-i", hc18, "-o", str(tmp_path / "a"), "--seed", "1", "-q", "--device", "cpu"]) == 0
    assert capsys.readouterr().err == ""  # -q after the subcommand silenced the closing line
    assert json.loads((tmp_path / "a/manifest.json").read_text())["params"]["seed"] == 1
    assert main(["--seed", "1", "protect", "-i", hc18, "-o", str(tmp_path / "b"), "--seed=2", "-vq"]) == 0
    assert json.loads((tmp_path / "b/manifest.json").read_text())["params"]["seed"] == 2  # the later one wins
    from ulmed.errors import InputError

    with pytest.raises(InputError):
        main(["protect", "-i", str(tmp_path / "nope"), "-o", str(tmp_path / "c"), "--debug"])


def test_an_option_value_that_looks_like_a_global_option_stays_a_value(sample_data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["protect", "-i", str(sample_data / "hc18"), "-o", "--seed", "-q"]) == 0
    assert (tmp_path / "--seed/manifest.json").is_file()


def test_version(capsys):
    import ulmed

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ulmed {ulmed.__version__}\n"


@pytest.mark.parametrize("args, message, hint", [
    (["protect", "--bogus"], "No such option: --bogus", "try 'ulmed protect --help'"),
    (["protect", "-i", "x"], "Missing option '--output'", "try 'ulmed protect --help'"),
    (["protect", "-i", "x", "-o", "y", "--workers", "many"], "Invalid value for '--workers'",
     "try 'ulmed protect --help'"),
    (["frobnicate"], "No such command 'frobnicate'", "try 'ulmed --help'"),
    (["--bogus", "info", "."], "No such option: --bogus", "try 'ulmed --help'"),
])
def test_usage_errors_are_one_line(capsys, args, message, hint):
    assert main(args) == 2
    captured = capsys.readouterr()
    line = _single_error_line(captured.err)
    assert line.startswith("ulmed: error: ") and message in line and hint in line
    assert "╭" not in captured.err and captured.out == ""


def test_help_shows_extras_literally(capsys):
    assert main(["protect", "--help"]) == 0
    out = capsys.readouterr().out
    assert "ulmed[deid]" in out and "ulmed[ray]" in out
    assert main(["--help"]) == 0
    assert "--version" in capsys.readouterr().out


def test_python_dash_m_ulmed(tmp_path):
    import ulmed

    proc = subprocess.run([sys.executable, "-m", "ulmed", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == f"ulmed {ulmed.__version__}"
    proc = subprocess.run([sys.executable, "-m", "ulmed", "info", str(tmp_path), "--nope"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "ulmed: error: No such option: --nope (try 'ulmed info --help')"]

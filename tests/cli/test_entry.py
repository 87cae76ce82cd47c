"""The entry point: every command registered in help order, and every error as one line with its code."""

from __future__ import annotations

import typer

import ulmed.pipeline.protect as protect
from ulmed.cli import app, main
from ulmed.cli.entry import COMMAND_MODULES


def test_every_command_is_registered_in_help_order():
    names = list(typer.main.get_command(app).commands)
    assert names == ["protect", "merge-manifests", "info", "methods", "evaluate", "train-generator", "release",
                     "audit", "verify"]
    assert len(COMMAND_MODULES) == 4


def test_a_bare_ulmed_prints_the_help(capsys):
    main([])
    assert "Commands:" in capsys.readouterr().out


def test_a_usage_error_names_the_help_to_read(capsys):
    assert main(["protect", "--bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ulmed: error: No such option: --bogus") and err.endswith("(try 'ulmed protect --help')")


def test_an_os_error_is_one_line_naming_the_file(sample_data, tmp_path, monkeypatch, capsys):
    def boom(*a, **k):
        raise OSError(28, None, "/o/x.png")

    monkeypatch.setattr(protect, "run_protection", boom)
    assert main(["protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: /o/x.png: No space left on device") and len(err.splitlines()) == 1


def test_an_interrupted_command_exits_130_with_the_resume_hint(sample_data, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(protect, "run_protection", interrupted)
    assert main(["protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "o")]) == 130
    assert capsys.readouterr().err.strip().endswith("rerun the same command to resume")

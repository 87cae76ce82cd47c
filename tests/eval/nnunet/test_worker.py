"""The worker process's own pieces: the nnunetv2 check (exit status and hint) and its command line."""

from __future__ import annotations

import sys

import pytest

from ulmed.eval.nnunet import worker


def test_missing_nnunet_exits_with_the_install_hint(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nnunetv2", None)  # what the import system does for an absent package
    with pytest.raises(SystemExit) as info:
        worker.require_nnunet()
    assert info.value.code == worker.MISSING_EXIT
    assert 'pip install "ulmed[nnunet]"' in capsys.readouterr().err


def test_installed_nnunet_gives_its_version():
    pytest.importorskip("nnunetv2")
    assert worker.require_nnunet()[0].isdigit()


def test_usage_without_a_spec(capsys):
    assert worker.main([]) == 2
    assert "SPEC.json" in capsys.readouterr().err


def test_progress_lines_carry_the_prefix(capsys):
    worker.say("planning")
    assert capsys.readouterr().out == f"{worker.PREFIX} planning\n"

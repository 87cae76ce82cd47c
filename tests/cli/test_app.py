"""The app's global options and output helpers."""

from __future__ import annotations

import logging

from ulmed.cli import main, state
from ulmed.cli.app import progress_bar, say


def test_say_writes_one_plain_line_to_stderr(capsys):
    say("[bold]12 image(s)[/bold] protected")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "[bold]12 image(s)[/bold] protected\n"  # no markup read


def test_progress_bar_passes_items_through_when_not_on_a_terminal():
    assert list(progress_bar(iter([1, 2, 3]), 3, "protecting")) == [1, 2, 3]


def test_global_options_set_the_state_before_or_after_the_subcommand(capsys):
    assert main(["--seed", "5", "-q", "methods"]) == 0
    assert (state.seed, state.verbosity) == (5, -1) and logging.getLogger().level == logging.ERROR
    assert main(["methods", "--device", "cpu", "-v"]) == 0
    assert (state.device, state.seed, state.verbosity) == ("cpu", 0, 1)


def test_version_prints_the_version_and_stops(capsys):
    from ulmed import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ulmed {__version__}\n"


def test_progress_bar_draws_on_a_terminal(monkeypatch):
    """On a terminal the bar is drawn with rich, which is imported for it (a piped run never loads rich)."""
    import io

    from ulmed.cli.app import console

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    fake = Terminal()
    monkeypatch.setattr("sys.stderr", fake)
    monkeypatch.setattr(state, "verbosity", 0)
    console.cache_clear()  # a console made before would write to the real stderr
    try:
        assert list(progress_bar(iter([1, 2, 3]), 3, "protecting")) == [1, 2, 3]
    finally:
        console.cache_clear()
    assert "protecting" in fake.getvalue()


def test_the_cli_loads_without_rich():
    import subprocess
    import sys

    code = "import sys\nimport ulmed.cli\nprint('rich' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

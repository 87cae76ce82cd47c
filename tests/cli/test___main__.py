"""``python -m ulmed.cli`` (what torchrun and the benchmarks run) is the ``ulmed`` command."""

from __future__ import annotations

import subprocess
import sys


def test_python_m_ulmed_cli_runs_the_command_line():
    proc = subprocess.run([sys.executable, "-m", "ulmed.cli", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ulmed ")

"""Global options after the subcommand: moved in front of it, read from the click commands."""

from __future__ import annotations

import pytest
import typer

from ulmed.cli import app
from ulmed.cli_argv import hoist_global_options, option_arities


@pytest.fixture(scope="module")
def group():
    return typer.main.get_command(app)


@pytest.mark.parametrize("words, expected", [
    ("protect -i a -o b --seed 1 -q", "--seed 1 -q protect -i a -o b"),
    ("-v protect -i a --device=cuda:1 -o b -vv", "-v --device=cuda:1 -vv protect -i a -o b"),
    ("protect -o --seed -i a", "protect -o --seed -i a"),  # --seed is the value of -o
    ("protect -o-q -i a", "protect -o-q -i a"),  # a short option with its value attached
    ("protect --set seed=5 -i a -o b --debug", "--debug protect --set seed=5 -i a -o b"),
    ("info x -- --seed 1", "info x -- --seed 1"),  # after --, words are arguments
    ("--seed 2 info x --seed 3", "--seed 2 --seed 3 info x"),  # the later one still wins
    ("--seed protect info x -q", "--seed protect -q info x"),  # 'protect' is --seed's value, info the subcommand
    ("frobnicate -q", "frobnicate -q"),
    ("protect --bogus -q", "-q protect --bogus"),
])
def test_hoisting(group, words, expected):
    assert hoist_global_options(words.split(), group) == expected.split()


def test_arities_come_from_the_commands(group):
    glob = option_arities(group.params)
    assert glob["--seed"] == 1 and glob["-q"] == 0 and glob["-v"] == 0 and glob["--no-debug"] == 0
    protect = option_arities(group.commands["protect"].params)
    assert protect["-o"] == 1 and protect["--set"] == 1 and protect["--strict"] == 0
    assert not set(glob) & set(protect)  # no subcommand shadows a global option today

"""Option values typer does not read itself: --set, --protected, sizes and method options."""

from __future__ import annotations

import pytest

from ulmed.cli.flags import method_options, parse_protected, parse_sets, parse_sizes
from ulmed.errors import ConfigError


def test_sets_are_yaml_scalars_with_dashes_as_underscores():
    assert parse_sets(["rounds=5", "lr=1e-3", "amp=true", "tile-size=[4, 4]", "name=a=b"]) == {
        "rounds": 5, "lr": "1e-3", "amp": True, "tile_size": [4, 4], "name": "a=b"}
    for bad in ("rounds", "=5"):
        with pytest.raises(ConfigError, match="--set needs KEY=VALUE"):
            parse_sets([bad])


def test_protected_copies_are_named_or_named_after_their_folder(tmp_path):
    got = parse_protected([f"lsp={tmp_path / 'a'}", str(tmp_path / "em_run")])
    assert got == {"lsp": tmp_path / "a", "em_run": tmp_path / "em_run"}
    with pytest.raises(ConfigError, match="given twice"):
        parse_protected(["a=x", "a=y"])
    with pytest.raises(ConfigError, match="--protected needs NAME=PATH"):
        parse_protected(["a="])


def test_sizes_take_commas_or_x():
    assert parse_sizes("24,32,24", "--shape") == parse_sizes("24x32x24", "--shape") == (24, 32, 24)
    with pytest.raises(ConfigError, match="--shape needs three integers, got '24,a'"):
        parse_sizes("24,a", "--shape needs three integers")


def test_method_options_flags_win_over_sets_over_the_config():
    got = method_options("lsp", {"tile": 4, "cell": 2}, ["tile=8", "block=3"], {"grid": "native", "fit": None})
    assert got == {"tile": 8, "cell": 2, "block": 3, "grid": "native"}
    with pytest.raises(ConfigError, match="method 'lsp' has no option 'rho'"):
        method_options("lsp", {}, [], {"rho": 0.1})

"""ProtectRequest: the options of a run, normalised and checked before any work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ulmed.errors import ConfigError, InputError
from ulmed.pipeline.engines import Engine
from ulmed.pipeline.protect import protect_path
from ulmed.pipeline.request import DEFAULT_CHUNK_SIZE, ProtectRequest


def test_paths_are_normalised_and_the_defaults_are_protect_paths(sample_data, tmp_path):
    r = ProtectRequest(str(sample_data / "hc18"), tmp_path / "a/../out", masks=str(sample_data / "hc18/masks"))
    assert r.input_path == sample_data / "hc18" and r.output_path == (tmp_path / "out").resolve()
    assert isinstance(r.masks, Path) and r.labels is None
    defaults = ("lsp", "auto", DEFAULT_CHUNK_SIZE, "sampled", "local")
    assert (r.method, r.eps, r.chunk_size, r.metrics, r.engine) == defaults
    assert r.part.suffix == "" and r.engine_config.workers == 1
    assert r.control_dir == r.output_path / ".ulmed"


def test_a_request_is_frozen_and_keeps_its_secrets_out_of_its_repr(sample_data, tmp_path):
    r = ProtectRequest(sample_data, tmp_path / "o", deid_key="a-very-secret-key-0123", key_salt="another-secret-0123")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.seed = 1  # type: ignore[misc]
    assert "secret" not in repr(r)
    r.method_options["rho"] = 0.1  # its own copy: the caller's dict is not shared
    assert ProtectRequest(sample_data, tmp_path / "o", method_options={}).method_options == {}


def test_engine_names_are_looked_up(sample_data, tmp_path):
    r = ProtectRequest(sample_data, tmp_path / "o", engine="RAY", workers=2)
    assert r.engine is Engine.RAY and r.engine_config.name == "ray"


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"part_id": 2, "num_parts": 2}, ConfigError, "--part-id must lie in 0..1"),
        ({"engine": "dask"}, ConfigError, "--engine"),
        ({"workers": 0}, ConfigError, "--workers must be >= 1"),
        ({"ray_address": "auto"}, ConfigError, "--ray-address needs --engine ray"),
        ({"chunk_size": 0}, ConfigError, "--chunk-size must be >= 1"),
        ({"metrics": "fast"}, ConfigError, "--metrics must be one of sampled, full, none"),
    ],
)
def test_bad_options_fail_when_the_request_is_made(sample_data, tmp_path, options, error, message):
    with pytest.raises(error, match=message):
        ProtectRequest(sample_data, tmp_path / "o", **options)
    assert not (tmp_path / "o").exists()


def test_a_missing_input_and_an_unknown_option_fail_before_any_work(tmp_path):
    with pytest.raises(InputError, match="does not exist; check the -i path"):
        ProtectRequest(tmp_path / "missing", tmp_path / "o")
    with pytest.raises(TypeError, match="bogus"):
        protect_path(tmp_path, tmp_path / "o", bogus=1)

"""``--config``: a flat YAML mapping of option names to values, refused with the file named when wrong."""

from __future__ import annotations

import pytest

from ulmed.errors import ConfigError
from ulmed.pipeline.config import load_config

ALLOWED = {"method", "eps", "chunk_size", "options"}


def test_a_flat_mapping_is_read_and_eps_stays_text(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: salm\neps: 0.03\nchunk_size: 10\noptions:\n  rho: 0.1\n")
    got = load_config(path, allowed=ALLOWED)
    assert got == {"method": "salm", "eps": "0.03", "chunk_size": 10, "options": {"rho": 0.1}}
    assert isinstance(got["eps"], str)  # a budget is parsed by Budget, never by YAML as a float


def test_an_empty_file_sets_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_config(path, allowed=ALLOWED) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "config file not found; check --config"),
        ("method: [salm\n", "is not valid YAML"),
        ("- salm\n- lsp\n", "must be a mapping of option names to values"),
        ("method: salm\nbogus: 1\n", "unknown option(s) bogus; allowed: chunk_size, eps, method, options"),
        ("options: 0.1\n", "'options' must be a mapping of method options"),
    ],
)
def test_a_bad_file_is_refused_with_its_name_and_the_fix(tmp_path, text, message):
    path = tmp_path / "run.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, allowed=ALLOWED)
    assert message in str(info.value) and str(path) in str(info.value)

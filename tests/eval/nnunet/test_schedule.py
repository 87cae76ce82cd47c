"""NnunetSchedule: validated on construction, keyed without threads."""

from __future__ import annotations

import pytest

from ulmed.errors import ConfigError
from ulmed.eval.nnunet.schedule import NNUNET_DEFAULT, NnunetSchedule


def test_defaults_and_steps():
    s = NnunetSchedule()
    assert (s.epochs, s.iterations, s.val_iterations, s.device, s.seed) == (10, 25, 2, "cpu", 0)
    assert s.steps == 250 < NNUNET_DEFAULT["epochs"] * NNUNET_DEFAULT["iterations"]
    assert s.to_dict()["mirroring"] is True


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("iterations", -1), ("val_iterations", 0), ("seed", -1), ("threads", 0),
    ("workers", -1), ("epochs", 1.5), ("epochs", True), ("mirroring", "yes"),
])
def test_bad_values_are_config_errors(field, value):
    with pytest.raises(ConfigError, match=field):
        NnunetSchedule(**{field: value})


def test_device_is_a_choice():
    assert NnunetSchedule(device="CUDA").device == "cuda"
    with pytest.raises(ConfigError, match="cpu"):
        NnunetSchedule(device="tpu")


def test_workers_default_by_device():
    assert NnunetSchedule().resolved_workers() == 0
    assert NnunetSchedule(device="cuda").resolved_workers() >= 1
    assert NnunetSchedule(workers=3).resolved_workers() == 3


def test_key_leaves_out_threads_only():
    a, b = NnunetSchedule(threads=1), NnunetSchedule(threads=2)
    assert a.key_dict() == b.key_dict() and "threads" not in a.key_dict()
    assert NnunetSchedule(seed=1).key_dict() != a.key_dict()

"""Every shipped protect config loads and builds its method (a typo in configs/ fails here, not at a user's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulmed.core.augment import AugmentPolicy
from ulmed.pipeline.config import load_config
from ulmed.pipeline.protect import build_method

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "protect").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_protect_config_builds_its_method(path):
    allowed = {"method", "eps", "options", "dicom_encoding", "skip_non_image", "masks", "labels"}
    data = load_config(path, allowed=allowed)
    method = build_method(data["method"], data.get("eps", "8/255"), 0, "cpu", **(data.get("options") or {}))
    params = method.params()
    for key, value in (data.get("options") or {}).items():
        if key == "augment":  # recorded expanded, so the manifest says exactly what was used
            assert params[key] == AugmentPolicy.from_spec(value).to_dict()
        elif key in params:
            assert params[key] == value


def test_there_are_shipped_configs():
    assert {p.stem for p in CONFIGS} >= {"default", "em", "salm", "robust"}

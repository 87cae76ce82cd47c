"""Planning a run: path checks, secrets, the run's identity, and this part's share of the work."""

from __future__ import annotations

import shutil

import pytest

from ulmed.errors import ConfigError, InputError, OutputError
from ulmed.pipeline.plan import DEID_KEY_ENV, check_paths, deidentify_options, discovered_entries, part_work, plan_run
from ulmed.pipeline.request import ProtectRequest


def test_check_paths_refuses_outputs_that_could_touch_the_input(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(b"x")
    for out, message in ((src / "out", "lies inside the input"), (tmp_path, "input lies inside the output"),
                         (src / "a.png", "lies inside the input")):
        with pytest.raises(OutputError, match=message):
            check_paths(src, out, overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="exists and is not a folder"):
        check_paths(src, tmp_path / "file", overwrite=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "other.txt").write_text("x")
    with pytest.raises(OutputError, match="not empty"):
        check_paths(src, busy, overwrite=False)
    check_paths(src, busy, overwrite=True)
    (busy / ".ulmed").mkdir()
    check_paths(src, busy, overwrite=False)  # an earlier run: its identity decides (journal.check_run_identity)


def test_the_deidentification_key_is_checked_and_only_fingerprinted(monkeypatch):
    assert deidentify_options(False, None) == (None, {})
    monkeypatch.delenv(DEID_KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match="at least 16 characters"):
        deidentify_options(True, "short")
    monkeypatch.setenv(DEID_KEY_ENV, "a-secret-deid-key-0123456789")
    options, identity = deidentify_options(True, None)
    assert options.seed == "a-secret-deid-key-0123456789"
    assert len(identity["deid_key_fingerprint"]) == 16 and "secret" not in identity["deid_key_fingerprint"]


def test_a_plan_records_names_and_keeps_paths_out_of_the_identity(sample_data, tmp_path):
    request = ProtectRequest(sample_data / "hc18", tmp_path / "out", method="random", seed=3)
    plan = plan_run(request)
    assert request.output_path.is_dir()
    assert plan.params["input"] == "hc18" and plan.params["seed"] == 3 and plan.params["num_parts"] == 1
    assert "input" not in plan.identity and len(plan.identity["key_salt_fingerprint"]) == 16
    assert plan.write_options.uid_salt == plan.params["uid_salt"] and plan.root == sample_data / "hc18"
    work = part_work(plan.inventory, request)
    assert [u.key for u in work.units] == [u.key for u in work.all_units] and len(work.mine) == 7


def test_the_parts_share_the_units_exactly_once(sample_data, tmp_path):
    request = ProtectRequest(sample_data, tmp_path / "out", method="random")
    inventory = plan_run(request).inventory
    shares = [part_work(inventory, ProtectRequest(sample_data, tmp_path / "out", num_parts=3, part_id=k))
              for k in range(3)]
    keys = sorted(u.key for share in shares for u in share.mine)
    assert keys == sorted(u.key for u in (*shares[0].all_units, *shares[0].all_copies))


def test_bad_inputs_become_failed_entries_or_stop_a_strict_run(sample_data, tmp_path):
    src = tmp_path / "in"
    shutil.copytree(sample_data / "hc18/images", src)
    (src / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a broken link: a bad input
    (tmp_path / "elsewhere").mkdir()
    (src / "folder").symlink_to(tmp_path / "elsewhere")  # a link to a folder: left out on purpose
    request = ProtectRequest(src, tmp_path / "out", method="random")
    plan = plan_run(request)
    entries = discovered_entries(plan.inventory, request)
    assert sorted((e.input, e.status, e.kind) for e in entries) == [("folder", "skipped", "other"),
                                                                    ("gone.png", "failed", "input")]
    strict = ProtectRequest(src, tmp_path / "out", method="random", strict=True)
    with pytest.raises(InputError):
        discovered_entries(plan.inventory, strict)

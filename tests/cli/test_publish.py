"""``ulmed verify``: OK for an intact release, exit code 1 and the file named when one changed."""

from __future__ import annotations

from ulmed.cli import main
from ulmed.pipeline.checksums import write_sums


def test_verify_names_a_changed_file(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/a.png").write_bytes(b"a")
    (tmp_path / "DATACARD.md").write_text("# card\n")
    write_sums(tmp_path)
    assert main(["verify", str(tmp_path)]) == 0
    assert capsys.readouterr().err == "OK: 2 files verified\n"
    (tmp_path / "images/a.png").write_bytes(b"b")
    (tmp_path / "extra.txt").write_text("x")
    assert main(["verify", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == ["changed: images/a.png", "extra: extra.txt"]


def test_release_refuses_an_unknown_set_key_before_any_work(sample_data, tmp_path, capsys):
    assert main(["release", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "r"), "--set", "bogus=1"]) == 2
    assert "has no option 'bogus'" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_audit_writes_its_card_and_prints_one_line(plain_folders, tmp_path, monkeypatch, capsys):
    from ulmed.core.tasks import Task
    from ulmed.pipeline import audit as audit_mod
    from ulmed.pipeline.protect import protect_path

    tiny = audit_mod.AuditPlan(("unet",), ("none",), epochs=1, batch_size=4, size=16)
    monkeypatch.setitem(audit_mod.AUDIT_PLANS, (audit_mod.AuditLevel.QUICK, Task.SEGMENTATION), tiny)
    protect_path(plain_folders["seg2d"], tmp_path / "p", method="random")
    args = ["audit", "-i", str(plain_folders["seg2d"]), "-p", str(tmp_path / "p"), "-o", str(tmp_path / "a")]
    assert main(args) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("audit (quick, ") and "dice ratio to clean: unet/none " in line
    assert line.endswith(str(tmp_path / "a" / "AUDIT.md"))
    assert "| unet | none |" in (tmp_path / "a" / "AUDIT.md").read_text() and (tmp_path / "a" / "audit.json").is_file()
    assert main([*args, "--level", "medium"]) == 2
    assert "audit level" in capsys.readouterr().err

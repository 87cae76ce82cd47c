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

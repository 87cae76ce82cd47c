"""``ulmed info`` and ``ulmed methods``: plain lines when piped, and the exit code of a pre-flight check."""

from __future__ import annotations

from ulmed.cli import main
from ulmed.cli.inspection import closing_lines, print_records


def test_records_are_tab_separated_lines_when_piped(capsys):
    print_records([("a\tb.png", "image"), ("c.png", "im\nage")], ("key", "kind"), "2 record(s)")
    # a tab or newline in a value never splits a row
    assert capsys.readouterr().out == "key\tkind\na b.png\timage\nc.png\tim age\n"


def test_closing_lines_count_copies_then_name_bad_and_skipped_inputs():
    d = {"copied": 4, "non_image_dicom": 1, "bad": [("x.dcm", "truncated")], "skipped": [("DICOMDIR", "index")]}
    assert closing_lines(d) == ["4 file(s) would be copied unchanged (1 non-image DICOM)", "bad: x.dcm: truncated",
                                "skipped: DICOMDIR: index"]


def test_info_exits_3_when_some_inputs_are_bad(sample_data, tmp_path, capsys):
    import shutil

    shutil.copytree(sample_data / "hc18/images", tmp_path / "in")
    (tmp_path / "in/gone.png").symlink_to(tmp_path / "nowhere.png")
    assert main(["info", str(tmp_path / "in")]) == 3
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("key\tkind") and "bad: gone.png:" in out


def test_methods_lists_every_method_on_one_line_each(capsys):
    assert main(["methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"none", "random", "lsp", "em", "salm", "unseg"} <= set(names)

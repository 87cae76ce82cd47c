"""``ulmed info``'s data: one row per record, the inputs that would be copied or are bad, an exit code."""

from __future__ import annotations

import shutil

from ulmed.pipeline.info import COLUMNS, describe, exit_code, table_rows


def test_describe_lists_each_image_with_its_mask(sample_data):
    d = describe(sample_data / "hc18")
    keys = sorted(r["key"] for r in d["records"])
    assert keys == ["images/012_HC.png", "images/015_HC.png", "images/017_HC.png"]
    assert {r["target"] for r in d["records"]} == {"map"} and {r["kind"] for r in d["records"]} == {"image"}
    assert d["copied"] == 4 and d["bad"] == []  # three masks and index.csv are copied unchanged
    rows = table_rows(d)
    assert len(rows) == 3 and all(len(row) == len(COLUMNS) for row in rows)
    assert exit_code(d) == 0


def test_a_bad_input_is_listed_and_sets_the_exit_code(sample_data, tmp_path):
    src = tmp_path / "imgs"
    shutil.copytree(sample_data / "hc18/images", src)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    d = describe(src)
    assert [key for key, _ in d["bad"]] == ["broken.png"]
    assert exit_code(d) == 3  # some readable: the others can still be protected
    assert exit_code({"bad": [("x", "why")], "records": []}) == 2

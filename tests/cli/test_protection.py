"""``ulmed protect`` builds the request from flags and a config; the summary line and its exit codes."""

from __future__ import annotations

import pytest
import typer

import ulmed.pipeline.protect as protect
from ulmed.cli import main
from ulmed.pipeline.manifest import Entry, Manifest


@pytest.fixture
def requests(monkeypatch):
    """Capture the requests ``ulmed protect`` makes instead of running them."""
    made = []

    def fake_run(request, progress):
        made.append(request)
        return Manifest(params={}, entries=[Entry("a.png", "written", output="a.png", record="a.png", kind="image",
                                                  metrics={"psnr": 41.23})])

    monkeypatch.setattr(protect, "run_protection", fake_run)
    return made


def test_flags_and_a_config_make_one_request(sample_data, tmp_path, requests, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("method: salm\neps: 4/255\nchunk_size: 50\noptions:\n  rounds: 2\n")
    args = ["--seed", "3", "protect", "-i", str(sample_data / "hc18"), "-o", str(tmp_path / "o"), "--config",
            str(config), "--eps", "2/255", "--rho", "0.2", "--set", "lr=1e-3", "--num-parts", "2", "--part-id", "1"]
    assert main(args) == 0
    (r,) = requests
    assert (r.method, r.eps, r.chunk_size, r.seed) == ("salm", "2/255", 50, 3)  # the flag wins over the config
    assert r.method_options == {"rounds": 2, "lr": 0.001, "rho": 0.2}
    assert (r.part_id, r.num_parts, r.output_path) == (1, 2, (tmp_path / "o").resolve())
    assert "1 image(s) protected (1 file(s) written)" in capsys.readouterr().err


def test_a_bad_option_stops_before_the_run(sample_data, tmp_path, requests, capsys):
    assert main(["protect", "-i", str(sample_data), "-o", str(tmp_path / "o"), "--metrics", "fast"]) == 2
    assert requests == [] and "--metrics must be one of" in capsys.readouterr().err


def test_failed_inputs_are_listed_and_set_the_exit_code(tmp_path, capsys):
    from ulmed.cli.protection import summary_line

    ok = Entry("a.png", "written", output="a.png", record="a.png", kind="image")
    bad = Entry("b.png", "failed", reason="truncated")
    with pytest.raises(typer.Exit) as info:
        summary_line(Manifest(params={}, entries=[ok, bad]), 1.0, tmp_path)
    assert info.value.exit_code == 3  # some records were protected
    with pytest.raises(typer.Exit) as info:
        summary_line(Manifest(params={}, entries=[bad]), 1.0, tmp_path)
    assert info.value.exit_code == 2  # none was
    err = capsys.readouterr().err
    assert "1 image(s) protected (1 file(s) written), 0 copied, 0 skipped, 1 failed" in err
    assert err.count("failed b.png: truncated") == 2

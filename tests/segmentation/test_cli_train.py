import torch

from ulmed.cli import main


def test_train_generator_cli_writes_a_checkpoint_with_its_config(sample_data, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("builder: tiny\nimg_size: 32\nrounds: 1\nbackbone_epochs: 1\nbatch_size: 4\n"
                   "split: null\nthreads: 1\n")
    out = tmp_path / "models" / "g.pt"
    src = sample_data / "hc18"
    assert main(["train-generator", "--data", str(src / "images"), "--masks", str(src / "masks"), "--config", str(cfg),
                 "--out", str(out)]) == 0
    assert "generator trained on 3 image(s)" in capsys.readouterr().err
    state = torch.load(out, weights_only=True)
    assert state["config"]["data"]["count"] == 3
    assert state["config"]["steps"] == {"backbone": 1, "surrogate": 1, "generator": 1}
    assert [h["stage"] for h in state["history"]] == ["backbone", "surrogate", "generator"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("builder: vit_b\n")
    assert main(["train-generator", "--data", str(src / "images"), "--masks", str(src / "masks"), "--config", str(bad),
                 "--out", str(out)]) == 2
    assert "sam_vit_b_01ec64.pth" in capsys.readouterr().err

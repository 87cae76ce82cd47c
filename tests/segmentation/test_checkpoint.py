import pytest
import torch

from ulmed.errors import ConfigError, InputError
from ulmed.segmentation.checkpoint import FORMAT, load_generator, save_generator
from ulmed.segmentation.prompts import make_prompt


def test_save_load_round_trip_with_weights_only(trainer, batch, config, tmp_path):
    images, masks = batch
    trainer.generator_step(images, masks, make_prompt(masks, "mask"))
    path = save_generator(trainer.generator, tmp_path / "g.pt", builder="tiny", config=config.to_dict(),
                          history=[{"round": 1, "stage": "generator", "loss": 1.0}])
    raw = torch.load(path, weights_only=True)  # plain types only
    assert raw["format"] == FORMAT and raw["config"]["img_size"] == 32 and raw["config"]["label_modification"] is True
    assert raw["spec"]["img_size"] == 32 and raw["sam"] is not None
    loaded, state = load_generator(path)
    assert state["history"][0]["stage"] == "generator"
    assert all(not p.requires_grad for p in loaded.parameters())
    prompt = make_prompt(masks, "box")
    with torch.no_grad():
        assert torch.allclose(loaded(images, prompt), trainer.generator.eval()(images, prompt), atol=1e-6)
    assert not list(tmp_path.glob(".*part*"))  # written atomically


def test_bad_checkpoints_are_clear_errors(trainer, tmp_path):
    with pytest.raises(ConfigError, match="train one with"):
        load_generator(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(InputError, match="not an ulmed UnSeg generator"):
        load_generator(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read"):
        load_generator(junk)
    no_sam = save_generator(trainer.generator, tmp_path / "vit.pt", builder="tiny", include_sam=False)
    with pytest.raises(ConfigError, match="sam_checkpoint"):
        load_generator(no_sam)

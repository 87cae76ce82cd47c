import pytest
import torch

from ulmed.errors import ConfigError, InputError
from ulmed.segmentation.builders import (
    SAM_SPECS,
    SamSpec,
    build_named_sam,
    load_sam_weights,
    spec_for,
)


def test_registry_holds_tiny_and_sams_configs():
    assert SAM_SPECS.names() == ["tiny", "vit_b", "vit_h", "vit_l"]
    b = SAM_SPECS.get("vit_b")
    assert (b.img_size, b.patch_size, b.embed_dim, b.depth, b.global_attn_indexes) == (1024, 16, 768, 12, (2, 5, 8, 11))
    assert SAM_SPECS.get("vit_h").embed_dim == 1280 and SAM_SPECS.get("vit_l").depth == 24
    with pytest.raises(ConfigError, match="unknown SAM builder"):
        SAM_SPECS.get("vit_x")


def test_vit_builders_need_a_local_checkpoint_and_say_where(tmp_path):
    with pytest.raises(ConfigError, match="sam_vit_b_01ec64.pth"):
        build_named_sam("vit_b", require_checkpoint=True)
    with pytest.raises(ConfigError, match="never downloads"):
        build_named_sam("vit_l", checkpoint=tmp_path / "sam_vit_l_0b3195.pth")


def test_tiny_weights_round_trip_through_a_local_file(tmp_path):
    torch.manual_seed(0)
    sam = build_named_sam("tiny", img_size=32)
    path = tmp_path / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    other = load_sam_weights(build_named_sam("tiny", img_size=32), path, "tiny")
    for (k, a), (_, b) in zip(sam.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    wrong = tmp_path / "wrong.pth"
    torch.save(build_named_sam("tiny", img_size=64).state_dict(), wrong)
    with pytest.raises(InputError, match="does not fit"):
        load_sam_weights(build_named_sam("tiny", img_size=32), wrong, "tiny")


def test_specs_validate():
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        SamSpec(img_size=30, patch_size=4, embed_dim=64, depth=2, num_heads=4)
    with pytest.raises(ConfigError, match="multiple of patch_size"):
        spec_for("tiny", 30)
    assert SamSpec.from_dict(SAM_SPECS.get("vit_b").to_dict()) == SAM_SPECS.get("vit_b")

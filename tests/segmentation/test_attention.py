"""The fused attention subclasses give SAM's results, keep its parameters and train."""

from __future__ import annotations

import copy

import pytest
import torch
from segment_anything.modeling import image_encoder, transformer

from ulmed.segmentation.attention import FusedEncoderAttention, FusedTokenAttention, fuse_attention
from ulmed.segmentation.builders import SAM_SPECS, build_sam


@pytest.mark.parametrize("rel_pos", [False, True])
def test_encoder_attention_matches_sam(rel_pos: bool) -> None:
    torch.manual_seed(0)
    sam_attn = image_encoder.Attention(32, num_heads=4, use_rel_pos=rel_pos, input_size=(6, 5))
    if rel_pos:  # SAM initialises them to zero; random values make the bias matter
        torch.nn.init.normal_(sam_attn.rel_pos_h)
        torch.nn.init.normal_(sam_attn.rel_pos_w)
    fused = fuse_attention(copy.deepcopy(sam_attn))
    assert type(fused) is FusedEncoderAttention
    x = torch.randn(3, 6, 5, 32)
    torch.testing.assert_close(fused(x), sam_attn(x), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # --set precision=bf16: the bias follows the queries' dtype
        low = fused(x)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), sam_attn(x), rtol=0.1, atol=0.1)


def test_token_attention_matches_sam_with_downsampling() -> None:
    torch.manual_seed(1)
    sam_attn = transformer.Attention(32, num_heads=4, downsample_rate=2)
    fused = fuse_attention(copy.deepcopy(sam_attn))
    assert type(fused) is FusedTokenAttention
    q, k = torch.randn(2, 7, 32), torch.randn(2, 40, 32)
    torch.testing.assert_close(fused(q, k, k), sam_attn(q, k, k), rtol=1e-5, atol=1e-5)


def test_built_sam_is_fused_and_keeps_its_state_dict() -> None:
    sam = build_sam(SAM_SPECS.get("tiny"))
    kinds = {type(m) for m in sam.modules()}
    assert image_encoder.Attention not in kinds and transformer.Attention not in kinds
    assert {FusedEncoderAttention, FusedTokenAttention} <= kinds
    unfused = copy.deepcopy(sam)
    for m in unfused.modules():
        if isinstance(m, FusedEncoderAttention):
            m.__class__ = image_encoder.Attention
        elif isinstance(m, FusedTokenAttention):
            m.__class__ = transformer.Attention
    assert sam.state_dict().keys() == unfused.state_dict().keys()
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        torch.testing.assert_close(sam.image_encoder(x), unfused.image_encoder(x), rtol=1e-4, atol=1e-4)


def test_fused_attention_trains() -> None:
    torch.manual_seed(2)
    sam_attn = image_encoder.Attention(16, num_heads=2)
    fused = fuse_attention(copy.deepcopy(sam_attn))
    x = torch.randn(2, 4, 4, 16)
    fused(x).square().sum().backward()
    sam_attn(x).square().sum().backward()
    for a, b in zip(fused.parameters(), sam_attn.parameters()):
        assert a.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)


def test_other_modules_are_left_alone() -> None:
    class Own(transformer.Attention):
        pass

    own = torch.nn.Sequential(Own(16, 2), transformer.Attention(16, 2))
    fuse_attention(own)
    assert type(own[0]) is Own and type(own[1]) is FusedTokenAttention

"""SAM's attention layers on PyTorch's fused kernel (``F.scaled_dot_product_attention``).

segment-anything writes attention out: ``q @ k^T``, a softmax over the whole
``(batch x heads, tokens, tokens)`` matrix, then ``@ v``. On a CPU those three steps are
memory-bound and took 43 % of the shipped generator's forward pass (64 x 64 input, 256
tokens); the fused kernel computes the same attention block by block without holding the
matrix, which makes the pass about 1.6x faster (docs/results.md, "UnSeg against em: the fused
attention, and the images' size"). The results agree with SAM's to float rounding (at most
5e-5 on the generator's tanh map).

:func:`fuse_attention` re-types the attention modules of a model in place. The subclasses
add no parameters and no buffers, so state dicts, checkpoints and ``isinstance`` checks are
unchanged, and training (autograd) works as before.
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from segment_anything.modeling import image_encoder, transformer
from torch import nn


class FusedEncoderAttention(image_encoder.Attention):
    """The ViT image encoder's attention (relative positions included) on the fused kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, C)`` -> ``(B, H, W, C)``, as :class:`segment_anything.modeling.image_encoder.Attention`."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, tokens, head_dim)
        bias = None
        if self.use_rel_pos:  # SAM's own function, on a zero matrix: the additive bias it would add
            flat_q = q.reshape(b * self.num_heads, h * w, -1)
            zero = flat_q.new_zeros(b * self.num_heads, h * w, h * w)
            bias = image_encoder.add_decomposed_rel_pos(zero, flat_q, self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            bias = bias.view(b, self.num_heads, h * w, h * w)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.view(b, self.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1))


class FusedTokenAttention(transformer.Attention):
    """The two-way transformer's attention (tokens to image, image to tokens) on the fused kernel."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """As :class:`segment_anything.modeling.transformer.Attention`: ``(B, N, C)`` queries -> ``(B, N, C)``."""
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        return self.out_proj(self._recombine_heads(F.scaled_dot_product_attention(q, k, v)))


M = TypeVar("M", bound=nn.Module)

#: SAM's class -> its fused subclass.
_FUSED: dict[type[nn.Module], type[nn.Module]] = {
    image_encoder.Attention: FusedEncoderAttention,
    transformer.Attention: FusedTokenAttention,
}


def fuse_attention(model: M) -> M:
    """Re-type every SAM attention module of ``model`` to its fused subclass, in place; returns ``model``.

    Modules of other types (a subclass someone else made included) are left as they are.
    """
    for module in model.modules():
        fused = _FUSED.get(type(module))
        if fused is not None:
            module.__class__ = fused
    return model

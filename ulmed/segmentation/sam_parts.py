"""Calling SAM's parts with gradients: ``Sam.forward`` runs under ``torch.no_grad()``.

:func:`encode_image` runs the ViT image encoder block by block and also returns the output
of one early block (HQ-SAM's "early feature"); :class:`SamSegmenter` is a promptable
segmenter (image + prompt -> mask logits) built from the parts, used as the bilevel
surrogate and for the backbone warm-up of the ``tiny`` generator.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn

from ulmed.segmentation.prompts import Prompt


def preprocess(sam: Sam, images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in [0, 1] -> SAM's normalised input at its ``img_size`` (resized if needed)."""
    size = sam.image_encoder.img_size
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return (images * 255.0 - sam.pixel_mean) / sam.pixel_std


def encode_image(sam: Sam, x: torch.Tensor, early_block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embedding ``(B, prompt_dim, e, e)`` and the early ViT feature ``(B, e, e, embed_dim)``."""
    enc = sam.image_encoder
    x = enc.patch_embed(x)
    if enc.pos_embed is not None:
        x = x + enc.pos_embed
    early = x
    for i, block in enumerate(enc.blocks):
        x = block(x)
        if i == early_block:
            early = x
    return enc.neck(x.permute(0, 3, 1, 2)), early


def run_decoder(sam: Sam, emb: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                extra_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The two-way transformer of SAM's mask decoder, batched: one prompt per image.

    (``MaskDecoder.predict_masks`` repeats each image embedding once per prompt, which is
    meant for many prompts on one image.)

    Args:
        sam: The model.
        emb: Image embeddings ``(B, C, e, e)``.
        sparse: Sparse prompt embeddings ``(B, N, C)``.
        dense: Dense prompt embeddings ``(B, C, e, e)``.
        extra_tokens: ``(T, C)`` tokens appended after SAM's IoU and mask tokens (the
            noise tokens of the generator).

    Returns:
        The output tokens ``(B, 1 + masks + T + N, C)`` and the image features ``(B, C, e, e)``.
    """
    dec = sam.mask_decoder
    parts = [dec.iou_token.weight, dec.mask_tokens.weight] + ([extra_tokens] if extra_tokens is not None else [])
    tokens = torch.cat(parts, 0).unsqueeze(0).expand(emb.shape[0], -1, -1)
    tokens = torch.cat([tokens, sparse], 1)
    b, c, h, w = emb.shape
    pos = sam.prompt_encoder.get_dense_pe().expand(b, -1, -1, -1)
    hs, src = dec.transformer(emb + dense, pos, tokens)
    return hs, src.transpose(1, 2).reshape(b, c, h, w)


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus soft Dice (UnSeg's mask loss), averaged over the batch."""
    target = target.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits).flatten(1)
    tgt = target.flatten(1)
    dice = 1 - (2 * (prob * tgt).sum(1) + 1) / (prob.sum(1) + tgt.sum(1) + 1)
    return bce + dice.mean()


class SamSegmenter(nn.Module):
    """A promptable segmenter from SAM's parts (single-mask output), differentiable end to end.

    Args:
        sam: The SAM-architecture model (random init for a surrogate).
    """

    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, images: torch.Tensor, prompt: Prompt) -> torch.Tensor:
        """Mask logits ``(B, 1, H, W)`` at the input's resolution for ``images`` in [0, 1]."""
        sam = self.sam
        emb = sam.image_encoder(preprocess(sam, images))
        sparse, dense = prompt.encode(sam)
        hs, src = run_decoder(sam, emb, sparse, dense)
        dec = sam.mask_decoder
        up = dec.output_upscaling(src)
        hyper = dec.output_hypernetworks_mlps[0](hs[:, 1])  # the single-mask token
        low = (hyper.unsqueeze(1) @ up.flatten(2)).view(up.shape[0], 1, *up.shape[-2:])
        return F.interpolate(low, size=images.shape[-2:], mode="bilinear", align_corners=False)

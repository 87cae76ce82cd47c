"""The UnSeg noise generator: frozen SAM parts plus a small HQ-SAM-style noise head.

Forward pass (one per batch of images):

1. SAM's image encoder gives the image embedding and an early ViT feature;
2. the prompt encoder embeds the prompt (mask, box or points);
3. SAM's two-way transformer runs over its own IoU and mask tokens, ``C`` extra trainable
   *noise tokens* and the prompt tokens;
4. as in HQ-SAM, the image features are upscaled by SAM's own (frozen) upscaler, refined by
   a small trainable conv block and fused with the upscaled image embedding and the
   upscaled early feature;
5. noise channel ``c`` is the product of MLP_c(noise token c) with the fused features: a
   ``(B, C, 4e, 4e)`` map, upsampled to the image and squashed by tanh.

:func:`scale_noise` turns the tanh map into a perturbation: ``eps`` inside the prompt's
region, ``eps_bg`` outside. Only the noise head trains; SAM's parts stay frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from ulmed.errors import ConfigError
from ulmed.segmentation.builders import SamSpec, build_sam
from ulmed.segmentation.prompts import Prompt
from ulmed.segmentation.sam_parts import encode_image, preprocess, run_decoder


def _upscale(cin: int, mid: int, cout: int) -> nn.Sequential:
    """Two stride-2 transposed convolutions: x4 in resolution."""
    return nn.Sequential(
        nn.ConvTranspose2d(cin, mid, 2, 2), LayerNorm2d(mid), nn.GELU(), nn.ConvTranspose2d(mid, cout, 2, 2)
    )


class NoiseHead(nn.Module):
    """The trainable part: noise tokens, their MLPs and the early-feature fusion.

    Args:
        spec: The SAM architecture it attaches to.
        channels: Noise channels (one token each).
    """

    def __init__(self, spec: SamSpec, channels: int) -> None:
        super().__init__()
        d = spec.prompt_dim
        self.noise_tokens = nn.Embedding(channels, d)
        self.mlps = nn.ModuleList(MLP(d, d, d // 8, 3) for _ in range(channels))
        self.compress_early = _upscale(spec.embed_dim, d, d // 8)
        self.embedding_encoder = _upscale(d, d // 4, d // 8)
        self.refine = nn.Sequential(nn.Conv2d(d // 8, d // 4, 3, padding=1), LayerNorm2d(d // 4), nn.GELU(),
                                    nn.Conv2d(d // 4, d // 8, 3, padding=1))


class UnsegGenerator(nn.Module):
    """Image + prompt -> a tanh noise map, from frozen SAM parts and a trainable :class:`NoiseHead`.

    Args:
        spec: SAM architecture sizes.
        channels: Noise channels (3 for SAM's RGB input; grey images take their mean).
        sam: The SAM model (pretrained); a random one of ``spec`` when None.
    """

    def __init__(self, spec: SamSpec, channels: int = 3, sam: Sam | None = None) -> None:
        super().__init__()
        if channels < 1:
            raise ConfigError(f"noise channels must be >= 1, got {channels}")
        self.spec, self.channels = spec, channels
        self.sam = sam if sam is not None else build_sam(spec)
        if self.sam.image_encoder.img_size != spec.img_size:
            raise ConfigError(f"the SAM model takes {self.sam.image_encoder.img_size} pixels "
                              f"but the spec says {spec.img_size}")
        self.head = NoiseHead(spec, channels)
        self.frozen = False

    def freeze_backbone(self) -> None:
        """Freeze SAM's parts (no gradients, eval mode); only the noise head trains after this."""
        for p in self.sam.parameters():
            p.requires_grad_(False)
        self.sam.eval()
        self.frozen = True

    def train(self, mode: bool = True) -> UnsegGenerator:
        """Train mode for the head; a frozen SAM stays in eval mode."""
        super().train(mode)
        if self.frozen:
            self.sam.eval()
        return self

    def forward(self, images: torch.Tensor, prompt: Prompt) -> torch.Tensor:
        """Noise map in [-1, 1], ``(B, channels, H, W)`` at the input's resolution.

        Args:
            images: ``(B, 3, H, W)`` in [0, 1] (resized to the model's input size inside).
            prompt: One prompt per image.
        """
        sam, head = self.sam, self.head
        emb, early = encode_image(sam, preprocess(sam, images), self.spec.early_block)
        sparse, dense = prompt.encode(sam)
        hs, src = run_decoder(sam, emb, sparse, dense, head.noise_tokens.weight)
        first = 1 + sam.mask_decoder.num_mask_tokens
        features = (head.refine(sam.mask_decoder.output_upscaling(src)) + head.embedding_encoder(emb)
                    + head.compress_early(early.permute(0, 3, 1, 2)))
        hyper = torch.stack([mlp(hs[:, first + c]) for c, mlp in enumerate(head.mlps)], 1)  # (B, C, d/8)
        b, k, h, w = features.shape
        noise = (hyper @ features.view(b, k, h * w)).view(b, self.channels, h, w)
        noise = F.interpolate(noise, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return torch.tanh(noise)


def match_channels(raw: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The noise that protect applies to ``images``: the channel mean for grey images.

    A grey image is given to SAM as three equal channels, and ``--method unseg`` adds the
    mean of the noise channels to it. Training must see the same noise, or the generator can
    hide its signal in colour differences that the mean cancels.

    Args:
        raw: ``(B, C, H, W)`` noise map.
        images: ``(B, 3, H, W)`` images the noise is for (grey when all channels are equal).
    """
    grey = (images.amax(1) == images.amin(1)).flatten(1).all(1).view(-1, 1, 1, 1)
    mean = raw.mean(1, keepdim=True).expand_as(images)
    if raw.shape[1] != images.shape[1]:
        return mean
    return torch.where(grey, mean, raw)


def scale_noise(raw: torch.Tensor, region: torch.Tensor, eps: float | torch.Tensor,
                eps_bg: float | torch.Tensor) -> torch.Tensor:
    """``raw`` (in [-1, 1]) scaled to ``eps`` inside ``region`` (``(B, 1, H, W)`` in [0, 1]) and ``eps_bg`` outside."""
    eps_t = torch.as_tensor(eps, dtype=raw.dtype, device=raw.device).reshape(-1, 1, 1, 1)
    bg_t = torch.as_tensor(eps_bg, dtype=raw.dtype, device=raw.device).reshape(-1, 1, 1, 1)
    return raw * (bg_t + (eps_t - bg_t) * region.to(raw.dtype))

"""SAM-architecture builders by name: ``tiny`` (trains on a CPU), ``vit_b``, ``vit_l``, ``vit_h``.

Every builder composes the ``segment_anything.modeling`` classes (image encoder, prompt
encoder, mask decoder with its two-way transformer) into a
:class:`segment_anything.modeling.Sam` from a :class:`SamSpec`. The ``vit_*`` specs are
SAM's published configurations (1024 x 1024 input, 16-pixel patches, 256-wide prompt space);
their weights come only from a local file (``sam_vit_b_01ec64.pth`` ...) read with
``torch.load(..., weights_only=True)``; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from ulmed.core.registry import Registry
from ulmed.errors import ConfigError, InputError
from ulmed.segmentation.attention import fuse_attention

#: Where the official SAM checkpoints are published (the user downloads them; ulmed never does).
SAM_CHECKPOINT_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
#: Official file names, for the error message that says what to fetch.
SAM_CHECKPOINT_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth", "vit_l": "sam_vit_l_0b3195.pth", "vit_h": "sam_vit_h_4b8939.pth"
}


@dataclass(frozen=True)
class SamSpec:
    """The sizes of one SAM architecture.

    Args:
        img_size: Square input side in pixels (a multiple of ``patch_size``).
        patch_size: ViT patch side; the image embedding is ``img_size / patch_size`` wide.
        embed_dim: Width of the ViT image encoder.
        depth: Number of ViT blocks.
        num_heads: Attention heads of the ViT.
        global_attn_indexes: Blocks with global attention (the others use windows).
        window_size: Window side of windowed attention (0: every block global).
        use_rel_pos: Relative position terms in attention (SAM uses them).
        prompt_dim: Width of the prompt space (encoder neck output, decoder tokens).
        decoder_depth: Layers of the two-way transformer.
        decoder_heads: Attention heads of the two-way transformer.
        decoder_mlp_dim: MLP width of the two-way transformer.
        mask_in_chans: Hidden channels of the dense (mask) prompt encoder.
        early_block: Index of the ViT block whose output is the "early" feature that the
            HQ-style noise head fuses.
    """

    img_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...] = ()
    window_size: int = 0
    use_rel_pos: bool = False
    prompt_dim: int = 256
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    mask_in_chans: int = 16
    early_block: int = 0

    def __post_init__(self) -> None:
        if self.img_size < 1 or self.patch_size < 1 or self.img_size % self.patch_size:
            raise ConfigError(f"img_size must be a positive multiple of patch_size, "
                              f"got {self.img_size} and {self.patch_size}")
        if self.embed_dim % self.num_heads or self.prompt_dim % self.decoder_heads:
            raise ConfigError("embed_dim and prompt_dim must be divisible by their numbers of heads")
        if self.prompt_dim % 8 or self.mask_in_chans % 4:
            raise ConfigError(f"prompt_dim must be a multiple of 8 and mask_in_chans of 4, "
                              f"got {self.prompt_dim}, {self.mask_in_chans}")
        if not 0 <= self.early_block < self.depth:
            raise ConfigError(f"early_block must lie in [0, {self.depth}), got {self.early_block}")

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding (tokens per row)."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists, ints), so a checkpoint loads with ``weights_only=True``."""
        d = asdict(self)
        d["global_attn_indexes"] = list(self.global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "global_attn_indexes": tuple(data.get("global_attn_indexes", ()))})


#: Architecture specs by builder name (``tiny`` is ulmed's; the others are SAM's).
SAM_SPECS: Registry[SamSpec] = Registry("SAM builder")
SAM_SPECS.register("tiny")(SamSpec(img_size=64, patch_size=4, embed_dim=64, depth=2, num_heads=4, prompt_dim=64,
                                   decoder_depth=2, decoder_heads=4, decoder_mlp_dim=256, mask_in_chans=16))
SAM_SPECS.register("vit_b")(SamSpec(1024, 16, 768, 12, 12, (2, 5, 8, 11), 14, True))
SAM_SPECS.register("vit_l")(SamSpec(1024, 16, 1024, 24, 16, (5, 11, 17, 23), 14, True))
SAM_SPECS.register("vit_h")(SamSpec(1024, 16, 1280, 32, 16, (7, 15, 23, 31), 14, True))


def spec_for(name: str, img_size: int | None = None) -> SamSpec:
    """The spec of builder ``name``, optionally at another input size (for random-init models).

    Raises:
        ConfigError: Unknown name, or a size that is not a multiple of the patch.
    """
    spec = SAM_SPECS.get(name)
    return spec if img_size is None or img_size == spec.img_size else replace(spec, img_size=int(img_size))


def build_sam(spec: SamSpec) -> Sam:
    """A randomly initialised SAM of the given sizes, in eval mode, its attention on the fused kernel.

    (:func:`ulmed.segmentation.attention.fuse_attention`: same parameters, same results to
    float rounding, faster.)
    """
    side = spec.embedding_size
    encoder = ImageEncoderViT(
        img_size=spec.img_size, patch_size=spec.patch_size, in_chans=3, embed_dim=spec.embed_dim, depth=spec.depth,
        num_heads=spec.num_heads, mlp_ratio=4, out_chans=spec.prompt_dim, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=spec.use_rel_pos,
        window_size=spec.window_size, global_attn_indexes=spec.global_attn_indexes,
    )
    prompt = PromptEncoder(embed_dim=spec.prompt_dim, image_embedding_size=(side, side),
                           input_image_size=(spec.img_size, spec.img_size), mask_in_chans=spec.mask_in_chans)
    decoder = MaskDecoder(
        transformer_dim=spec.prompt_dim, num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=spec.prompt_dim,
        transformer=TwoWayTransformer(depth=spec.decoder_depth, embedding_dim=spec.prompt_dim,
                                      num_heads=spec.decoder_heads, mlp_dim=spec.decoder_mlp_dim),
    )
    return fuse_attention(Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval())


def load_sam_weights(sam: Sam, checkpoint: str | Path, name: str) -> Sam:
    """Load a local SAM checkpoint into ``sam`` (``weights_only=True``).

    Raises:
        ConfigError: The file is missing (the message says which file to fetch and where to put it).
        InputError: The file is not a SAM state dict of this architecture.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        fname = SAM_CHECKPOINT_FILES.get(name, "the SAM checkpoint")
        raise ConfigError(
            f"SAM checkpoint not found; download {fname} from {SAM_CHECKPOINT_URL} on a machine with network, "
            f"copy it here and pass --sam-checkpoint {path} (ulmed never downloads weights)", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle/zip errors of many kinds
        raise InputError(f"cannot read as a SAM checkpoint ({exc.__class__.__name__}); "
                         "use an official sam_vit_*.pth file", path) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        sam.load_state_dict(state)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"does not fit the {name} architecture ({str(exc).splitlines()[0]}); "
                         "pass the matching builder", path) from None
    return sam


def build_named_sam(name: str, img_size: int | None = None, checkpoint: str | Path | None = None,
                    require_checkpoint: bool = False) -> Sam:
    """Build SAM ``name`` and load a local checkpoint when given.

    Args:
        name: ``tiny``, ``vit_b``, ``vit_l`` or ``vit_h``.
        img_size: Input side when it differs from the builder's (random-init models only).
        checkpoint: Local SAM checkpoint file.
        require_checkpoint: Refuse to return random weights for the ``vit_*`` builders
            (a frozen random ViT-H is of no use as a generator backbone).

    Raises:
        ConfigError: Unknown name, a missing checkpoint, or a checkpoint with a changed input size.
    """
    spec = spec_for(name, img_size)
    if checkpoint is None and require_checkpoint and name != "tiny":
        fname = SAM_CHECKPOINT_FILES[name]
        raise ConfigError(f"builder {name!r} needs SAM's pretrained weights: download {fname} from "
                          f"{SAM_CHECKPOINT_URL}, put it on this machine and pass --sam-checkpoint PATH "
                          "(nothing is downloaded at run time)")
    if checkpoint is not None and spec != SAM_SPECS.get(name):
        raise ConfigError(f"a SAM checkpoint fixes the input size of {name!r} to {SAM_SPECS.get(name).img_size}; "
                          "drop img_size")
    sam = build_sam(spec)
    return load_sam_weights(sam, checkpoint, name) if checkpoint is not None else sam

"""Prompts for SAM-architecture models, made from masks: ``mask``, ``box`` or ``points``.

A :class:`Prompt` keeps its geometry in normalised coordinates (x, y in [0, 1]) and its
mask at the image's resolution, so the same prompt can be encoded by two models of
different input sizes (a 1024-pixel generator and a 64-pixel surrogate).
:func:`make_prompt` derives one prompt per image from binary masks, optionally noisy (the
random box jitter, point sampling and mask dilation/erosion used in training).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from ulmed.choices import StrEnum, look_up, names
from ulmed.errors import ConfigError


class PromptKind(StrEnum):
    """The prompts :func:`make_prompt` derives from a mask."""

    #: The (optionally dilated or eroded) mask itself.
    MASK = "mask"
    #: The mask's bounding box (optionally jittered).
    BOX = "box"
    #: Foreground points drawn from the mask.
    POINTS = "points"


#: The prompt kind values, in definition order.
PROMPT_KINDS = names(PromptKind)
#: The kind of :func:`no_prompt`: SAM's "no prompt" embeddings (a plain segmenter's input).
NO_PROMPT = "none"
#: SAM reads a mask prompt as low-resolution logits; a binary mask becomes +-MASK_LOGIT.
MASK_LOGIT = 8.0


@dataclass
class Prompt:
    """One prompt per image of a batch.

    Args:
        kind: ``mask``, ``box``, ``points`` or ``none`` (see :func:`no_prompt`).
        boxes: ``(B, 4)`` normalised ``x0, y0, x1, y1`` (box prompts).
        points: ``(B, K, 2)`` normalised ``x, y`` (point prompts).
        labels: ``(B, K)`` 1 foreground, -1 "not a point" (empty masks).
        masks: ``(B, 1, H, W)`` in {0, 1} (mask prompts).
        count: Batch size of a ``none`` prompt (it carries no tensor to read it from).
    """

    kind: str
    boxes: torch.Tensor | None = None
    points: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    count: int | None = None

    def encode(self, sam: Sam) -> tuple[torch.Tensor, torch.Tensor]:
        """Sparse and dense embeddings from ``sam``'s prompt encoder (gradients flow)."""
        pe = sam.prompt_encoder
        h, w = pe.input_image_size
        scale = torch.tensor([w, h], dtype=torch.float32, device=pe._get_device())
        if self.kind == NO_PROMPT:
            assert self.count is not None
            sparse, dense = pe(points=None, boxes=None, masks=None)  # batch 1: no tokens, SAM's no-mask embedding
            return sparse.expand(self.count, -1, -1), dense.expand(self.count, -1, -1, -1)
        if self.kind == "box":
            assert self.boxes is not None
            boxes = (self.boxes.view(-1, 2, 2) * scale).view(-1, 4)
            return pe(points=None, boxes=boxes, masks=None)
        if self.kind == "points":
            assert self.points is not None and self.labels is not None
            return pe(points=(self.points * scale, self.labels), boxes=None, masks=None)
        assert self.masks is not None
        low = F.interpolate(self.masks.float(), size=pe.mask_input_size, mode="bilinear", align_corners=False)
        return pe(points=None, boxes=None, masks=(2 * low - 1) * MASK_LOGIT)

    def to(self, device: torch.device) -> Prompt:
        """The same prompt on ``device``."""
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Prompt(self.kind, move(self.boxes), move(self.points), move(self.labels), move(self.masks), self.count)

    def select(self, index: torch.Tensor) -> Prompt:
        """The prompts of the images ``index`` of the batch, in that order (a box, point or mask prompt)."""
        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[index.to(t.device)]

        return Prompt(self.kind, pick(self.boxes), pick(self.points), pick(self.labels), pick(self.masks))


def cat_prompts(prompts: list[Prompt]) -> Prompt:
    """One prompt for the concatenated batches of ``prompts`` (box, point or mask prompts of one kind).

    Raises:
        ConfigError: The prompts are of different kinds, ``none`` prompts, or there are none.
    """
    kinds = {p.kind for p in prompts}
    if len(kinds) != 1 or NO_PROMPT in kinds:
        raise ConfigError(f"can only join box, point or mask prompts of one kind, got {sorted(kinds) or 'none'}")
    def join(name: str) -> torch.Tensor | None:
        return None if getattr(prompts[0], name) is None else torch.cat([getattr(p, name) for p in prompts])

    return Prompt(prompts[0].kind, join("boxes"), join("points"), join("labels"), join("masks"))


def _boxes(masks: torch.Tensor) -> torch.Tensor:
    """Normalised bounding boxes of ``(B, 1, H, W)`` masks; the whole image for empty ones."""
    b, _, h, w = masks.shape
    fg = masks[:, 0] > 0.5
    rows, cols = fg.any(2), fg.any(1)  # (B, H), (B, W)
    ar_h = torch.arange(h, device=masks.device).expand(b, h)
    ar_w = torch.arange(w, device=masks.device).expand(b, w)
    big = torch.tensor(10**9, device=masks.device)
    y0 = torch.where(rows, ar_h, big).amin(1).float()
    y1 = torch.where(rows, ar_h, -big).amax(1).float() + 1
    x0 = torch.where(cols, ar_w, big).amin(1).float()
    x1 = torch.where(cols, ar_w, -big).amax(1).float() + 1
    empty = ~fg.flatten(1).any(1)
    box = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], 1)
    return torch.where(empty[:, None], torch.tensor([0.0, 0.0, 1.0, 1.0], device=masks.device), box)


def no_prompt(batch: int) -> Prompt:
    """No prompt at all: the segmenter must find the mask from the image alone, like a victim model."""
    if batch < 1:
        raise ConfigError(f"batch must be >= 1, got {batch}")
    return Prompt(NO_PROMPT, count=batch)


def whole_image_prompt(batch: int, device: torch.device | str = "cpu") -> Prompt:
    """A box prompt covering the whole image (the fallback for images without a mask)."""
    return Prompt("box", boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]], device=device).repeat(batch, 1))


def make_prompt(masks: torch.Tensor, kind: str | PromptKind, *, num_points: int = 3, noisy: bool = False,
                jitter: float = 0.1, generator: torch.Generator | None = None) -> Prompt:
    """Derive a prompt of ``kind`` from binary masks.

    Args:
        masks: ``(B, 1, H, W)`` binary masks (any dtype).
        kind: ``mask``, ``box`` or ``points`` (a :class:`PromptKind`, any case).
        num_points: Foreground points per image (point prompts).
        noisy: Training noise: box corners moved by up to ``jitter`` of the box side, masks
            randomly dilated or eroded by one or two pixels.
        jitter: Relative box jitter when ``noisy``.
        generator: Source of randomness (points, noise); seeded by the caller.

    Raises:
        ConfigError: Unknown kind or a bad ``num_points``/``jitter``.
    """
    choice = look_up(kind, PromptKind, "prompt kind")
    if num_points < 1 or not 0 <= jitter < 1:
        raise ConfigError(f"need num_points >= 1 and 0 <= jitter < 1, got {num_points}, {jitter}")
    masks = (masks > 0.5).float()
    dev = masks.device
    b, _, h, w = masks.shape
    if choice is PromptKind.BOX:
        boxes = _boxes(masks)
        if noisy and jitter > 0:
            side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, 1)
            shift = (torch.rand(boxes.shape, generator=generator, device="cpu").to(dev) * 2 - 1) * jitter * side
            boxes = (boxes + shift).clamp(0, 1)
        return Prompt("box", boxes=boxes)
    if choice is PromptKind.POINTS:
        flat = masks.flatten(1)
        empty = flat.sum(1) == 0
        weights = torch.where(empty[:, None], torch.ones_like(flat), flat)
        idx = torch.multinomial(weights.cpu(), num_points, replacement=True, generator=generator).to(dev)
        pts = torch.stack([(idx % w).float() / w, (idx // w).float() / h], -1)
        ones = torch.ones(b, num_points, device=dev)
        labels = torch.where(empty[:, None], -ones, ones)
        return Prompt("points", points=pts, labels=labels)
    if noisy:
        k = int(torch.randint(1, 3, (1,), generator=generator)) * 2 + 1
        grow = bool(torch.randint(0, 2, (1,), generator=generator))
        pooled = F.max_pool2d(masks if grow else 1 - masks, k, stride=1, padding=k // 2)
        masks = pooled if grow else 1 - pooled
    return Prompt("mask", masks=masks)

"""``--method unseg``: protect each image with one forward pass of a trained UnSeg generator.

Per record: every 2D image (or every slice along the first spatial axis of a volume) is
made 3-channel (grey replicated; RGB kept; other channel counts protected one channel at a
time as grey), letterboxed to the generator's input (larger images are scaled down; smaller
ones are only padded, so the noise keeps their pixel grid), paired with a prompt made from its
mask (``prompt="mask"``, ``"box"`` or ``"points"``; label maps are binarised as
foreground > 0), and run through the generator in batches. The tanh map is scaled back to
the image's own size and multiplied by ``eps`` inside the mask and ``eps_bg`` outside; a
grey image (also one stored as RGB with equal channels) takes the mean of the noise channels,
as in training (:func:`ulmed.segmentation.generator.match_channels`).

Records without a mask use the ``fallback``: ``box`` (a whole-image box prompt, and the
whole image counts as inside, so it gets ``eps``) or ``skip`` (left untouched). The
manifest's params name the fallback and its ``fit`` section lists the records that used it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ulmed.core.budget import Budget
from ulmed.core.device import resolve_device
from ulmed.core.method import METHODS, ProtectionMethod, record_seed
from ulmed.errors import ConfigError
from ulmed.io.record import Record
from ulmed.segmentation.checkpoint import load_generator
from ulmed.segmentation.data import letterbox, to_rgb, unletterbox
from ulmed.segmentation.generator import match_channels
from ulmed.segmentation.prompts import (
    PROMPT_KINDS,
    make_prompt,
    whole_image_prompt,
)

#: The generator shipped with the repository (see models/README.md).
SHIPPED_GENERATOR = Path(__file__).resolve().parents[2] / "models" / "unseg_tiny_hc18.pt"
FALLBACKS = ("box", "skip")


@METHODS.register("unseg")
class UnSeg(ProtectionMethod):
    """UnSeg: one forward pass of a SAM-built noise generator per image, prompted by its mask.

    Args:
        generator: Generator checkpoint (default: the shipped ``models/unseg_tiny_hc18.pt``).
        eps_bg: Budget outside the mask (``"2/255"``; 0 leaves the background untouched);
            at most the main budget.
        prompt: Prompt made from each mask: ``mask``, ``box`` or ``points``.
        fallback: For records without a mask: ``box`` (whole-image box prompt, full budget)
            or ``skip`` (untouched).
        batch_size: Images (or slices) per forward pass.
        num_points: Points per point prompt.
        sam_checkpoint: Official SAM checkpoint, for generators built on ``vit_*`` that do
            not store SAM's weights.
    """

    name = "unseg"
    citation = 'Sun et al., "One Universal Unlearnable Example Generator is Enough against All Image Segmentation", NeurIPS 2024'
    norm_reason = "its generator was trained to emit per-position noise scaled to an L-inf budget"

    def __init__(self, *args: Any, generator: str | Path | None = None, eps_bg: str | float = "2/255",
                 prompt: str = "mask", fallback: str = "box", batch_size: int = 16, num_points: int = 3,
                 sam_checkpoint: str | Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if prompt not in PROMPT_KINDS:
            raise ConfigError(f"prompt must be one of {', '.join(PROMPT_KINDS)}, got {prompt!r}")
        if fallback not in FALLBACKS:
            raise ConfigError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
        if batch_size < 1 or num_points < 1:
            raise ConfigError(f"batch_size and num_points must be >= 1, got {batch_size}, {num_points}")
        self.eps_bg = None if eps_bg == 0 or str(eps_bg).strip() in ("0", "0.0") else Budget.parse(eps_bg)
        if self.eps_bg is not None and self.eps_bg.native_unit == self.budget.native_unit and self.eps_bg.value > self.budget.value:
            raise ConfigError(f"eps_bg {self.eps_bg.spec!r} exceeds the budget {self.budget.spec!r}; the noise is projected onto the budget, so use eps_bg <= eps")
        if generator is None:
            if not SHIPPED_GENERATOR.is_file():
                raise ConfigError(f"no generator given and the shipped one ({SHIPPED_GENERATOR}) is missing; train one with "
                                  "`ulmed train-generator --data IMAGES --masks MASKS --config configs/unseg/tiny.yaml --out models/unseg.pt` "
                                  "and pass --set generator=PATH")
            generator = SHIPPED_GENERATOR
        self.generator_path = Path(generator).expanduser()
        self.generator, state = load_generator(self.generator_path, sam_checkpoint)
        self.generator_sha = hashlib.sha256(self.generator_path.read_bytes()).hexdigest()[:16]
        self.builder = state["builder"]
        self.prompt, self.fallback, self.batch_size, self.num_points = prompt, fallback, batch_size, num_points
        self.fallback_records: list[str] = []
        self._device: torch.device | None = None

    def _eps_bg(self, record: Record, eps: float) -> float:
        if self.eps_bg is None:
            return 0.0
        bg = self.eps_bg.in_unit(record.mapping)
        if bg > eps + 1e-12:
            raise ConfigError(f"{record.key}: eps_bg {self.eps_bg.spec!r} exceeds the budget here; use eps_bg <= eps")
        return bg

    def _raw(self, images: torch.Tensor, masks: torch.Tensor | None, seed: int) -> torch.Tensor:
        """Tanh noise ``(N, C, H, W)`` for 3-channel slices of one size (masks None: whole-image box)."""
        if self._device is None:
            self._device = resolve_device(self.device)
            self.generator.to(self._device)
        size = self.generator.spec.img_size
        rng = torch.Generator().manual_seed(seed % (2**63))
        out = []
        for start in range(0, images.shape[0], self.batch_size):
            x, box = letterbox(images[start : start + self.batch_size], size, upscale=False)
            if masks is None:
                prompt = whole_image_prompt(x.shape[0])
            else:
                m, _ = letterbox(masks[start : start + self.batch_size], size, nearest=True, upscale=False)
                prompt = make_prompt(m, self.prompt, num_points=self.num_points, generator=rng)
            with torch.no_grad():
                raw = self.generator(x.to(self._device), prompt.to(self._device)).cpu()
            out.append(unletterbox(raw, box).clamp(-1, 1))
        return torch.cat(out)

    def note(self, record: Record) -> str | None:
        """Names the fallback when the record had no mask (the manifest entry's note)."""
        if isinstance(record.target, np.ndarray):
            return None
        return "no mask: left untouched (fallback skip)" if self.fallback == "skip" else "no mask: whole-image box prompt (fallback box)"

    def perturbation(self, record: Record, unit_image: np.ndarray, eps: float) -> np.ndarray:
        """``eps`` x the generator's map inside the mask, ``eps_bg`` x outside (see the module docstring)."""
        bg = self._eps_bg(record, eps)
        target = record.target if isinstance(record.target, np.ndarray) else None
        if target is None:
            self.fallback_records.append(record.key)
            if self.fallback == "skip":
                return np.zeros_like(unit_image)
        unit = unit_image if record.spatial_dims == 3 else unit_image[:, None]  # (C, D, H, W)
        fg = None if target is None else (target if record.spatial_dims == 3 else target[None]) > 0  # (D, H, W)
        groups = [list(range(unit.shape[0]))] if unit.shape[0] == 3 else [[c] for c in range(unit.shape[0])]
        delta = np.zeros_like(unit, dtype=np.float32)
        region = np.ones(unit.shape[1:], dtype=np.float32) if fg is None else fg.astype(np.float32)
        scale = torch.from_numpy(bg + (eps - bg) * region)[:, None]  # (D, 1, H, W)
        for g, chans in enumerate(groups):
            slices = torch.from_numpy(np.stack([to_rgb(unit[chans, d]) for d in range(unit.shape[1])]).astype(np.float32))
            masks = None if fg is None else torch.from_numpy(fg[:, None].astype(np.float32))
            # (D, 3, H, W); grey slices get the channel mean, the same rule as in training
            noise = match_channels(self._raw(slices, masks, record_seed(self.seed, f"{record.key}:{g}")), slices) * scale
            delta[chans] = (noise if len(chans) == 3 else noise[:, :1]).permute(1, 0, 2, 3).numpy()
        return delta if record.spatial_dims == 3 else delta[:, 0]

    def params(self) -> dict[str, Any]:
        """Parameters that define the output (the generator by path and content hash)."""
        return {**super().params(), "generator": str(self.generator_path), "generator_sha256": self.generator_sha,
                "builder": self.builder, "eps_bg": self.eps_bg.spec if self.eps_bg is not None else "0",
                "prompt": self.prompt, "fallback": self.fallback, "num_points": self.num_points}

    def fit_report(self) -> dict[str, Any]:
        """Which records had no mask and got the fallback."""
        if not self.fallback_records:
            return {}
        return {"fallback": {"mode": self.fallback, "records": sorted(set(self.fallback_records))}}

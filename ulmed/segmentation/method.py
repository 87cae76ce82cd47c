"""``--method unseg``: protect each image with one forward pass of a trained UnSeg generator.

Per record: every 2D image (or every slice along the first spatial axis of a volume) is
made 3-channel (grey replicated after letterboxing; RGB kept; other channel counts protected
one channel at a time as grey), letterboxed to the generator's input (larger images are scaled down; smaller
ones are only padded, so the noise keeps their pixel grid), paired with a prompt made from its
mask (``prompt="mask"``, ``"box"`` or ``"points"``; label maps are binarised as
foreground > 0), and run through the generator (under ``torch.inference_mode``) in batches of
``batch_size``, which :meth:`UnSeg.protect_many` fills with the images of several records (the
pipeline hands it ``batch_size`` images at a time). Every pass holds ``batch_size`` images (a
short one is padded), so the result does not depend on how records are grouped: it is the same
byte for byte as one record at a time, in a resumed or sharded run as in a whole one. On a CPU
the passes run on ``threads`` torch threads (1 by default) whatever the machine or ``--workers``
gives the process: torch's float rounding depends on its thread count, and two workers (one
thread each) wrote 4 of 200 HC18 files differently from one worker on two threads. A grey image
(also one stored as RGB with equal channels) takes the mean of the noise channels, as in
training (:func:`ulmed.segmentation.generator.match_channels`, applied to the generator's
output before it is scaled back, so a grey image's map is scaled back once, not three times).
The tanh map is scaled back to the image's own size and multiplied by ``eps`` inside the mask
and ``eps_bg`` outside.

Records without a mask use the ``fallback``: ``box`` (a whole-image box prompt, and the
whole image counts as inside, so it gets ``eps``) or ``skip`` (left untouched). The
manifest's params name the fallback and its ``fit`` section lists the records that used it.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ulmed.choices import StrEnum, look_up, names
from ulmed.core.budget import Budget
from ulmed.core.device import resolve_device
from ulmed.core.device import threads as torch_threads
from ulmed.core.method import METHODS, ProtectionMethod, record_seed
from ulmed.errors import ConfigError
from ulmed.io.record import Record
from ulmed.segmentation.checkpoint import load_generator
from ulmed.segmentation.data import Box, letterbox, unletterbox
from ulmed.segmentation.generator import match_channels
from ulmed.segmentation.prompts import Prompt, PromptKind, cat_prompts, make_prompt, whole_image_prompt

#: The generator shipped with the repository (see models/README.md).
SHIPPED_GENERATOR = Path(__file__).resolve().parents[2] / "models" / "unseg_tiny_hc18.pt"


class Fallback(StrEnum):
    """What happens to a record without a mask."""

    #: A whole-image box prompt; the whole image counts as inside and gets ``eps``.
    BOX = "box"
    #: Left untouched.
    SKIP = "skip"


#: The fallback values, in definition order.
FALLBACKS = names(Fallback)


class Precision(StrEnum):
    """The arithmetic of the generator's forward passes (``precision``)."""

    #: float32 throughout: the reference, the same bytes on any machine at the same threads.
    FP32 = "fp32"
    #: ``torch.autocast`` in bfloat16 on the method's device, with 0.4 % of the stored values one
    #: step off fp32's. On a CPU with AMX 1.0-1.1x fp32's images/s since SAM's attention runs on
    #: the fused kernel (1.4-1.8x before); a GPU is where it pays.
    BF16 = "bf16"


def _autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager[Any]:
    """The forward passes' arithmetic: nothing for fp32, autocast in bfloat16 for bf16."""
    if precision is Precision.FP32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class _Piece:
    """Up to ``batch_size`` letterboxed 3-channel slices of one record, their prompts, placement and channels.

    ``channels``: the record's channels the noise is for (1: grey, its map is the channel mean).
    """

    x: torch.Tensor
    prompt: Prompt
    box: Box
    channels: int


@dataclass
class _Plan:
    """What the generator must make for one record: a job per channel group, and the budget map."""

    shape: tuple[int, ...]  # (C, D, H, W); D = 1 for a 2D image
    groups: list[list[int]]
    jobs: list[tuple[torch.Tensor, torch.Tensor | None, int]]
    scale: torch.Tensor


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
        batch_size: Images (or slices) per forward pass; a short pass is padded to it, so a
            lone image costs ``batch_size`` (use 1 to protect single images on a slow device).
            Recorded in the params: it sets the generator's float rounding.
        num_points: Points per point prompt.
        threads: torch threads of the forward passes on a CPU, whatever the process has (recorded
            in the params: it sets the generator's float rounding, as ``batch_size`` does). 1 is
            reproducible on any machine; more is faster on one worker but ties the bytes to it.
        sam_checkpoint: Official SAM checkpoint, for generators built on ``vit_*`` that do
            not store SAM's weights.
        precision: ``fp32`` (the reference) or ``bf16`` (:class:`Precision`: faster, recorded
            in the params, a few stored values differ).
    """

    name = "unseg"
    citation = ('Sun et al., "One Universal Unlearnable Example Generator is Enough against All Image '
                'Segmentation", NeurIPS 2024')
    norm_reason = "its generator was trained to emit per-position noise scaled to an L-inf budget"

    def __init__(self, *args: Any, generator: str | Path | None = None, eps_bg: str | float = "2/255",
                 prompt: str = "mask", fallback: str = "box", batch_size: int = 16, num_points: int = 3,
                 threads: int = 1, sam_checkpoint: str | Path | None = None, precision: str = "fp32",
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        prompt_kind, fallback_kind = look_up(prompt, PromptKind, "prompt"), look_up(fallback, Fallback, "fallback")
        self.precision = look_up(precision, Precision, "precision")
        if batch_size < 1 or num_points < 1 or threads < 1:
            raise ConfigError(f"batch_size, num_points and threads must be >= 1, got {batch_size}, {num_points}, "
                              f"{threads}")
        self.eps_bg = None if eps_bg == 0 or str(eps_bg).strip() in ("0", "0.0") else Budget.parse(eps_bg)
        bg = self.eps_bg
        if bg is not None and bg.native_unit == self.budget.native_unit and bg.value > self.budget.value:
            raise ConfigError(f"eps_bg {bg.spec!r} exceeds the budget {self.budget.spec!r}; the noise is projected "
                              "onto the budget, so use eps_bg <= eps")
        if generator is None:
            if not SHIPPED_GENERATOR.is_file():
                raise ConfigError(f"no generator given and the shipped one ({SHIPPED_GENERATOR}) is missing; train one "
                                  "with `ulmed train-generator --data IMAGES --masks MASKS --config "
                                  "configs/unseg/tiny.yaml --out models/unseg.pt` and pass --set generator=PATH")
            generator = SHIPPED_GENERATOR
        self.generator_path = Path(generator).expanduser()
        self.generator, state = load_generator(self.generator_path, sam_checkpoint)
        self.generator_sha = hashlib.sha256(self.generator_path.read_bytes()).hexdigest()[:16]
        self.builder = state["builder"]
        self.prompt, self.fallback = prompt_kind, fallback_kind
        self.batch_size, self.num_points, self.threads = batch_size, num_points, threads
        self.batch_hint = batch_size  # the pipeline hands protect_many this many images at once
        self.fallback_records: list[str] = []
        self._device: torch.device | None = None

    def _eps_bg(self, record: Record, eps: float) -> float:
        if self.eps_bg is None:
            return 0.0
        bg = self.eps_bg.in_unit(record.mapping)
        if bg > eps + 1e-12:
            raise ConfigError(f"{record.key}: eps_bg {self.eps_bg.spec!r} exceeds the budget here; use eps_bg <= eps")
        return bg

    def _pieces(self, images: torch.Tensor, masks: torch.Tensor | None, seed: int) -> Iterator[_Piece]:
        """The generator's input for 1- or 3-channel slices of one size, ``batch_size`` slices at a time.

        Grey slices are letterboxed, then replicated to SAM's three channels (the same input
        as replicating first, for a third of the resizing). The prompts are made from the
        masks (None: a whole-image box) with a random stream seeded per record, so they do
        not depend on which other records share a forward pass.
        """
        size = self.generator.spec.img_size
        rng = torch.Generator().manual_seed(seed % (2**63))
        for start in range(0, images.shape[0], self.batch_size):
            x, box = letterbox(images[start : start + self.batch_size], size, upscale=False)
            if masks is None:
                prompt = whole_image_prompt(x.shape[0])
            else:
                m, _ = letterbox(masks[start : start + self.batch_size], size, nearest=True, upscale=False)
                prompt = make_prompt(m, self.prompt, num_points=self.num_points, generator=rng)
            yield _Piece(x.expand(-1, 3, -1, -1), prompt, box, images.shape[1])

    def _raw(self, jobs: list[tuple[torch.Tensor, torch.Tensor | None, int]]) -> list[torch.Tensor]:
        """Tanh noise for each job's slices (``(D, c, H, W)`` with c 1 or 3, masks or None, seed).

        A job's noise is ``(D, c, H, W)``; grey slices (also RGB ones with equal channels)
        get the mean of the generator's channels.

        Slices of different jobs share forward passes: the pieces of :meth:`_pieces` with one
        prompt kind are packed, whole and in order, into batches of at most ``batch_size``.
        One job alone gives the batches it always had, and no batch mixes prompt kinds.
        """
        if self._device is None:
            self._device = resolve_device(self.device)
            self.generator.to(self._device)
        out: list[list[torch.Tensor]] = [[] for _ in jobs]
        queues: dict[str, list[tuple[int, _Piece]]] = {}
        cpu_threads = self.threads if self._device.type == "cpu" else None
        with torch.inference_mode(), torch_threads(cpu_threads), _autocast(self._device, self.precision):
            for j, job in enumerate(jobs):
                for piece in self._pieces(*job):
                    queue = queues.setdefault(piece.prompt.kind, [])
                    if queue and sum(len(p.x) for _, p in queue) + len(piece.x) > self.batch_size:
                        self._forward(queue, out)
                        queue.clear()
                    queue.append((j, piece))
            for queue in queues.values():
                if queue:
                    self._forward(queue, out)
        return [parts[0] if len(parts) == 1 else torch.cat(parts) for parts in out]

    def _forward(self, queue: list[tuple[int, _Piece]], out: list[list[torch.Tensor]]) -> None:
        """One forward pass over the queued pieces; each job's maps, back at its size, go to ``out``.

        The pass always holds ``batch_size`` images (a short batch repeats its last image):
        the generator's float rounding depends on the batch size, not on the other images in
        the batch, so every image gets the same noise however the records were grouped.
        """
        assert self._device is not None
        x = torch.cat([p.x for _, p in queue])
        prompt = cat_prompts([p.prompt for _, p in queue])
        n = len(x)
        if n < self.batch_size:
            index = torch.arange(self.batch_size).clamp(max=n - 1)
            x, prompt = x[index], prompt.select(index)
        # float32 also under autocast
        raw = self.generator(x.to(self._device), prompt.to(self._device))[:n].float().cpu()
        raw = match_channels(raw, x[:n])  # the training rule, on the generator's own input
        for (j, piece), r in zip(queue, raw.split([len(p.x) for _, p in queue])):
            out[j].append(unletterbox(r[:, : piece.channels], piece.box).clamp(-1, 1))

    def note(self, record: Record) -> str | None:
        """Names the fallback when the record had no mask (the manifest entry's note)."""
        if isinstance(record.target, np.ndarray):
            return None
        if self.fallback is Fallback.SKIP:
            return "no mask: left untouched (fallback skip)"
        return "no mask: whole-image box prompt (fallback box)"

    def perturbation(self, record: Record, unit_image: np.ndarray, eps: float) -> np.ndarray:
        """``eps`` x the generator's map inside the mask, ``eps_bg`` x outside (see the module docstring)."""
        return self._perturbations([record], [unit_image], [eps])[0]

    def protect_many(self, records: Sequence[Record]) -> list[Record]:
        """:meth:`protect` for several records whose images share the generator's forward passes.

        Images of any size go through the generator together (each is letterboxed to its
        input square), ``batch_size`` at a time; the result equals :meth:`protect` on each.
        """
        records = list(records)
        eps = [self.budget.in_unit(r.mapping) for r in records]
        deltas = self._perturbations(records, [r.unit_image() for r in records], eps)
        return [self.apply(r, d, e) for r, d, e in zip(records, deltas, eps)]

    def _perturbations(self, records: Sequence[Record], units: Sequence[np.ndarray],
                       eps: Sequence[float]) -> list[np.ndarray]:
        """:meth:`perturbation` of each record, with one :meth:`_raw` call for all of them."""
        plans = [self._plan(r, u, e) for r, u, e in zip(records, units, eps)]
        jobs = [job for plan in plans if plan is not None for job in plan.jobs]
        raws = iter(self._raw(jobs))
        deltas = []
        for record, unit_image, plan in zip(records, units, plans):
            if plan is None:  # no mask, fallback skip
                deltas.append(np.zeros_like(unit_image))
                continue
            delta = np.zeros(plan.shape, dtype=np.float32)
            for chans in plan.groups:
                delta[chans] = (next(raws) * plan.scale).permute(1, 0, 2, 3).numpy()  # (D, c, H, W) -> (c, D, H, W)
            deltas.append(delta if record.spatial_dims == 3 else delta[:, 0])
        return deltas

    def _plan(self, record: Record, unit_image: np.ndarray, eps: float) -> _Plan | None:
        """The generator's jobs for one record (one per channel group) and its budget map; None: skip it."""
        bg = self._eps_bg(record, eps)
        target = record.target if isinstance(record.target, np.ndarray) else None
        if target is None:
            self.fallback_records.append(record.key)
            if self.fallback is Fallback.SKIP:
                return None
        unit = unit_image if record.spatial_dims == 3 else unit_image[:, None]  # (C, D, H, W)
        fg = None if target is None else (target if record.spatial_dims == 3 else target[None]) > 0  # (D, H, W)
        groups = [list(range(unit.shape[0]))] if unit.shape[0] == 3 else [[c] for c in range(unit.shape[0])]
        region = np.ones(unit.shape[1:], dtype=np.float32) if fg is None else fg.astype(np.float32)
        scale = torch.from_numpy(bg + (eps - bg) * region)[:, None]  # (D, 1, H, W)
        masks = None if fg is None else torch.from_numpy(fg[:, None].astype(np.float32))
        jobs = [(torch.from_numpy(unit[chans].swapaxes(0, 1).astype(np.float32)),  # (D, c, H, W)
                 masks, record_seed(self.seed, f"{record.key}:{g}")) for g, chans in enumerate(groups)]
        return _Plan(unit.shape, groups, jobs, scale)

    def params(self) -> dict[str, Any]:
        """Parameters that define the output (the generator by file name and content hash, never a local path)."""
        return {**super().params(), "generator": self.generator_path.name, "generator_sha256": self.generator_sha,
                "builder": self.builder, "eps_bg": self.eps_bg.spec if self.eps_bg is not None else "0",
                "prompt": self.prompt, "fallback": self.fallback, "num_points": self.num_points,
                # batch size and threads set the generator's float rounding (see _forward, the module docstring)
                "batch_size": self.batch_size, "threads": self.threads,
                **({} if self.precision is Precision.FP32 else {"precision": self.precision})}

    def fit_report(self) -> dict[str, Any]:
        """Which records had no mask and got the fallback."""
        if not self.fallback_records:
            return {}
        return {"fallback": {"mode": self.fallback, "records": sorted(set(self.fallback_records))}}

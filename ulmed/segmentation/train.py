"""Bilevel training of the UnSeg generator against a scratch SAM-architecture surrogate.

Schedule (per round): ``surrogate_epochs`` surrogate epochs — the generator's noise is
detached and the surrogate learns the true mask from ``image + noise`` and a prompt — then
``generator_epochs`` generator epochs — the surrogate is frozen and the noise head learns to
*minimise* the surrogate's BCE + Dice loss (towards an all-ones mask with label
modification). Noise is scaled with the small training budget (epsilon generalisation).
Each batch draws one prompt kind from the configured mix; prompts are noisy (box jitter,
random points, dilated/eroded masks).

A random-init (``tiny``) backbone can first be warmed up as a promptable segmenter on clean
data (``backbone_epochs``) and is then frozen, standing in for SAM's pretraining.

Multi-process training uses ``torch.distributed`` (launch with ``torchrun``; gloo on CPU,
NCCL on GPUs): models are wrapped in DistributedDataParallel, each process takes an equal
share of every epoch, and rank 0 writes the checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from ulmed.choices import StrEnum, look_up, names
from ulmed.core.augment import build_augment
from ulmed.core.device import resolve_device
from ulmed.core.training import train_steps
from ulmed.segmentation.builders import build_named_sam, spec_for
from ulmed.segmentation.checkpoint import save_generator
from ulmed.segmentation.config import UnsegConfig
from ulmed.segmentation.data import load_pairs
from ulmed.segmentation.generator import UnsegGenerator, match_channels, scale_noise
from ulmed.segmentation.prompts import NO_PROMPT, Prompt, make_prompt, no_prompt
from ulmed.segmentation.sam_parts import SamSegmenter, seg_loss

log = logging.getLogger("ulmed")


class Stage(StrEnum):
    """The three kinds of training step, in the order :meth:`BilevelTrainer.fit` runs them."""

    #: Warm-up of a random-init generator backbone as a promptable segmenter on clean data.
    BACKBONE = "backbone"
    #: The surrogate learns the true mask from ``image + noise`` (noise detached).
    SURROGATE = "surrogate"
    #: The noise head minimises the frozen surrogate's loss.
    GENERATOR = "generator"


STAGES = names(Stage)
#: One training batch: images, masks and their prompt.
Batch = tuple[torch.Tensor, torch.Tensor, Prompt]


def _wrap(model: nn.Module, distributed: bool) -> nn.Module:
    return DDP(model, find_unused_parameters=True) if distributed else model


class BilevelTrainer:
    """The three kinds of step (backbone warm-up, surrogate, generator) and the epoch loop.

    Args:
        generator: The generator (its backbone is frozen here unless ``backbone_epochs`` asks
            for a warm-up first, then by :meth:`freeze`).
        surrogate: The scratch surrogate.
        config: Training configuration.
        seed: Seed of data order and prompt sampling (the same on every process).
        distributed: Wrap the models in DistributedDataParallel (a process group must exist).
    """

    def __init__(self, generator: UnsegGenerator, surrogate: SamSegmenter, config: UnsegConfig, seed: int = 0,
                 distributed: bool = False) -> None:
        self.generator, self.surrogate, self.config = generator, surrogate, config
        self.distributed = distributed
        self.rank = dist.get_rank() if distributed else 0
        self.world = dist.get_world_size() if distributed else 1
        self.rng = torch.Generator().manual_seed(seed)
        self.opt_surrogate = torch.optim.Adam(surrogate.parameters(), lr=config.lr_surrogate)
        self.opt_generator = torch.optim.Adam(generator.head.parameters(), lr=config.lr_generator)
        self._sur = _wrap(surrogate, distributed)
        self._gen: nn.Module | None = None
        self._backbone: nn.Module | None = None
        self.opt_backbone: torch.optim.Optimizer | None = None
        self.deadline: float | None = None
        self.steps = {s: 0 for s in STAGES}
        self.augment = build_augment(config.augment, 2, num_classes=2)
        if config.backbone_epochs == 0:
            self.freeze()

    # -- set-up -------------------------------------------------------------------------
    def freeze(self) -> None:
        """Freeze the generator's SAM parts; from now on only the noise head trains."""
        self.generator.freeze_backbone()
        self._backbone = self.opt_backbone = None

    @property
    def _gen_model(self) -> nn.Module:
        if not self.generator.frozen:
            raise RuntimeError("freeze the backbone before generator steps")
        if self._gen is None:
            self._gen = _wrap(self.generator, self.distributed)
        return self._gen

    def _backbone_model(self) -> tuple[nn.Module, torch.optim.Optimizer]:
        if self.generator.frozen:
            raise RuntimeError("the backbone is frozen")
        if self._backbone is None or self.opt_backbone is None:
            self._backbone = _wrap(SamSegmenter(self.generator.sam), self.distributed)
            self.opt_backbone = torch.optim.Adam(self.generator.sam.parameters(), lr=self.config.lr_surrogate)
        return self._backbone, self.opt_backbone

    # -- losses -------------------------------------------------------------------------
    def _noise(self, model: nn.Module, images: torch.Tensor, masks: torch.Tensor, prompt: Prompt) -> torch.Tensor:
        raw = match_channels(model(images, prompt), images)
        return scale_noise(raw, masks, self.config.train_eps, self.config.train_eps_bg)

    def _view(self, x_adv: torch.Tensor, masks: torch.Tensor, target: torch.Tensor,
              prompt: Prompt) -> tuple[torch.Tensor, torch.Tensor, Prompt]:
        """What the trainer's model sees: ``x_adv`` after the configured augmentation.

        The true mask and the loss target move with the image; the surrogate's prompt is
        drawn again from the moved mask (a prompt is part of the trainer's input), or is no
        prompt at all with ``surrogate_prompt: none``.
        """
        if self.config.surrogate_prompt == NO_PROMPT:
            prompt = no_prompt(x_adv.shape[0])
        if self.augment is None:
            return x_adv, target, prompt
        xa, both = self.augment(x_adv, torch.cat([masks, target], dim=1))
        if prompt.kind == NO_PROMPT:
            return xa, both[:, 1:], prompt
        return xa, both[:, 1:], self.prompt_for(both[:, :1].cpu()).to(x_adv.device)

    def surrogate_loss(self, images: torch.Tensor, masks: torch.Tensor, prompt: Prompt,
                       model: nn.Module | None = None) -> torch.Tensor:
        """The surrogate's loss on ``image + noise`` (noise detached) against the true mask."""
        with torch.no_grad():
            noise = self._noise(self.generator, images, masks, prompt)
        x, target, seen = self._view((images + noise).clamp(0, 1), masks, masks, prompt)
        return seg_loss((model or self.surrogate)(x, seen), target)

    def generator_loss(self, images: torch.Tensor, masks: torch.Tensor, prompt: Prompt,
                       model: nn.Module | None = None) -> torch.Tensor:
        """The frozen surrogate's loss on ``image + noise`` against the generator's target."""
        noise = self._noise(model or self.generator, images, masks, prompt)
        target = torch.ones_like(masks) if self.config.label_modification else masks
        x, target, seen = self._view((images + noise).clamp(0, 1), masks, target, prompt)
        return seg_loss(self.surrogate(x, seen), target)

    def backbone_loss(self, images: torch.Tensor, masks: torch.Tensor, prompt: Prompt,
                      model: nn.Module | None = None) -> torch.Tensor:
        """The generator backbone's segmentation loss on clean images (warm-up)."""
        return seg_loss((model or SamSegmenter(self.generator.sam))(images, prompt), masks)

    # -- steps --------------------------------------------------------------------------
    def _stage(self, stage: Stage) -> tuple[torch.optim.Optimizer, Callable[[Batch], torch.Tensor]]:
        """Set the train/eval modes and frozen flags of ``stage``; its optimiser and the loss of one batch."""
        if stage is Stage.SURROGATE:
            self.surrogate.train()
            for p in self.surrogate.parameters():
                p.requires_grad_(True)
            sur = self._sur
            return self.opt_surrogate, lambda b: self.surrogate_loss(*b, sur)
        if stage is Stage.GENERATOR:
            gen = self._gen_model
            self.surrogate.eval()
            for p in self.surrogate.parameters():
                p.requires_grad_(False)
            self.generator.train()
            return self.opt_generator, lambda b: self.generator_loss(*b, gen)
        backbone, opt = self._backbone_model()
        backbone.train()
        return opt, lambda b: self.backbone_loss(*b, backbone)

    def steps_of(self, stage: str | Stage, batches: Iterable[Batch]) -> list[float]:
        """One optimiser step of ``stage`` per ``(images, masks, prompt)`` batch; the losses before each step.

        The steps are those of the shared loop, :func:`ulmed.core.training.train_steps`.

        Raises:
            ConfigError: ``stage`` is not a :class:`Stage`.
        """
        member = look_up(stage, Stage, "stage")
        optimizer, loss_of = self._stage(member)
        losses = []
        for _, loss in train_steps(optimizer, batches, loss_of):
            self.steps[member.value] += 1
            losses.append(loss)
        return losses

    def surrogate_step(self, images: torch.Tensor, masks: torch.Tensor, prompt: Prompt) -> float:
        """One optimiser step of the surrogate; returns the loss before the step."""
        return self.steps_of("surrogate", [(images, masks, prompt)])[0]

    def generator_step(self, images: torch.Tensor, masks: torch.Tensor, prompt: Prompt) -> float:
        """One optimiser step of the noise head against the frozen surrogate; returns the loss before."""
        return self.steps_of("generator", [(images, masks, prompt)])[0]

    def backbone_step(self, images: torch.Tensor, masks: torch.Tensor, prompt: Prompt) -> float:
        """One warm-up step of the (not yet frozen) generator backbone; returns the loss before."""
        return self.steps_of("backbone", [(images, masks, prompt)])[0]

    # -- epochs -------------------------------------------------------------------------
    def prompt_for(self, masks: torch.Tensor) -> Prompt:
        """A noisy training prompt of a randomly drawn kind (the same draw on every process)."""
        kinds = self.config.prompts
        kind = kinds[int(torch.randint(len(kinds), (1,), generator=self.rng))]
        return make_prompt(masks, kind, num_points=self.config.num_points, noisy=True,
                           jitter=self.config.box_jitter, generator=self.rng)

    def out_of_time(self) -> bool:
        """True once the deadline passed (agreed across processes)."""
        if self.deadline is None:
            return False
        flag = torch.tensor([float(time.monotonic() > self.deadline)])
        if self.distributed:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def batches(self, images: torch.Tensor, masks: torch.Tensor) -> Iterator[Batch]:
        """One epoch of this process's share of the data, a new order and prompt per batch, until out of time."""
        order = torch.randperm(images.shape[0], generator=self.rng)
        share = max(1, images.shape[0] // self.world)
        mine = order[self.rank * share : (self.rank + 1) * share] if images.shape[0] >= self.world else order
        dev = next(self.generator.parameters()).device
        for start in range(0, len(mine), self.config.batch_size):
            if self.out_of_time():
                return
            idx = mine[start : start + self.config.batch_size]
            x, m = images[idx].to(dev), masks[idx].to(dev)
            yield x, m, self.prompt_for(m.cpu()).to(dev)

    def epoch(self, stage: str, images: torch.Tensor, masks: torch.Tensor) -> float | None:
        """One pass of ``stage`` steps over this process's share of the data; mean loss (None if out of time)."""
        losses = self.steps_of(stage, self.batches(images, masks))
        return sum(losses) / len(losses) if losses else None

    def fit(self, images: torch.Tensor, masks: torch.Tensor,
            say: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
        """Warm-up (if configured), then bilevel rounds until done or out of time; per-epoch history."""
        history: list[dict[str, Any]] = []

        def run(stage: str, rnd: int) -> bool:
            loss = self.epoch(stage, images, masks)
            if loss is None:
                return False
            history.append({"round": rnd, "stage": stage, "loss": round(loss, 5)})
            if say is not None and self.rank == 0:
                say(f"round {rnd} {stage}: loss {loss:.4f}")
            return not self.out_of_time()

        c = self.config
        for _ in range(c.backbone_epochs if not self.generator.frozen else 0):
            if not run("backbone", 0):
                break
        if not self.generator.frozen:
            self.freeze()
        for rnd in range(1, c.rounds + 1):
            for stage, count in (("surrogate", c.surrogate_epochs), ("generator", c.generator_epochs)):
                for _ in range(count):
                    if not run(stage, rnd):
                        return history
        return history


def init_distributed(device: str) -> tuple[bool, str]:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1); returns (distributed, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 and not (dist.is_available() and dist.is_initialized()):
        return False, device
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        if use_cuda:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            torch.cuda.set_device(torch.device(device))
    return True, device


def build_models(config: UnsegConfig, sam_checkpoint: str | Path | None = None) -> tuple[UnsegGenerator, SamSegmenter]:
    """The generator (SAM from ``sam_checkpoint`` for vit builders) and a random-init surrogate."""
    sam = build_named_sam(config.builder, config.img_size, sam_checkpoint, require_checkpoint=True)
    generator = UnsegGenerator(spec_for(config.builder, config.img_size), config.channels, sam)
    surrogate = SamSegmenter(build_named_sam(config.surrogate, config.surrogate_size))
    return generator, surrogate


def train_generator(images_dir: str | Path, masks_dir: str | Path, config: UnsegConfig, out: str | Path, *,
                    seed: int = 0, device: str = "auto", sam_checkpoint: str | Path | None = None,
                    say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train a generator on an images + masks folder and write its checkpoint (``ulmed train-generator``).

    Args:
        images_dir: Training images.
        masks_dir: Their masks (same relative paths).
        config: Training configuration.
        out: Checkpoint path (``.pt``), written by rank 0.
        seed: Seed of initialisation, data order and prompts.
        device: ``auto``, ``cpu``, ``cuda`` ... (per process under torchrun).
        sam_checkpoint: Local official SAM checkpoint for the vit builders.
        say: Progress lines (rank 0).

    Returns:
        Summary: output path, images, steps per stage, wall seconds, final losses.
    """
    distributed, device = init_distributed(device)
    dev = resolve_device(device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    images, masks, keys = load_pairs(images_dir, masks_dir, config.generator_size, config.split, config.limit)
    torch.manual_seed(seed)
    generator, surrogate = build_models(config, sam_checkpoint)
    generator.to(dev), surrogate.to(dev)
    trainer = BilevelTrainer(generator, surrogate, config, seed=seed, distributed=distributed)
    start = time.monotonic()
    if config.max_minutes is not None:
        trainer.deadline = start + 60 * config.max_minutes
    history = trainer.fit(images, masks, say)
    wall = time.monotonic() - start
    data = {"images": Path(images_dir).name, "masks": Path(masks_dir).name, "count": len(keys)}
    record = {**config.to_dict(), "data": data, "seed": seed, "steps": dict(trainer.steps),
              "wall_seconds": round(wall, 1), "world_size": trainer.world}
    if trainer.rank == 0:
        save_generator(generator, out, builder=config.builder, config=record, history=history)
    if distributed:
        dist.barrier()
    return {"out": str(out), "images": len(keys), "steps": dict(trainer.steps), "wall_seconds": wall,
            "last": history[-2:] if history else []}

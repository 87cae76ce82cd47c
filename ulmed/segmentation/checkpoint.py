"""Generator checkpoints that record their own configuration.

A checkpoint is a plain dict of tensors, strings, numbers and lists, so it loads with
``torch.load(..., weights_only=True)``:

* ``format``, ``builder``, ``spec`` (the :class:`SamSpec`), ``channels``;
* ``head``: the noise head's state dict;
* ``sam``: SAM's state dict when it is small enough to ship (the ``tiny`` builder), else
  None and ``sam_checkpoint`` names the official file to pass at load time;
* ``config`` (the training configuration), ``history`` (per-epoch losses), ``eps``/``eps_bg``
  (the budget the generator was meant to be applied with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ulmed.errors import ConfigError, InputError
from ulmed.io.atomic import atomic_file
from ulmed.segmentation.builders import (
    SAM_CHECKPOINT_FILES,
    SamSpec,
    build_named_sam,
    build_sam,
)
from ulmed.segmentation.generator import UnsegGenerator

FORMAT = "ulmed-unseg-generator/1"


def save_generator(generator: UnsegGenerator, path: str | Path, *, builder: str, config: dict[str, Any] | None = None,
                   history: list[dict[str, float]] | None = None, include_sam: bool | None = None) -> Path:
    """Write ``generator`` atomically to ``path``.

    Args:
        generator: The (trained) generator.
        path: Output file (``.pt``).
        builder: Builder name of its SAM (``tiny``, ``vit_b`` ...).
        config: The training configuration (plain types), recorded for the model card.
        history: Per-epoch training losses.
        include_sam: Store SAM's weights too (default: only for ``tiny``).
    """
    include = builder == "tiny" if include_sam is None else include_sam
    state = {
        "format": FORMAT,
        "builder": builder,
        "spec": generator.spec.to_dict(),
        "channels": generator.channels,
        "head": {k: v.detach().cpu() for k, v in generator.head.state_dict().items()},
        "sam": {k: v.detach().cpu() for k, v in generator.sam.state_dict().items()} if include else None,
        "sam_checkpoint": None if include else SAM_CHECKPOINT_FILES.get(builder),
        "config": dict(config or {}),
        "history": list(history or []),
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as fh:  # a file object: a full disk is an OSError, not torch's RuntimeError
        torch.save(state, fh)
    return target


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (``weights_only=True``), checked for its format.

    Raises:
        ConfigError: The file does not exist.
        InputError: It is not an ulmed generator checkpoint.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError("generator checkpoint not found; train one with `ulmed train-generator` "
                          "or pass generator=PATH", path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip/pickle errors of many kinds
        raise InputError(f"cannot read as a generator checkpoint ({exc.__class__.__name__})", path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"is not an ulmed UnSeg generator checkpoint (expected format {FORMAT})", path)
    return state


def load_generator(path: str | Path, sam_checkpoint: str | Path | None = None) -> tuple[UnsegGenerator, dict[str, Any]]:
    """Rebuild a generator from a checkpoint (frozen, eval mode).

    Args:
        path: The generator checkpoint.
        sam_checkpoint: The official SAM file, for checkpoints that do not store SAM's weights.

    Returns:
        The generator and the checkpoint dict (config, history, ...).
    """
    state = read_checkpoint(path)
    spec = SamSpec.from_dict(state["spec"])
    if state["sam"] is not None:
        sam = build_sam(spec)
        sam.load_state_dict(state["sam"])
    else:
        if sam_checkpoint is None:
            raise ConfigError(f"this generator needs SAM's weights ({state.get('sam_checkpoint')}); "
                              "pass sam_checkpoint=PATH", path)
        sam = build_named_sam(state["builder"], checkpoint=sam_checkpoint)
    generator = UnsegGenerator(spec, int(state["channels"]), sam)
    generator.head.load_state_dict(state["head"])
    generator.freeze_backbone()
    for p in generator.head.parameters():
        p.requires_grad_(False)
    return generator.eval(), state

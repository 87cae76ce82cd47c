"""The UnSeg training configuration (``configs/unseg/*.yaml``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ulmed.choices import StrEnum, look_up, names
from ulmed.core.augment import AugmentPolicy
from ulmed.core.budget import Budget
from ulmed.errors import ConfigError
from ulmed.segmentation.builders import SAM_SPECS, spec_for
from ulmed.segmentation.prompts import NO_PROMPT, PROMPT_KINDS, PromptKind


class SurrogatePrompt(StrEnum):
    """What the surrogate sees besides ``image + noise``."""

    #: The generator's training prompt (UnSeg's public code).
    SAME = "same"
    #: No prompt: it segments from the image alone, like a victim model.
    NONE = NO_PROMPT


#: The surrogate prompt values, in definition order.
SURROGATE_PROMPTS = names(SurrogatePrompt)


def _eps(value: Any, name: str, allow_zero: bool = False) -> float:
    """A budget in [0, 1] units from ``8/255`` or a number."""
    if allow_zero and (value == 0 or str(value).strip() in ("0", "0.0")):
        return 0.0
    budget = Budget.parse(value)
    if budget.native_unit is not None:
        raise ConfigError(f"{name} must be in [0, 1] units (e.g. 1/255), got {value!r}")
    return budget.value


@dataclass
class UnsegConfig:
    """How to build and train a generator.

    Args:
        builder: SAM architecture of the generator (``tiny``, ``vit_b``, ``vit_l``, ``vit_h``).
        img_size: Generator input side (random-init builders only; default the builder's).
        channels: Noise channels.
        surrogate: SAM architecture of the scratch surrogate.
        surrogate_img_size: Surrogate input side (default: the generator's, or 256 for vit builders).
        rounds: Bilevel rounds; each is ``surrogate_epochs`` then ``generator_epochs``.
        surrogate_epochs: Surrogate epochs per round (noise detached, target = the mask).
        generator_epochs: Generator epochs per round (surrogate frozen).
        backbone_epochs: Epochs that first train a random-init generator backbone (``tiny``)
            as a promptable segmenter on clean data, before it is frozen (a real SAM is
            pretrained; the tiny one has no public weights).
        batch_size: Images per step (per process under DDP).
        lr_generator: Adam learning rate of the noise head.
        lr_surrogate: Adam learning rate of the surrogate (and the backbone warm-up).
        train_eps: Foreground budget during training (epsilon generalisation: small).
        train_eps_bg: Background budget during training.
        eps: Foreground budget the generator is meant to be applied with (recorded).
        eps_bg: Background budget it is meant to be applied with (recorded).
        label_modification: Generator steps minimise the loss towards an all-ones mask
            instead of the true mask.
        prompts: Prompt kinds drawn at random per batch.
        surrogate_prompt: What the surrogate is given: ``same`` (the generator's training
            prompt, as in UnSeg's public code) or ``none`` (no prompt: it must segment from
            ``image + noise`` alone, like the victim models the noise is meant for).
        num_points: Points per point prompt.
        box_jitter: Relative jitter of training boxes.
        split: Split of an ``index.csv`` to train on (None: every image with a mask).
        limit: Use at most this many training images.
        max_minutes: Stop (and save) after this much training wall time.
        threads: torch CPU threads (None: leave torch's default).
        augment: The trainer's augmentation both bilevel stages see (expectation over
            transformations): a preset or mapping of :mod:`ulmed.core.augment`, shared with
            em and salm (``none``: off).
    """

    builder: str = "tiny"
    img_size: int | None = None
    channels: int = 3
    surrogate: str = "tiny"
    surrogate_img_size: int | None = None
    rounds: int = 10
    surrogate_epochs: int = 1
    generator_epochs: int = 1
    backbone_epochs: int = 0
    batch_size: int = 16
    lr_generator: float = 1e-3
    lr_surrogate: float = 1e-3
    train_eps: float = 1 / 255
    train_eps_bg: float = 0.25 / 255
    eps: float = 8 / 255
    eps_bg: float = 2 / 255
    label_modification: bool = True
    prompts: list[str] = field(default_factory=lambda: list(PROMPT_KINDS))
    surrogate_prompt: str = "same"
    num_points: int = 3
    box_jitter: float = 0.1
    split: str | None = "train"
    limit: int | None = None
    max_minutes: float | None = None
    threads: int | None = None
    augment: str | dict[str, Any] = "none"

    def __post_init__(self) -> None:
        AugmentPolicy.from_spec(self.augment)  # validate early
        SAM_SPECS.get(self.builder), SAM_SPECS.get(self.surrogate)
        spec_for(self.builder, self.img_size), spec_for(self.surrogate, self.surrogate_size)
        for name in ("train_eps", "eps"):
            setattr(self, name, _eps(getattr(self, name), name))
        for name in ("train_eps_bg", "eps_bg"):
            setattr(self, name, _eps(getattr(self, name), name, allow_zero=True))
        if self.train_eps_bg > self.train_eps or self.eps_bg > self.eps:
            raise ConfigError("the background budget may not exceed the foreground one (eps_bg <= eps)")
        ints = ("channels", "rounds", "batch_size", "num_points")
        if any(int(getattr(self, n)) < 1 for n in ints):
            raise ConfigError(f"{', '.join(ints)} must be >= 1")
        if min(self.surrogate_epochs, self.generator_epochs, self.backbone_epochs) < 0:
            raise ConfigError("epoch counts must be >= 0")
        if min(self.lr_generator, self.lr_surrogate) <= 0:
            raise ConfigError("learning rates must be > 0")
        if not self.prompts or isinstance(self.prompts, str):
            raise ConfigError(f"prompts must be a non-empty list of {', '.join(PROMPT_KINDS)}, got {self.prompts!r}")
        # plain strings, not members: the configuration is stored in checkpoints
        self.prompts = [look_up(p, PromptKind, "prompts").value for p in self.prompts]
        self.surrogate_prompt = look_up(self.surrogate_prompt, SurrogatePrompt, "surrogate_prompt").value
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be > 0, got {self.max_minutes}")

    @property
    def generator_size(self) -> int:
        """The generator's input side."""
        return spec_for(self.builder, self.img_size).img_size

    @property
    def surrogate_size(self) -> int:
        """The surrogate's input side."""
        if self.surrogate_img_size is not None:
            return int(self.surrogate_img_size)
        return spec_for(self.builder, self.img_size).img_size if self.builder == "tiny" else 256

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for checkpoints and model cards."""
        return asdict(self)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> UnsegConfig:
        """Read a YAML mapping of these fields; ``overrides`` that are not None win.

        Raises:
            ConfigError: Missing file, invalid YAML, unknown keys or bad values.
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError("config file not found; check --config", path) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"is not valid YAML ({exc.__class__.__name__}); fix the file", path) from None
        if not isinstance(data, dict):
            raise ConfigError("must be a mapping of UnSeg options", path)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}", path)
        try:
            return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
        except ConfigError as exc:
            raise ConfigError(exc.reason, path) from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad value ({exc})", path) from None

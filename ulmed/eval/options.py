"""What ``ulmed evaluate`` trains and how: :class:`EvalOptions`, validated on construction.

The data options say how the clean folder is read and split (:mod:`ulmed.eval.folders`,
:mod:`ulmed.eval.split`) and brought to the victims' grid (:class:`~ulmed.eval.loading.Preprocess`);
the rest name the victims, the trainer's defenses and the training schedule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ulmed.errors import ConfigError
from ulmed.eval.defenses import build_defense
from ulmed.eval.loading import Preprocess
from ulmed.eval.nnunet.runner import NNUNET_VICTIMS
from ulmed.eval.split import DEFAULT_TEST_FRACTION, SplitRule
from ulmed.eval.train import TrainConfig
from ulmed.eval.victims import SIZES, VICTIMS


@dataclass(frozen=True)
class EvalOptions:
    """What the grid trains and how (validated on construction).

    Args:
        masks: Folder of masks/label maps at the images' relative paths (else ``masks/`` or
            ``labels/`` beside ``images/``, as ``ulmed protect`` finds them).
        labels: Labels CSV (``image``, ``label``) of a classification set.
        subject: Regular expression over file name stems that finds the subject (group 1 or
            the whole match; default the whole stem): the split keeps a subject on one side.
        test_fraction: Share of subjects that goes to test (no fixed ``index.csv`` split).
        victims: Victim names (:data:`ulmed.eval.victims.VICTIMS`) of the data set's task.
        defenses: Defense names (:func:`ulmed.eval.defenses.build_defense`).
        train_config: How victims are trained; default ``TrainConfig()``. Its seed is
            replaced by ``seed``.
        victim_size: ``small`` (CPU) or ``base``.
        size: (height, width) of 2D images for the victims.
        shape: Volume shape for 3D data.
        keep_aspect: Letterbox 2D images (True) or stretch them.
        kernel: 2D resize kernel: ``pil``, ``torch``, ``cv-area``, ``cv-linear``
            (:class:`~ulmed.eval.loading.ResizeKernel`).
        spacing: Voxel size (mm per stored axis) volumes are resampled to first; None: native.
        iterations: Training iterations per epoch of the nnU-Net victims (``nnunet-2d``,
            ``nnunet-3d``), which train ``train_config.epochs`` epochs of nnU-Net's own trainer.
        train_limit: At most this many train items (the first ones of the split).
        test_limit: At most this many test items.
        seed: Seed of the victims' weights, the defenses and training.
        figures: Write the PNG figures (needs matplotlib).
        learnability: Also measure each victim's sharpness-aware learnability per layer on
            the clean test split (:data:`SAL_SETTINGS`) into its cell's ``sal``, and give every
            cell the Unlearnable Distance ``ud`` to the clean cell (part of the fingerprint).
    """

    masks: str | Path | None = None
    labels: str | Path | None = None
    subject: str | None = None
    test_fraction: float = DEFAULT_TEST_FRACTION
    victims: Sequence[str] = ("unet",)
    defenses: Sequence[str] = ("none",)
    train_config: TrainConfig = field(default_factory=TrainConfig)
    victim_size: str = "small"
    size: Sequence[int] = (64, 64)
    shape: Sequence[int] = (40, 56, 40)
    keep_aspect: bool = True
    kernel: str = "pil"
    spacing: Sequence[float] | None = None
    iterations: int = 25
    train_limit: int | None = None
    test_limit: int | None = None
    seed: int = 0
    figures: bool = True
    learnability: bool = False

    def __post_init__(self) -> None:
        if self.victim_size not in SIZES:
            raise ConfigError(f"victim size must be one of {', '.join(SIZES)}, got {self.victim_size!r}")
        normal = {"masks": None if self.masks is None else Path(self.masks),
                  "labels": None if self.labels is None else Path(self.labels), "victims": tuple(self.victims),
                  "defenses": tuple(self.defenses),
                  "train_config": replace(self.train_config or TrainConfig(), seed=self.seed)}
        for name, value in normal.items():
            object.__setattr__(self, name, value)  # frozen: normalised once, here
        if not self.victims:
            raise ConfigError("no victim given; pass at least one, e.g. --victim unet")
        if not self.defenses:
            raise ConfigError("no defense given; pass at least one, e.g. --defense none")
        for name in (*self.victims, *self.defenses):
            if "__" in name:
                raise ConfigError(f"name {name!r} may not contain '__' (it separates the parts of a cell file name)")
        for d in self.defenses:
            build_defense(d)  # validates the name early
        known = [*VICTIMS.names(), *NNUNET_VICTIMS]
        for v in self.victims:
            if v not in known:
                raise ConfigError(f"unknown victim {v!r}; choose one of: {', '.join(known)}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 1:
            raise ConfigError(f"iterations (nnU-Net iterations per epoch) must be a positive integer, got "
                              f"{self.iterations!r}")
        if len(set(self.victims)) != len(self.victims) or len(set(self.defenses)) != len(self.defenses):
            raise ConfigError("victims and defenses must not repeat")
        self.preprocess, self.split_rule  # noqa: B018 -- validate the data options early

    @property
    def preprocess(self) -> Preprocess:
        """How the items are loaded (:class:`~ulmed.eval.loading.Preprocess`)."""
        return Preprocess(self.size, self.keep_aspect, self.kernel, self.shape, self.spacing)

    @property
    def split_rule(self) -> SplitRule:
        """How a data set without a fixed split is split (:class:`~ulmed.eval.split.SplitRule`)."""
        return SplitRule(self.subject, self.test_fraction)


__all__ = ["EvalOptions"]

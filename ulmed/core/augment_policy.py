"""The trainer's augmentation, defined once per spatial dimension.

Two executors are built from these definitions and nothing else: the differentiable kornia
one that the protection optimises against (:mod:`ulmed.core.augment`, expectation over
transformations) and the evaluation's trainer augmentation (:mod:`ulmed.eval.augmenter`,
albumentations in 2D, MONAI and numpy in 3D). A definition says which transformations, with
which probability and ranges, in physical units:

* flips along :data:`FLIP_AXES` of the dimension, each axis with probability 0.5: both axes
  of an image; only the first axis of a volume (left-right in a standard orientation;
  flipping the others would swap anatomy that the labels tell apart, such as the
  hippocampus head and body);
* 90-degree rotations (images with equal sides), rotation in degrees, scale ``1 +- scale``
  per axis, interpolated translation and exact integer shifts in positions;
* elastic deformation: a displacement field ``alpha * G_sigma * n`` in positions (pixels or
  voxels), ``n`` the per-position noise of :data:`ELASTIC_FIELD` (what albumentations and
  MONAI draw), ``G_sigma`` a Gaussian of ``sigma`` positions;
* brightness/contrast ``x * a + b`` (one draw, ``a`` in ``1 +- contrast``, ``b`` in
  ``+- brightness``), Gaussian noise of a std drawn from ``[noise_min, noise]``; for the
  optimisation only: gamma, blur, JPEG.

Presets (:class:`Preset`, :data:`DEFINITIONS`): ``none``; ``flip_jitter`` (flips,
brightness/contrast +-0.2); ``standard`` (the evaluation's ``augmentation`` defense: flips,
affine rotation +-15 deg and scale 0.9-1.1 with p 0.5, in 2D 90-degree rotations, in 3D
translation up to 3 voxels, elastic alpha 30 / sigma 6 with p 0.2, brightness/contrast +-0.2
with p 0.5, noise std 0.01-0.05 with p 0.3); ``robust`` (standard plus integer shifts of up
to 3 positions, gamma, blur and, in 2D, JPEG 50-95); ``nnunet`` (nnU-Net v2's training
augmentation, :class:`NnUNetAugment`).

The ``nnunet`` preset is nnU-Net's own pipeline rather than a setting of the transformations
above: a policy with ``nnunet=True`` has them all off, and its parameters are those of
:data:`NNUNET` for the dimension, taken from ``nnUNetTrainer.get_training_transforms`` and
``configure_rotation_dummyDA_mirroring_and_inital_patch_size`` of nnunetv2 2.8.1 (Isensee et
al., "nnU-Net: a self-configuring method for deep learning-based biomedical image
segmentation", Nature Methods 2021; transforms of batchgeneratorsv2). In order, per sample:
rotation (p 0.2; 2D +-180 deg, +-15 deg when the sides differ by more than 1.5 times; 3D
+-30 deg about each axis) and scaling (p 0.2, one factor 0.7-1.4 of the sampling grid for all
axes: objects shrink for factors above 1), drawn independently and resampled once; Gaussian
noise (p 0.1, std 0-0.1); Gaussian blur (p 0.2, each channel with p 0.5, sigma 0.5-1 per
axis); multiplicative brightness (p 0.15, 0.75-1.25); contrast about the mean, range kept
(p 0.15, 0.75-1.25); low-resolution simulation (p 0.25, each channel with p 0.5, down by
0.5-1 with nearest neighbours, back linearly); inverted gamma (p 0.1) and gamma (p 0.3),
0.7-1.5 with mean and std kept; mirroring along every axis, each with p 0.5. Factors drawn
from 0.75-1.25 or 0.7-1.5 lie below and above 1 with probability 1/2 each (nnU-Net's
``BGContrast``). Volumes whose largest side exceeds 3 times the first are augmented per slice
of the first axis (nnU-Net's "dummy 2D" augmentation: in-plane rotation +-180 deg and scaling,
no resolution loss along the first axis).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ulmed.choices import StrEnum, look_up, names
from ulmed.errors import ConfigError


class Preset(StrEnum):
    """The named augmentation definitions."""

    NONE = "none"
    FLIP_JITTER = "flip_jitter"
    STANDARD = "standard"
    ROBUST = "robust"
    NNUNET = "nnunet"


#: Spatial axes (0 = first spatial axis) that a trainer flips, per spatial dimension.
FLIP_AXES: dict[int, tuple[int, ...]] = {2: (0, 1), 3: (0,)}


@dataclass(frozen=True)
class ElasticField:
    """How the evaluation's executor draws the noise of an elastic displacement field.

    Args:
        noise: ``gaussian_max`` (standard normal divided by its largest magnitude, as
            albumentations does) or ``uniform`` (uniform in [-1, 1], as MONAI does).
        truncate: The Gaussian kernel's radius in sigmas.
        field_border: How the noise is continued beyond the image while smoothing:
            ``replicate`` or ``zeros``.
        image_border: How the warped image is filled where it samples outside: ``zeros`` or
            ``border`` (nearest edge value).
    """

    noise: str
    truncate: float
    field_border: str
    image_border: str


#: The elastic field of each spatial dimension: albumentations' ElasticTransform (2D) and
#: MONAI's Rand3DElasticd with padding "border" (3D).
ELASTIC_FIELD: dict[int, ElasticField] = {
    2: ElasticField("gaussian_max", 4.0, "replicate", "zeros"),
    3: ElasticField("uniform", 3.0, "zeros", "border"),
}

Range = tuple[float, float]


@dataclass(frozen=True)
class NnUNetAugment:
    """nnU-Net v2's training augmentation for one spatial dimension (see the module docstring).

    Probabilities are per sample (``p_*``) or, for blur and low resolution, per channel of
    a sample the step acts on (``*_channel_p``). Angles are in degrees.

    Args:
        mirror_axes: Spatial axes mirrored, each with probability 0.5.
        rotation: Largest rotation angle (about each axis of a volume).
        rotation_elongated: Largest angle for 2D images whose sides differ by more than ``elongated`` times.
        elongated: Side ratio above which 2D images rotate by ``rotation_elongated`` only.
        anisotropic: Ratio of the largest side to the first above which a volume is augmented
            per slice of its first axis (in-plane rotation up to ``rotation_in_plane``).
        rotation_in_plane: Largest in-plane angle of such volumes.
        p_rotation: Probability of the rotation.
        p_scaling: Probability of the scaling.
        scaling: Range of the sampling grid's scale factor (objects appear ``1 / factor`` as large).
        p_noise: Probability of the Gaussian noise.
        noise_std: Range of its standard deviation (one for all channels).
        p_blur: Probability of the Gaussian blur.
        blur_channel_p: Probability per channel.
        blur_sigma: Range of sigma in positions, drawn per axis.
        p_brightness: Probability of the multiplicative brightness.
        brightness: Range of its factor (per channel).
        p_contrast: Probability of the contrast change.
        contrast: Range of its factor (per channel).
        p_lowres: Probability of the low-resolution simulation.
        lowres_channel_p: Probability per channel.
        lowres_scale: Range of the downsampling factor (one for all axes).
        p_gamma_inverted: Probability of the gamma of the inverted image.
        p_gamma: Probability of the gamma.
        gamma: Range of gamma (per channel).
    """

    mirror_axes: tuple[int, ...]
    rotation: float
    rotation_elongated: float = 15.0
    elongated: float = 1.5
    anisotropic: float = 3.0
    rotation_in_plane: float = 180.0
    p_rotation: float = 0.2
    p_scaling: float = 0.2
    scaling: Range = (0.7, 1.4)
    p_noise: float = 0.1
    noise_std: Range = (0.0, 0.1)
    p_blur: float = 0.2
    blur_channel_p: float = 0.5
    blur_sigma: Range = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: Range = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: Range = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_channel_p: float = 0.5
    lowres_scale: Range = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: Range = (0.7, 1.5)


#: nnU-Net v2's augmentation per spatial dimension (nnunetv2 2.8.1, nnUNetTrainer).
NNUNET: dict[int, NnUNetAugment] = {2: NnUNetAugment((0, 1), 180.0), 3: NnUNetAugment((0, 1, 2), 30.0)}
#: The steps of nnU-Net's augmentation that an ablation can switch off, each with its probabilities
#: (mirroring stays: it maps the codes to themselves).
NNUNET_STEPS: dict[str, tuple[str, ...]] = {
    "rotation": ("p_rotation",), "scaling": ("p_scaling",), "noise": ("p_noise",), "blur": ("p_blur",),
    "brightness": ("p_brightness",), "contrast": ("p_contrast",), "lowres": ("p_lowres",),
    "gamma": ("p_gamma", "p_gamma_inverted"),
}


def nnunet_steps(params: NnUNetAugment, off: Sequence[str]) -> NnUNetAugment:
    """``params`` with the :data:`NNUNET_STEPS` named in ``off`` never applied (their probabilities 0).

    Raises:
        ConfigError: An unknown step name.
    """
    unknown = [name for name in off if name not in NNUNET_STEPS]
    if unknown:
        raise ConfigError(f"unknown nnU-Net augmentation step(s) {', '.join(unknown)}; "
                          f"choose from {', '.join(NNUNET_STEPS)}")
    return replace(params, **{field: 0.0 for name in off for field in NNUNET_STEPS[name]})

#: Fields that switch a transformation on (the others set how it is done).
TRANSFORMS = ("flips", "rot90", "rotate", "scale", "shift", "translate", "elastic", "brightness", "contrast",
              "gamma", "noise", "blur", "jpeg", "nnunet")
_LESS_THAN_ONE = ("scale", "contrast", "gamma")
#: Fields added after manifests first recorded policies, with the default at which they stay out of them.
_QUIET_DEFAULTS: dict[str, Any] = {"translate": 0.0, "elastic_sigma": 6.0, "elastic_p": None, "noise_min": 0.0,
                                   "noise_p": None, "preset": None, "nnunet": False}


@dataclass(frozen=True)
class AugmentPolicy:
    """Which transformations a trainer applies, and how strong (one spatial dimension).

    Zero (or False) switches a transformation off. Each switched-on transformation is
    applied with probability ``p`` per sample, elastic and noise with their own when given.

    Args:
        flips: Random flips along :data:`FLIP_AXES` of the dimension (each with p 0.5).
        rot90: Random 90-degree rotations (in planes whose two axes have equal size).
        rotate: Largest rotation angle in degrees (about each axis of a volume).
        scale: Scale factors drawn from ``[1 - scale, 1 + scale]`` per axis.
        shift: Largest integer translation, in positions, along each spatial axis (exact).
        elastic: Elastic displacement strength ``alpha`` in positions (see module docstring).
        brightness: Additive brightness shift drawn from ``[-brightness, brightness]``.
        contrast: Contrast factor drawn from ``[1 - contrast, 1 + contrast]``.
        gamma: Gamma drawn from ``[1 - gamma, 1 + gamma]``.
        noise: Largest standard deviation of additive Gaussian noise.
        blur: Largest Gaussian blur sigma, in positions.
        jpeg: Lowest JPEG quality (quality drawn from ``[jpeg, 95]``); 0 = off.
        p: Probability of each transformation.
        translate: Largest interpolated translation, in positions, per axis (with the affine).
        elastic_sigma: Smoothness of the elastic displacement field, in positions.
        elastic_p: Probability of the elastic deformation (None: ``p``).
        noise_min: Smallest standard deviation of the noise.
        noise_p: Probability of the noise (None: ``p``).
        preset: The :class:`Preset` this policy starts from; :func:`for_dims` resolves it
            to the definition of a dimension (keeping the fields that differ from the 2D one).
        nnunet: nnU-Net v2's augmentation (:data:`NNUNET` of the dimension) in place of the
            transformations above, which must then be off.
    """

    flips: bool = False
    rot90: bool = False
    rotate: float = 0.0
    scale: float = 0.0
    shift: float = 0.0
    elastic: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    gamma: float = 0.0
    noise: float = 0.0
    blur: float = 0.0
    jpeg: int = 0
    p: float = 0.5
    translate: float = 0.0
    elastic_sigma: float = 6.0
    elastic_p: float | None = None
    noise_min: float = 0.0
    noise_p: float | None = None
    preset: str | None = None
    nnunet: bool = False

    def __post_init__(self) -> None:
        for name in ("rotate", "scale", "shift", "translate", "elastic", "brightness", "contrast", "gamma", "noise",
                     "blur", "noise_min"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"augmentation {name} must be a number >= 0, got {value!r}")
        for name in _LESS_THAN_ONE:
            if getattr(self, name) >= 1:
                raise ConfigError(f"augmentation {name} must be < 1 (a factor 1 +- {name}), got {getattr(self, name)}")
        if self.rotate > 180:
            raise ConfigError(f"augmentation rotate is in degrees, at most 180; got {self.rotate}")
        if not (isinstance(self.jpeg, int) and (self.jpeg == 0 or 1 <= self.jpeg <= 95)):
            raise ConfigError(f"augmentation jpeg must be 0 (off) or a quality in 1..95, got {self.jpeg!r}")
        if not self.elastic_sigma > 0:
            raise ConfigError(f"augmentation elastic_sigma must be > 0, got {self.elastic_sigma!r}")
        if self.noise and self.noise_min > self.noise:
            raise ConfigError(f"augmentation noise_min ({self.noise_min}) must not exceed noise ({self.noise})")
        for name in ("p", "elastic_p", "noise_p"):
            value = getattr(self, name)
            if (value is not None or name == "p") and not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
                raise ConfigError(f"augmentation {name} must lie in (0, 1], got {value!r}")
        if self.preset is not None:
            object.__setattr__(self, "preset", look_up(self.preset, Preset, "augmentation preset").value)
        others = [name for name in TRANSFORMS if name != "nnunet" and getattr(self, name)]
        if self.nnunet and others:
            raise ConfigError(f"the nnunet augmentation is nnU-Net v2's own pipeline; it takes no {', '.join(others)} "
                              "(switch them off, or use another preset)")

    @property
    def is_identity(self) -> bool:
        """True when no transformation is switched on."""
        return not any(getattr(self, name) for name in TRANSFORMS)

    @property
    def p_elastic(self) -> float:
        """Probability of the elastic deformation."""
        return self.p if self.elastic_p is None else self.elastic_p

    @property
    def p_noise(self) -> float:
        """Probability of the noise."""
        return self.p if self.noise_p is None else self.noise_p

    def to_dict(self) -> dict[str, Any]:
        """The policy as plain values (for manifests and fingerprints); later fields only when set."""
        return {k: v for k, v in asdict(self).items() if k not in _QUIET_DEFAULTS or v != _QUIET_DEFAULTS[k]}

    @classmethod
    def from_spec(cls, spec: AugmentPolicy | str | Mapping[str, Any] | None) -> AugmentPolicy:
        """A policy from a preset name, a mapping (``{"preset": ..., **overrides}``) or a policy.

        Preset names give the 2D definition; :func:`for_dims` turns it into another
        dimension's.

        Raises:
            ConfigError: Unknown preset or field.
        """
        if spec is None:
            return PRESETS[Preset.NONE]
        if isinstance(spec, AugmentPolicy):
            return spec
        if isinstance(spec, str):
            return PRESETS[look_up(spec, Preset, "augmentation preset")]
        if isinstance(spec, Mapping):
            spec = dict(spec)
            base = cls.from_spec(spec.pop("preset", Preset.NONE))
            known = {f.name for f in fields(cls)} - {"preset"}
            unknown = sorted(set(spec) - known)
            if unknown:
                raise ConfigError(f"unknown augmentation fields {unknown}; known: {', '.join(sorted(known))}")
            return replace(base, **spec)
        raise ConfigError(f"an augmentation policy is a preset name or a mapping, got {type(spec).__name__}")


def _definitions(spatial_dims: int) -> dict[str, AugmentPolicy]:
    """The presets of one spatial dimension."""
    plane = spatial_dims == 2
    standard = AugmentPolicy(flips=True, rot90=plane, rotate=15.0, scale=0.1, translate=0.0 if plane else 3.0,
                             elastic=30.0, elastic_sigma=6.0, elastic_p=0.2, brightness=0.2, contrast=0.2,
                             noise=0.05, noise_min=0.01, noise_p=0.3, preset=Preset.STANDARD)
    return {
        Preset.NONE: AugmentPolicy(),
        Preset.FLIP_JITTER: AugmentPolicy(flips=True, brightness=0.2, contrast=0.2, preset=Preset.FLIP_JITTER),
        Preset.STANDARD: standard,
        Preset.ROBUST: replace(standard, shift=3, gamma=0.2, blur=1.0, jpeg=50 if plane else 0, preset=Preset.ROBUST),
        Preset.NNUNET: AugmentPolicy(nnunet=True, preset=Preset.NNUNET),
    }


#: The definitions, per spatial dimension and preset.
DEFINITIONS: dict[int, dict[str, AugmentPolicy]] = {2: _definitions(2), 3: _definitions(3)}
#: The 2D definitions by preset name (what :meth:`AugmentPolicy.from_spec` starts from).
PRESETS: dict[str, AugmentPolicy] = DEFINITIONS[2]
#: The preset names, in definition order.
PRESET_NAMES: tuple[str, ...] = names(Preset)


def check_dims(spatial_dims: int) -> int:
    """``spatial_dims`` when it is 2 or 3; a ConfigError otherwise."""
    if spatial_dims not in DEFINITIONS:
        raise ConfigError(f"augmentation supports 2D and 3D images, got spatial_dims={spatial_dims}")
    return spatial_dims


def resolve(policy: AugmentPolicy, spatial_dims: int) -> AugmentPolicy:
    """A preset-based ``policy`` as the definition of ``spatial_dims`` (its own changes kept).

    A policy with ``preset`` is read as that preset's 2D definition plus the fields in which
    it differs from it; the result is the preset's definition for ``spatial_dims`` with
    those fields. A policy without a preset is returned as it is.
    """
    check_dims(spatial_dims)
    if policy.preset is None:
        return policy
    base = PRESETS[policy.preset]
    changed = {f.name: getattr(policy, f.name) for f in fields(policy)
               if getattr(policy, f.name) != getattr(base, f.name)}
    return replace(DEFINITIONS[spatial_dims][policy.preset], **changed)


def for_dims(policy: AugmentPolicy, spatial_dims: int) -> AugmentPolicy:
    """:func:`resolve`, then for volumes without the 2D-only JPEG."""
    policy = resolve(policy, spatial_dims)
    if spatial_dims == 3 and policy.jpeg:
        return replace(policy, jpeg=0)
    return policy


#: The single parts of the 2D definition (``aug-<part>`` defenses): name -> the fields it keeps.
PART_FIELDS: dict[str, tuple[str, ...]] = {
    "flip": ("flips",), "rot90": ("rot90",), "rotate": ("rotate",), "scale": ("scale",),
    "elastic": ("elastic", "elastic_sigma", "elastic_p"), "shift": ("shift",), "bc": ("brightness", "contrast"),
    "noise": ("noise", "noise_min", "noise_p"),
}


def part_policy(part: str) -> AugmentPolicy:
    """One part of the 2D ``robust`` definition (``standard`` plus shifts), with its settings.

    Raises:
        ConfigError: Unknown part.
    """
    if part not in PART_FIELDS:
        raise ConfigError(f"unknown augmentation part {part!r}; choose from {', '.join(PART_FIELDS)}")
    full = PRESETS[Preset.ROBUST]
    return AugmentPolicy(p=full.p, **{name: getattr(full, name) for name in PART_FIELDS[part]})

"""Defenses an unauthorised trainer could use against protected data, by name.

A :class:`Defense` has up to two parts:

* ``apply_data(images, clean_images, rng)``: a transform applied once to the training
  images before training (JPEG re-compression, blur, grayscale, mixing in clean data);
* ``augment``: a per-sample callable for ``train_victim(augment=...)``, with the signature
  ``augment(image (C, *spatial), target, rng) -> (image, target)``.

Targets are never changed by data transforms; augmentations move masks with their image.

Augmentations, drawn per sample and epoch (all but ``ueraser`` are
:class:`~ulmed.eval.augmenter.Augmenter` objects, built from the definitions of
:mod:`ulmed.core.augment_policy` that the protection's EOT also uses):

* ``augmentation``: the ``standard`` definition (flips, 90-degree rotations of square
  images, affine rotation +-15 deg and scale 0.9-1.1, in 3D translation up to 3 voxels,
  elastic alpha 30 / sigma 6, brightness/contrast +-0.2, Gaussian noise std 0.01-0.05).
  Volumes are flipped along their first axis only (left-right in a standard orientation).
* ``flip_jitter``: the ``flip_jitter`` definition: random flips and brightness/contrast
  jitter only (2D and 3D).
* ``nnunet-aug``: the ``nnunet`` definition, nnU-Net v2's training augmentation with its
  probabilities (nnunetv2 2.8.1, ``nnUNetTrainer.get_training_transforms``; Isensee et al.,
  Nature Methods 2021): rotation and scaling with p 0.2 each (most samples are not warped),
  mirroring along every axis, Gaussian noise, Gaussian blur, multiplicative brightness,
  contrast, low-resolution simulation, inverted gamma and gamma, in nnU-Net's z-scored
  intensity frame (see :mod:`ulmed.core.augment_policy`). 2D and 3D.
* ``aug-<part>[+<part>...]``: single parts of the 2D definition, with the same settings, to
  find which part removes a protection: ``flip``, ``rot90``, ``rotate`` (+-15 deg),
  ``scale`` (0.9-1.1), ``elastic``, ``shift`` (integer shifts of up to 3 positions: no
  interpolation at all), ``bc`` (brightness/contrast) and ``noise``. 2D only.
* ``nnunet-aug-no-<step>[+<step>...]``: ``nnunet-aug`` with those steps never applied
  (:data:`~ulmed.core.augment_policy.NNUNET_STEPS`: ``rotation``, ``scaling``, ``noise``, ``blur``,
  ``brightness``, ``contrast``, ``lowres``, ``gamma``), to find which of nnU-Net's steps removes a
  protection. 2D and 3D.
* ``ueraser``: UEraser's augmentation (Qin et al. 2023, "Learning the Unlearnable:
  Adversarial Augmentations Suppress Unlearnable Example Attacks", arXiv:2303.15127, code
  github.com/lafeat/ueraser) without its TrivialAugment: per sample and epoch, random
  fractal ("plasma") brightness and contrast fields with UEraser's kornia settings, and for
  RGB images a channel shuffle with p 0.5 (:class:`~ulmed.eval.ueraser.UEraser`). 2D and 3D.

All randomness comes from the ``rng`` the training loop passes, so a seeded run is
reproducible. Images are clipped to [0, 1].

The trainer's own grid (the cell reads the files again, at their native size, the way that
trainer does, and its clean baseline is read the same way): ``resize:N[:kernel]`` (a 2D
trainer that letterboxes the files to N x N with its kernel: ``pil`` by default, ``torch``,
``cv-area``, ``cv-linear``), ``resample:X,Y,Z`` (a volume trainer that resamples to that
voxel size in mm first, as nnU-Net does to its target spacing).

Data transforms: ``jpeg<q>`` (PIL JPEG at quality q, 8-bit; grey or RGB in 2D, each slice of
the first spatial axis and each channel as a grey image in 3D). ``jpeg75`` and ``jpeg10`` are
registered by name; quality 10 is the JPEG setting of Image Shortcut Squeezing (ISS: Liu, Zhao
and Larson, "Image Shortcut Squeezing: Countering Perturbative Availability Poisons with
Compression", ICML 2023, github.com/liuzrcc/ImageShortcutSqueezing). ``blur`` / ``blur<sigma>``
(Gaussian, sigma in pixels over the spatial axes, default 1). ``lowpass`` / ``lowpass<f>``
(:func:`lowpass`: keeps the spatial frequencies below a fraction f of Nyquist, default 0.5, 2D
and 3D): a squared Butterworth low-pass (Butterworth 1930, scikit-image's
``skimage.filters.butterworth``), the filter answer to the finding of ISS that perturbations
made on fully trained surrogate models are of high spatial frequency. ``grayscale`` (RGB only: luminance
replicated to 3 channels) and ``mix<p>`` (a share p of samples protected, the rest clean;
needs the clean images).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter
from skimage.filters import butterworth

from ulmed.choices import look_up
from ulmed.core.augment_policy import Preset
from ulmed.core.registry import Registry
from ulmed.errors import ConfigError
from ulmed.eval.augmenter import PARTS, Augmenter, NnUNetAblation, PartsAugmenter
from ulmed.eval.loading import ResizeKernel
from ulmed.eval.ueraser import UEraser

__all__ = ["DEFENSES", "PARTS", "Augment", "Augmenter", "DataTransform", "Defense", "PartsAugmenter", "blur",
           "UEraser", "build_defense", "grayscale", "jpeg", "lowpass", "mix", "mix_mask"]

DataTransform = Callable[[np.ndarray, "np.ndarray | None", np.random.Generator], np.ndarray]
Augment = Callable[[np.ndarray, Any, np.random.Generator], tuple[np.ndarray, Any]]


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.ndim not in (4, 5):
        raise ConfigError("images must be a numpy array (N, C, H, W) or (N, C, D, H, W) in [0, 1]")


def jpeg(images: np.ndarray, quality: int = 75) -> np.ndarray:
    """JPEG re-compress every image once (8-bit, PIL); same shape, float32 in [0, 1]."""
    _check_images(images)
    if not 1 <= int(quality) <= 100:
        raise ConfigError(f"JPEG quality must be in 1..100, got {quality}")

    def code(plane: np.ndarray) -> np.ndarray:  # (H, W) grey or (H, W, 3) RGB
        buf = io.BytesIO()
        Image.fromarray(np.round(np.clip(plane, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG", quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as im:
            return np.asarray(im, dtype=np.float32) / 255.0

    out = np.empty(images.shape, dtype=np.float32)
    for i in range(images.shape[0]):
        if images.ndim == 4 and images.shape[1] == 3:
            out[i] = np.moveaxis(code(np.moveaxis(images[i], 0, -1)), -1, 0)
            continue
        for c in range(images.shape[1]):
            if images.ndim == 4:
                out[i, c] = code(images[i, c])
            else:
                for z in range(images.shape[2]):
                    out[i, c, z] = code(images[i, c, z])
    return out


def blur(images: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Gaussian blur over the spatial axes (sigma in pixels/voxels)."""
    _check_images(images)
    if not sigma > 0:
        raise ConfigError(f"blur sigma must be > 0, got {sigma}")
    sig = (0.0, 0.0) + (float(sigma),) * (images.ndim - 2)
    return np.clip(gaussian_filter(images.astype(np.float32), sigma=sig, mode="nearest"), 0, 1)


#: Order of the squared Butterworth filter of :func:`lowpass` (gain 0.94 at 0.7 of the cutoff, 0.06 at 1.4 of it).
LOWPASS_ORDER = 4
#: Positions of reflection added on each side before filtering (the FFT's wrap-around then joins like ends).
LOWPASS_PAD = 16


def lowpass(images: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Keep the spatial frequencies below ``fraction`` of Nyquist (2D and 3D).

    A squared Butterworth low-pass of order :data:`LOWPASS_ORDER` (scikit-image's
    ``butterworth``; gain 1/2 at the cutoff, the radial frequency ``fraction * fs / 2``) over
    the spatial axes of each image and channel, computed on the image extended by
    :data:`LOWPASS_PAD` positions of reflection on every side, so the FFT's periodic
    continuation adds no edge artefacts; clipped to [0, 1].

    Args:
        images: ``(N, C, *spatial)`` in [0, 1].
        fraction: Cutoff as a fraction of the Nyquist frequency, in (0, 1].
    """
    _check_images(images)
    if not 0 < fraction <= 1:
        raise ConfigError(f"lowpass fraction of Nyquist must lie in (0, 1], got {fraction}")
    spatial = images.shape[2:]
    pad = ((0, 0),) + ((LOWPASS_PAD, LOWPASS_PAD),) * len(spatial)
    inner = (slice(None),) + tuple(slice(LOWPASS_PAD, LOWPASS_PAD + n) for n in spatial)
    out = np.empty(images.shape, dtype=np.float32)
    for i, image in enumerate(images):
        wide = np.pad(image.astype(np.float32), pad, mode="reflect")
        out[i] = butterworth(wide, fraction / 2, high_pass=False, order=LOWPASS_ORDER, channel_axis=0)[inner]
    return np.clip(out, 0, 1)


def grayscale(images: np.ndarray) -> np.ndarray:
    """Replace RGB by its luminance (ITU-R 601 weights) repeated on the 3 channels."""
    _check_images(images)
    if images.shape[1] != 3:
        raise ConfigError(f"the grayscale defense needs RGB images (3 channels), these have {images.shape[1]}")
    w = np.array([0.299, 0.587, 0.114], dtype=np.float32).reshape((1, 3) + (1,) * (images.ndim - 2))
    grey = (images * w).sum(axis=1, keepdims=True)
    return np.repeat(grey, 3, axis=1).astype(np.float32)


def mix_mask(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of the ``round(p * n)`` samples (chosen by ``rng``) that stay protected."""
    if not 0 <= p <= 1:
        raise ConfigError(f"mix fraction p must be in [0, 1], got {p}")
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: round(p * n)]] = True
    return mask


def mix(protected: np.ndarray, clean: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """A training set with a share ``p`` of protected samples and ``1 - p`` clean ones.

    Sample ``i`` comes from ``protected[i]`` or ``clean[i]`` (same targets); which ones
    are protected is :func:`mix_mask` of ``rng``.
    """
    if protected.shape != clean.shape:
        raise ConfigError(f"protected {protected.shape} and clean {clean.shape} images must have one shape")
    mask = mix_mask(protected.shape[0], p, rng)
    return np.where(mask.reshape((-1,) + (1,) * (protected.ndim - 1)), protected, clean)


@dataclass(frozen=True)
class Defense:
    """A named defense: an optional data transform and an optional augmentation.

    Args:
        name: Registry name, e.g. ``"jpeg75"``.
        data: ``data(images, clean_images, rng) -> images`` applied once, or None.
        augment: Per-sample augmentation for ``train_victim``, or None.
        needs_clean: Whether :meth:`apply_data` needs the clean images (mixing).
        grid: The trainer's own grid: changes to the loader's
            :class:`~ulmed.eval.loading.Preprocess` (``resize:N`` -> ``size``/``kernel``,
            ``resample:X,Y,Z`` -> ``spacing``); the cell reads the files again on that grid.
        spatial_dims: The data dimensionality the defense applies to (None: any).
    """

    name: str
    data: DataTransform | None = None
    augment: Augment | None = None
    needs_clean: bool = False
    grid: Mapping[str, Any] | None = None
    spatial_dims: int | None = None

    def apply_data(
        self, images: np.ndarray, clean_images: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        """Training images after the data transform (unchanged when there is none).

        Args:
            images: Protected training images ``(N, C, *spatial)`` in [0, 1].
            clean_images: The clean originals, same shape (needed by ``mix``).
            rng: Randomness for ``mix``; default ``numpy.random.default_rng(0)``.
        """
        if self.data is None:
            return images
        if self.needs_clean and clean_images is None:
            raise ConfigError(f"defense {self.name!r} needs the clean training images (clean_images=...)")
        return self.data(images, clean_images, rng if rng is not None else np.random.default_rng(0))


DEFENSES: Registry[Callable[[], Defense]] = Registry("defense")


def _data(fn: Callable[..., np.ndarray], **kw: Any) -> DataTransform:
    return lambda images, clean, rng: fn(images, **kw)


def _mix_data(p: float) -> DataTransform:
    return lambda images, clean, rng: mix(images, clean, p, rng)  # type: ignore[arg-type]


def _jpeg_defense(q: int) -> Defense:
    return Defense(f"jpeg{q}", data=_data(jpeg, quality=q))


def _blur_defense(sigma: float, name: str = "") -> Defense:
    return Defense(name or f"blur{sigma:g}", data=_data(blur, sigma=sigma))


def _lowpass_defense(fraction: float, name: str = "") -> Defense:
    if not 0 < fraction <= 1:
        raise ConfigError(f"lowpass fraction of Nyquist must lie in (0, 1], got {fraction:g} (e.g. lowpass0.25)")
    return Defense(name or f"lowpass{fraction:g}", data=_data(lowpass, fraction=fraction))


def _augment_defense(name: str, preset: Preset) -> Defense:
    return Defense(name, augment=Augmenter(preset))


def _mix_defense(p: float) -> Defense:
    return Defense(f"mix{p:g}", data=_mix_data(p), needs_clean=True)


DEFENSES.register("none")(lambda: Defense("none"))
#: The augmentation defenses and the definition (:mod:`ulmed.core.augment_policy`) each one applies.
AUGMENTATIONS: dict[str, Preset] = {"augmentation": Preset.STANDARD, "flip_jitter": Preset.FLIP_JITTER,
                                    "nnunet-aug": Preset.NNUNET}
for _name, _preset in AUGMENTATIONS.items():
    DEFENSES.register(_name)(partial(_augment_defense, _name, _preset))
DEFENSES.register("ueraser")(lambda: Defense("ueraser", augment=UEraser()))
for _q in (75, 10):
    DEFENSES.register(f"jpeg{_q}")(partial(_jpeg_defense, _q))
DEFENSES.register("blur")(partial(_blur_defense, 1.0, "blur"))
DEFENSES.register("lowpass")(partial(_lowpass_defense, 0.5, "lowpass"))
DEFENSES.register("grayscale")(lambda: Defense("grayscale", data=_data(grayscale)))
for _p in (0.8, 0.5, 0.2):
    DEFENSES.register(f"mix{_p:g}")(partial(_mix_defense, _p))

def _resize_defense(text: str) -> Defense:
    """``resize:N[:kernel]``: a 2D trainer that reads the files at their native size and resizes them to N x N."""
    size, _, kernel = text.partition(":")
    if int(size) < 8:
        raise ConfigError(f"resize:{text}: the working size must be at least 8")
    chosen = look_up(kernel or ResizeKernel.PIL, ResizeKernel, "resize kernel")
    name = f"resize:{int(size)}" + (f":{chosen}" if kernel else "")
    return Defense(name, grid={"size": (int(size), int(size)), "kernel": chosen}, spatial_dims=2)


def _resample_defense(text: str) -> Defense:
    """``resample:X,Y,Z``: a volume trainer that resamples every volume to X x Y x Z mm voxels first."""
    spacing = tuple(float(v) for v in text.split(","))
    if min(spacing) <= 0:
        raise ConfigError(f"resample:{text}: voxel sizes must be positive")
    return Defense(f"resample:{text}", grid={"spacing": spacing}, spatial_dims=3)


_PATTERNS: list[tuple[re.Pattern[str], Callable[[str], Defense]]] = [
    (re.compile(r"^resize:(\d+(?::[a-z-]+)?)$"), _resize_defense),
    (re.compile(r"^resample:(\d*\.?\d+,\d*\.?\d+,\d*\.?\d+)$"), _resample_defense),
    (re.compile(r"^jpeg(\d{1,3})$"), lambda v: _jpeg_defense(int(v))),
    (re.compile(r"^blur(\d+(?:\.\d+)?)$"), lambda v: _blur_defense(float(v))),
    (re.compile(r"^lowpass(\d*\.?\d+)$"), lambda v: _lowpass_defense(float(v))),
    (re.compile(r"^mix(0(?:\.\d+)?|1(?:\.0+)?|\.\d+)$"), lambda v: _mix_defense(float(v))),
    (re.compile(r"^aug-([a-z0-9+]+)$"), lambda v: Defense(f"aug-{v}", augment=PartsAugmenter(v.split("+")))),
    (re.compile(r"^nnunet-aug-no-([a-z+]+)$"),
     lambda v: Defense(f"nnunet-aug-no-{v}", augment=NnUNetAblation(v.split("+")))),
]


def build_defense(name: str) -> Defense:
    """The defense called ``name``: a registered one, or ``jpeg<q>``, ``blur<sigma>``, ``lowpass<f>``, ``mix<p>``,
    ``aug-<part>[+<part>]``, ``nnunet-aug-no-<step>[+<step>]``, ``resize:N[:kernel]``, ``resample:X,Y,Z``.

    Raises:
        ConfigError: An unknown name (the message lists the choices).
    """
    if name in DEFENSES:
        return DEFENSES.get(name)()
    for pattern, make in _PATTERNS:
        match = pattern.match(name)
        if match:
            return make(match.group(1))
    raise ConfigError(
        f"unknown defense {name!r}; choose one of: {', '.join(DEFENSES.names())}, "
        "or jpeg<q>, blur<sigma>, lowpass<f>, mix<p>, aug-<part>[+<part>], nnunet-aug-no-<step>[+<step>], "
        "resize:N[:kernel], resample:X,Y,Z"
    )

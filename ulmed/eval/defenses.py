"""Defenses an unauthorised trainer could use against protected data, by name.

A :class:`Defense` has up to two parts:

* ``apply_data(images, clean_images, rng)``: a transform applied once to the training
  images before training (JPEG re-compression, blur, grayscale, mixing in clean data);
* ``augment``: a per-sample callable for ``train_victim(augment=...)``, with the signature
  ``augment(image (C, *spatial), target, rng) -> (image, target)``.

Targets are never changed by data transforms; augmentations move masks with their image.

Augmentation presets (:class:`Augmenter`):

* ``augmentation``: in 2D an albumentations pipeline applied jointly to image and mask:
  HorizontalFlip, VerticalFlip, RandomRotate90 (square images only, so shapes stay
  fixed), Affine (rotation +-15 deg, scale 0.9-1.1), ElasticTransform,
  RandomBrightnessContrast (+-0.2) and GaussNoise (std 0.01-0.05). In 3D (albumentations
  is 2D only) MONAI's dictionary transforms move image and label map together: a flip of
  the first spatial axis (left-right in a standard orientation; flipping the others would
  swap anatomy that the labels tell apart, such as the hippocampus head and body),
  ``RandAffined`` (rotation +-15 deg about each axis, scale 0.9-1.1, translation up to 3
  voxels; p=0.5) and ``Rand3DElasticd`` (sigma 6, magnitude 30: displacements of about 0.2
  voxel RMS, the 2D ElasticTransform's are about 0.3 px; p=0.2), then
  brightness/contrast ``x * a + b`` and Gaussian noise with the 2D settings. Images are
  interpolated linearly, label maps by nearest neighbour.
* ``flip_jitter``: random flips and brightness/contrast jitter only (2D and 3D).
* ``aug-<part>[+<part>...]``: single parts of the ``augmentation`` preset, with the same
  settings, to find which part removes a protection: ``flip``, ``rot90``, ``rotate``
  (+-15 deg), ``scale`` (0.9-1.1), ``elastic``, ``shift`` (integer shifts of up to 3
  positions: no interpolation at all), ``bc`` (brightness/contrast) and ``noise``. 2D only.

All randomness comes from the ``rng`` the training loop passes (albumentations is
re-seeded from it per sample), so a seeded run is reproducible. Images are clipped to [0, 1].

Data transforms: ``jpeg<q>`` (PIL JPEG at quality q, 8-bit; grey or RGB in 2D, each slice of
the first spatial axis and each channel as a grey image in 3D), ``blur`` / ``blur<sigma>``
(Gaussian, sigma in pixels over the spatial axes, default 1), ``grayscale`` (RGB only:
luminance replicated to 3 channels) and ``mix<p>`` (a share p of samples protected, the
rest clean; needs the clean images).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import albumentations as A
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from ulmed.core.registry import Registry
from ulmed.errors import ConfigError

DataTransform = Callable[[np.ndarray, "np.ndarray | None", np.random.Generator], np.ndarray]
Augment = Callable[[np.ndarray, Any, np.random.Generator], tuple[np.ndarray, Any]]


class Augmenter:
    """Per-sample augmentation for 2D (albumentations) and 3D (numpy) images and masks.

    Args:
        geometric: Affine rotation/scale, elastic deformation and 90-degree rotations (2D);
            affine rotation/scale/translation and elastic deformation (3D).
        noise: Gaussian noise.
        flips: Random flips along every spatial axis (2D); of the first spatial axis (3D).
        brightness_contrast: Brightness/contrast jitter (+-0.2).
    """

    def __init__(self, geometric: bool = True, noise: bool = True, flips: bool = True,
                 brightness_contrast: bool = True) -> None:
        self.geometric, self.noise, self.flips, self.bc = geometric, noise, flips, brightness_contrast
        self._compose: dict[bool, A.Compose] = {}
        self._compose_3d: Any = None

    def _pipeline(self, square: bool) -> A.Compose:
        if square not in self._compose:
            t: list[Any] = []
            if self.flips:
                t += [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
            if self.geometric:
                t += [A.RandomRotate90(p=0.5)] if square else []
                t += [A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), p=0.5),
                      A.ElasticTransform(alpha=30.0, sigma=6.0, p=0.2)]
            if self.bc:
                t += [A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5)]
            if self.noise:
                t += [A.GaussNoise(std_range=(0.01, 0.05), p=0.3)]
            self._compose[square] = A.Compose(t)
        return self._compose[square]

    def __call__(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        """Augment one sample; ``target`` is a mask of the image's spatial shape or a class index."""
        if image.ndim == 3:
            image, target = self._augment_2d(image, target, rng)
        elif image.ndim == 4:
            image, target = self._augment_3d(image, target, rng)
        else:
            raise ConfigError(f"augment expects an image (C, H, W) or (C, D, H, W), got shape {image.shape}")
        return np.clip(image, 0.0, 1.0).astype(np.float32), target

    def _augment_2d(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        compose = self._pipeline(image.shape[1] == image.shape[2])
        compose.set_random_seed(int(rng.integers(2**31)))
        hwc = np.ascontiguousarray(np.moveaxis(image, 0, -1), dtype=np.float32)
        is_mask = isinstance(target, np.ndarray) and target.shape == image.shape[1:]
        if is_mask:
            if target.min() < 0 or target.max() > 255:
                raise ConfigError("masks for augmentation must hold labels 0..255")
            out = compose(image=hwc, mask=target.astype(np.uint8))
            target = out["mask"].astype(target.dtype)
        else:
            out = compose(image=hwc)
        return np.moveaxis(out["image"], -1, 0), target

    def _geometric_3d(self) -> Any:
        if self._compose_3d is None:
            from monai.transforms import Compose, Rand3DElasticd, RandAffined, RandFlipd

            keys, modes = ["image", "label"], ("bilinear", "nearest")  # no label: class targets
            t: list[Any] = []
            if self.flips:
                t.append(RandFlipd(keys, prob=0.5, spatial_axis=0, allow_missing_keys=True))
            if self.geometric:
                t += [RandAffined(keys, prob=0.5, rotate_range=(np.pi / 12,) * 3, scale_range=(0.1,) * 3,
                                  translate_range=(3,) * 3, mode=modes, padding_mode="border", allow_missing_keys=True),
                      Rand3DElasticd(keys, sigma_range=(6, 6), magnitude_range=(30, 30), prob=0.2, mode=modes,
                                     padding_mode="border", allow_missing_keys=True)]
            self._compose_3d = Compose(t)
        return self._compose_3d

    def _augment_3d(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        is_mask = isinstance(target, np.ndarray) and target.shape == image.shape[1:]
        if self.flips or self.geometric:
            compose = self._geometric_3d()
            compose.set_random_state(seed=int(rng.integers(2**31)))
            data = {"image": image.astype(np.float32)}
            if is_mask:
                data["label"] = target[None].astype(np.float32)
            out = compose(data)
            image = np.asarray(out["image"], dtype=np.float32)
            if is_mask:
                target = np.rint(np.asarray(out["label"])[0]).astype(target.dtype)
        if self.bc and rng.random() < 0.5:
            image = image * rng.uniform(0.8, 1.2) + rng.uniform(-0.2, 0.2)
        if self.noise and rng.random() < 0.3:
            image = image + rng.normal(0.0, rng.uniform(0.01, 0.05), size=image.shape)
        return np.ascontiguousarray(image), (np.ascontiguousarray(target) if is_mask else target)


#: The parts of the ``augmentation`` preset (2D), by name, with the preset's settings.
PARTS: dict[str, Callable[[], Any]] = {
    "flip": lambda: A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]),
    "rot90": lambda: A.RandomRotate90(p=0.5),
    "rotate": lambda: A.Affine(rotate=(-15, 15), p=0.5),
    "scale": lambda: A.Affine(scale=(0.9, 1.1), p=0.5),
    "elastic": lambda: A.ElasticTransform(alpha=30.0, sigma=6.0, p=0.2),
    "shift": lambda: A.Affine(translate_px=(-3, 3), p=0.5),
    "bc": lambda: A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    "noise": lambda: A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
}


class PartsAugmenter(Augmenter):
    """Some parts of the 2D ``augmentation`` preset only (see :data:`PARTS`).

    Args:
        parts: Part names, applied in the given order.
    """

    def __init__(self, parts: list[str]) -> None:
        super().__init__()
        unknown = [p for p in parts if p not in PARTS]
        if not parts or unknown:
            raise ConfigError(f"unknown augmentation parts {unknown or parts}; choose from {', '.join(PARTS)}")
        self.parts = parts

    def _pipeline(self, square: bool) -> A.Compose:
        if square not in self._compose:
            self._compose[square] = A.Compose([PARTS[p]() for p in self.parts if square or p != "rot90"])
        return self._compose[square]

    def _augment_3d(self, image: np.ndarray, target: Any, rng: np.random.Generator) -> tuple[np.ndarray, Any]:
        raise ConfigError("aug-<part> defenses are 2D only; use augmentation or flip_jitter for volumes")


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
    """

    name: str
    data: DataTransform | None = None
    augment: Augment | None = None
    needs_clean: bool = False

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


def _mix_defense(p: float) -> Defense:
    return Defense(f"mix{p:g}", data=_mix_data(p), needs_clean=True)


DEFENSES.register("none")(lambda: Defense("none"))
DEFENSES.register("augmentation")(lambda: Defense("augmentation", augment=Augmenter()))
DEFENSES.register("flip_jitter")(
    lambda: Defense("flip_jitter", augment=Augmenter(geometric=False, noise=False))
)
DEFENSES.register("jpeg75")(partial(_jpeg_defense, 75))
DEFENSES.register("blur")(partial(_blur_defense, 1.0, "blur"))
DEFENSES.register("grayscale")(lambda: Defense("grayscale", data=_data(grayscale)))
for _p in (0.8, 0.5, 0.2):
    DEFENSES.register(f"mix{_p:g}")(partial(_mix_defense, _p))

_PATTERNS: list[tuple[re.Pattern[str], Callable[[str], Defense]]] = [
    (re.compile(r"^jpeg(\d{1,3})$"), lambda v: _jpeg_defense(int(v))),
    (re.compile(r"^blur(\d+(?:\.\d+)?)$"), lambda v: _blur_defense(float(v))),
    (re.compile(r"^mix(0(?:\.\d+)?|1(?:\.0+)?|\.\d+)$"), lambda v: _mix_defense(float(v))),
    (re.compile(r"^aug-([a-z0-9+]+)$"), lambda v: Defense(f"aug-{v}", augment=PartsAugmenter(v.split("+")))),
]


def build_defense(name: str) -> Defense:
    """The defense called ``name``: a registered one, or ``jpeg<q>``, ``blur<sigma>``, ``mix<p>``."""
    if name in DEFENSES:
        return DEFENSES.get(name)()
    for pattern, make in _PATTERNS:
        match = pattern.match(name)
        if match:
            return make(match.group(1))
    raise ConfigError(
        f"unknown defense {name!r}; choose one of: {', '.join(DEFENSES.names())}, or jpeg<q>, blur<sigma>, mix<p>, aug-<part>[+<part>]"
    )

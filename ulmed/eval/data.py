"""Loaders for the evaluation data sets with their fixed splits, and for protected copies.

Each loader returns ``(images, targets, keys)``: images ``(N, C, *spatial)`` float32 in
[0, 1], integer targets, and the keys that name each sample (relative image paths for the
file-based sets). :func:`load_protected_like` reads a protected copy of the same samples
(same relative paths under another root) through the *same* per-file preprocessing, so a
protected training split can replace the clean one; targets always come from the
originals (masks are never perturbed).

Preprocessing:

* HC18 (2D, grey PNG, longest side 400 px): values / 255 (/ 65535 for 16-bit). With
  ``keep_aspect=True`` (default) the image is scaled to fit ``size`` and zero-padded
  symmetrically (letterbox), so head shapes and HD95 are not distorted; with
  ``keep_aspect=False`` it is stretched to ``size``. Images are resampled bilinearly in
  float (no re-quantisation, so a protective perturbation survives resizing as far as
  bilinear interpolation lets it), masks with nearest neighbour, then ``mask > 0``.
* MSD hippocampus (3D NIfTI, axes as stored): each volume is normalised to [0, 1] by its
  own min/max, then centre-padded with 0 and/or centre-cropped to ``shape``; labels
  (0, 1, 2) get the same pad/crop.
* PneumoniaMNIST (``pneumoniamnist.npz``, 28x28 uint8, each split ordered by class): values
  / 255; keys are ``"<split>_images/<index>"``; a protected copy is an ``.npz`` with the
  same arrays. ``limit`` takes evenly spaced samples so both classes stay represented.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from ulmed.choices import StrEnum, look_up, names
from ulmed.errors import ConfigError, InputError
from ulmed.io.images import output_relpath


class Split(StrEnum):
    """The fixed splits of a data set's ``index.csv`` (column ``split``)."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


#: The split values, in definition order.
SPLITS: tuple[str, ...] = names(Split)
PNEUMONIA_FILE = "pneumoniamnist.npz"


def _check_common(split: str, limit: int | None) -> str:
    """The split's value (a ConfigError naming the splits when unknown); checks ``limit`` too."""
    value = look_up(split, Split, "split").value
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    return value


def _index(root: Path, split: str, limit: int | None) -> list[dict[str, str]]:
    index = root / "index.csv"
    if not index.is_file():
        raise InputError("index.csv not found; point root at the data set folder that holds it", index)
    with open(index, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == split]
    if not rows:
        raise InputError(f"no rows with split {split!r}", index)
    return rows[:limit] if limit is not None else rows


def _size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or min(int(s) for s in size) < 1:
        raise ConfigError(f"size must be (height, width) with positive values, got {tuple(size)}")
    return int(size[0]), int(size[1])


def _read_2d(path: Path) -> np.ndarray:
    """Grey 2D image as float32 in [0, 1] (H, W)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L") if im.mode not in ("L", "I;16", "I") else im)
    except OSError as exc:
        raise InputError(f"cannot read image ({exc})", path) from None
    scale = 65535.0 if arr.dtype == np.uint16 or arr.max() > 255 else 255.0
    return arr.astype(np.float32) / scale


def _fit_2d(arr: np.ndarray, size: tuple[int, int], keep_aspect: bool, nearest: bool) -> np.ndarray:
    """Resize (H, W) to ``size``; letterbox with zeros when ``keep_aspect``."""
    h, w = arr.shape
    th, tw = size
    if keep_aspect:
        scale = min(th / h, tw / w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    else:
        nh, nw = th, tw
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    mode_arr = arr.astype(np.uint8) if nearest else arr.astype(np.float32)
    resized = np.asarray(Image.fromarray(mode_arr).resize((nw, nh), resample=resample))
    out = np.zeros((th, tw), dtype=resized.dtype)
    top, left = (th - nh) // 2, (tw - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def _hc18_image(path: Path, size: tuple[int, int], keep_aspect: bool) -> np.ndarray:
    return np.clip(_fit_2d(_read_2d(path), size, keep_aspect, nearest=False), 0.0, 1.0)[None]


def load_hc18(
    root: str | Path,
    split: str,
    size: Sequence[int] = (128, 128),
    limit: int | None = None,
    keep_aspect: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """HC18 fetal head ultrasound with its fixed split.

    Args:
        root: The ``hc18`` folder (``index.csv``, ``images/``, ``masks/``).
        split: ``train``, ``val`` or ``test``.
        size: Output (height, width).
        limit: Keep the first ``limit`` rows of the split (index order).
        keep_aspect: Letterbox (True) or stretch (False); see the module docstring.

    Returns:
        Images ``(N, 1, H, W)`` float32 in [0, 1], masks ``(N, H, W)`` int64 in {0, 1}, keys
        (image paths relative to ``root``).
    """
    split = _check_common(split, limit)
    root, hw = Path(root), _size(size)
    images, masks, keys = [], [], []
    for row in _index(root, split, limit):
        images.append(_hc18_image(root / row["image"], hw, keep_aspect))
        mask_path = root / row["mask"]
        try:
            with Image.open(mask_path) as im:
                raw = np.asarray(im.convert("L"))
        except OSError as exc:
            raise InputError(f"cannot read mask ({exc})", mask_path) from None
        masks.append(_fit_2d((raw > 0).astype(np.uint8), hw, keep_aspect, nearest=True).astype(np.int64))
        keys.append(row["image"])
    return np.stack(images), np.stack(masks), keys


def _fit_nd(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Centre-pad with zeros and/or centre-crop ``arr`` to ``shape``."""
    out = np.zeros(shape, dtype=arr.dtype)
    src, dst = [], []
    for s, t in zip(arr.shape, shape):
        if s >= t:
            a = (s - t) // 2
            src.append(slice(a, a + t))
            dst.append(slice(0, t))
        else:
            a = (t - s) // 2
            src.append(slice(0, s))
            dst.append(slice(a, a + s))
    out[tuple(dst)] = arr[tuple(src)]
    return out


def _read_nifti(path: Path) -> np.ndarray:
    try:
        image: Any = nib.load(str(path))
        return np.asarray(image.get_fdata(dtype=np.float32))
    except (OSError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read NIfTI ({exc})", path) from None


def _hippocampus_image(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    vol = _read_nifti(path)
    if vol.ndim != 3:
        raise InputError(f"expected a 3D volume, got shape {vol.shape}", path)
    lo, hi = float(vol.min()), float(vol.max())
    vol = (vol - lo) / (hi - lo) if hi > lo else np.zeros_like(vol)
    return _fit_nd(vol.astype(np.float32), shape)[None]


def load_hippocampus(
    root: str | Path,
    split: str,
    shape: Sequence[int] = (40, 56, 40),
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """MSD Task04 hippocampus MRI with its fixed split.

    Args:
        root: The ``msd_hippocampus`` folder (``index.csv``, ``images/``, ``labels/``).
        split: ``train``, ``val`` or ``test``.
        shape: Output volume shape (axes as stored), by centre pad/crop.
        limit: Keep the first ``limit`` rows of the split.

    Returns:
        Images ``(N, 1, D, H, W)`` float32 in [0, 1] (per-volume min/max), labels
        ``(N, D, H, W)`` int64 in {0, 1, 2}, keys (image paths relative to ``root``).
    """
    split = _check_common(split, limit)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"shape must be three positive sizes, got {tuple(shape)}")
    root, dhw = Path(root), (int(shape[0]), int(shape[1]), int(shape[2]))
    images, labels, keys = [], [], []
    for row in _index(root, split, limit):
        images.append(_hippocampus_image(root / row["image"], dhw))
        lab = np.rint(_read_nifti(root / row["label"])).astype(np.int64)
        labels.append(_fit_nd(lab, dhw))
        keys.append(row["image"])
    return np.stack(images), np.stack(labels), keys


def _npz_path(root: Path) -> Path:
    path = root / PNEUMONIA_FILE if root.is_dir() else root
    if not path.is_file():
        raise InputError(f"{PNEUMONIA_FILE} not found; point root at its folder or at the file", path)
    return path


def load_pneumonia(
    root: str | Path, split: str, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """PneumoniaMNIST (re-split) chest X-rays, 28x28.

    Args:
        root: The ``pneumoniamnist`` folder or the ``.npz`` file itself.
        split: ``train``, ``val`` or ``test``.
        limit: Keep ``limit`` samples spread evenly over the split (the file is ordered by
            class, so the first ``limit`` would all be pneumonia).

    Returns:
        Images ``(N, 1, 28, 28)`` float32 in [0, 1], labels ``(N,)`` int64 (0 normal,
        1 pneumonia), keys ``"<split>_images/<index>"``.
    """
    split = _check_common(split, limit)
    path = _npz_path(Path(root))
    with np.load(path) as data:
        if f"{split}_images" not in data:
            raise InputError(f"no array {split}_images; keys are {', '.join(data.files)}", path)
        images, labels = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
    idx = np.arange(len(images))
    if limit is not None and limit < len(images):
        idx = np.unique(np.linspace(0, len(images) - 1, limit).round().astype(np.int64))
    keys = [f"{split}_images/{i}" for i in idx]
    return (images[idx].astype(np.float32) / 255.0)[:, None], labels[idx].astype(np.int64), keys


def load_protected_like(
    protected_root: str | Path, keys: Sequence[str], loader_kwargs: dict[str, Any] | None = None
) -> np.ndarray:
    """Images of a protected copy, preprocessed exactly like the clean loader's output.

    The loader is chosen from the keys: ``.nii``/``.nii.gz`` -> hippocampus (``shape``),
    other image files -> HC18 (``size``, ``keep_aspect``), ``<split>_images/<i>`` ->
    PneumoniaMNIST (the protected ``.npz`` under ``protected_root``). A JPEG key is also
    looked up as ``.png``, the name ulmed writes JPEG inputs under.

    Args:
        protected_root: Root of the protected copy (same relative paths as the original).
        keys: Keys returned by the clean loader.
        loader_kwargs: The preprocessing arguments given to the clean loader (``size``,
            ``keep_aspect`` or ``shape``); ``split``/``limit``/``root`` are ignored.

    Returns:
        Images ``(N, C, *spatial)`` float32 in [0, 1], in the order of ``keys``.
    """
    root = Path(protected_root)
    kw = {k: v for k, v in (loader_kwargs or {}).items() if k not in ("root", "split", "limit")}
    if not keys:
        raise ConfigError("keys is empty; pass the keys returned by the clean loader")
    if all(k.endswith((".nii", ".nii.gz")) for k in keys):
        _only(kw, {"shape"})
        shape = tuple(int(s) for s in kw.get("shape", (40, 56, 40)))
        return np.stack([_hippocampus_image(root / k, shape) for k in keys])  # type: ignore[arg-type]
    if all("_images/" in k and "." not in k for k in keys):
        _only(kw, set())
        with np.load(_npz_path(root)) as data:
            rows = [data[k.split("/")[0]][int(k.split("/")[1])] for k in keys]
        return (np.stack(rows).astype(np.float32) / 255.0)[:, None]
    _only(kw, {"size", "keep_aspect"})
    hw, keep = _size(kw.get("size", (128, 128))), bool(kw.get("keep_aspect", True))
    out = []
    for k in keys:
        path = root / k
        if not path.is_file() and (root / output_relpath(Path(k))).is_file():
            path = root / output_relpath(Path(k))
        if not path.is_file():
            raise InputError("protected copy of this image not found; is protected_root the output folder?", path)
        out.append(_hc18_image(path, hw, keep))
    return np.stack(out)


def _only(kw: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(kw) - allowed)
    if extra:
        raise ConfigError(f"loader_kwargs {extra} do not apply here; allowed: {sorted(allowed) or 'none'}")

"""What an evaluation reads: the clean data set, its protected copies, and their pairs.

* :func:`detect_dataset` and :func:`load_eval_data` load the clean train and test splits
  with the fixed ``split`` column of ``index.csv`` (or the PneumoniaMNIST ``.npz``) through
  the loaders of :mod:`ulmed.eval.data`.
* :func:`read_protection` describes a protected copy of the train split from its
  ``manifest.json`` (written by ``ulmed protect``): method, budget and surrogate, so a
  report can say which surrogate made the noise and which victim was fooled (transfer).
* :func:`native_pairs` yields (clean, protected) train items at their *native* resolution
  in [0, 1] -- not the resized arrays the victims see -- for imperceptibility numbers and
  picture strips. Volumes are mapped to [0, 1] with the clean volume's min/max, the same
  for both, so the difference is the perturbation itself.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.choices import StrEnum, look_up, names
from ulmed.errors import ConfigError, InputError
from ulmed.eval.data import (
    PNEUMONIA_FILE,
    _npz_path,
    _read_2d,
    _read_nifti,
    load_hc18,
    load_hippocampus,
    load_pneumonia,
)
from ulmed.eval.imperceptibility import imperceptibility
from ulmed.io.images import output_relpath


class Dataset(StrEnum):
    """The kinds of clean data set an evaluation reads."""

    #: Tell the kind from the files (:func:`detect_dataset`).
    AUTO = "auto"
    #: Any 2D image + mask index (HC18 fetal head ultrasound).
    HC18 = "hc18"
    #: NIfTI volumes + label maps (MSD Task04 hippocampus).
    HIPPOCAMPUS = "hippocampus"
    #: PneumoniaMNIST ``.npz`` (classification).
    PNEUMONIA = "pneumonia"


#: The dataset values, in definition order.
DATASETS: tuple[str, ...] = names(Dataset)
MANIFEST_NAME = "manifest.json"
#: Default surrogate of the optimised methods when the manifest says ``auto``.
AUTO_SURROGATE = {"segmentation": "unet", "classification": "resnet18"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class EvalData:
    """The clean splits of one data set, preprocessed for the victims.

    Args:
        dataset: ``hc18`` (any 2D image + mask index), ``hippocampus`` (NIfTI + label
            index) or ``pneumonia``.
        root: The clean data set folder (or the ``.npz`` file).
        task: ``segmentation`` or ``classification``.
        num_classes: Classes including background.
        loader_kwargs: Preprocessing given to the loader (``size``/``keep_aspect`` or ``shape``).
        train_images: ``(N, C, *spatial)`` float32 in [0, 1].
        train_targets: Masks/label maps or class indices of the train split.
        train_keys: Relative paths (keys) of the train items.
        test_images: Clean test images.
        test_targets: Test targets.
    """

    dataset: str
    root: Path
    task: str
    num_classes: int
    loader_kwargs: dict[str, Any]
    train_images: np.ndarray
    train_targets: np.ndarray
    train_keys: list[str]
    test_images: np.ndarray
    test_targets: np.ndarray


@dataclass
class Protection:
    """A protected copy of the train split and what made it.

    Args:
        name: Name in the report (``lsp``, ``salm_r10`` ...).
        path: Root of the protected copy.
        method: Method from the manifest (None without a manifest).
        surrogate: Surrogate network that shaped the noise (None: training-free or unknown).
        budget: Budget as written in the manifest.
        params: All manifest parameters (empty without a manifest).
    """

    name: str
    path: Path
    method: str | None = None
    surrogate: str | None = None
    budget: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "path": str(self.path), "method": self.method, "surrogate": self.surrogate,
                "budget": self.budget, "params": self.params}


def check_name(name: str, reserved: Sequence[str] = ()) -> str:
    """Validate a protection name (it becomes part of file names)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"protection name {name!r} must start with a letter or digit and use only "
                          "letters, digits, '_', '.', '+', '-'")
    if name in reserved:
        raise ConfigError(f"protection name {name!r} is reserved for the baseline; choose another name")
    return name


def detect_dataset(root: str | Path) -> str:
    """Tell the data set kind from its files: ``hc18``, ``hippocampus`` or ``pneumonia``."""
    root = Path(root)
    if not root.exists():
        raise InputError("clean data set not found; check the --clean path", root)
    if root.suffix == ".npz" or (root / PNEUMONIA_FILE).is_file():
        return "pneumonia"
    index = root / "index.csv"
    if not index.is_file():
        raise InputError("no index.csv (with a split column) or pneumoniamnist.npz here; "
                         "point --clean at the data set folder", root)
    with open(index, newline="") as fh:
        reader = csv.DictReader(fh)
        first = next(reader, None)
        columns = set(reader.fieldnames or ())
    if first is None or "split" not in columns or "image" not in columns:
        raise InputError("index.csv needs rows with image and split columns", index)
    if "label" in columns and first["image"].endswith((".nii", ".nii.gz")):
        return "hippocampus"
    if "mask" in columns:
        return "hc18"
    raise InputError("index.csv has neither a mask column (2D images) nor a label column (NIfTI); "
                     "pass --dataset", index)


def load_eval_data(
    root: str | Path,
    dataset: str = "auto",
    *,
    size: Sequence[int] = (64, 64),
    shape: Sequence[int] = (40, 56, 40),
    train_limit: int | None = None,
    test_limit: int | None = None,
) -> EvalData:
    """Load the clean train and test splits.

    Args:
        root: Clean data set folder (``index.csv`` + files) or the PneumoniaMNIST file/folder.
        dataset: One of :data:`DATASETS`; ``auto`` looks at the files.
        size: (height, width) of 2D images (letterboxed).
        shape: Volume shape (centre pad/crop) of 3D data.
        train_limit: At most this many train items (None = all).
        test_limit: At most this many test items (None = all).

    Returns:
        The :class:`EvalData`.
    """
    root = Path(root).expanduser()
    chosen = look_up(dataset, Dataset, "dataset")
    kind = detect_dataset(root) if chosen is Dataset.AUTO else chosen.value
    if not root.exists():
        raise InputError("clean data set not found; check the --clean path", root)
    kwargs: dict[str, Any]
    if kind == "hc18":
        kwargs = {"size": tuple(int(s) for s in size), "keep_aspect": True}
        train = load_hc18(root, "train", limit=train_limit, **kwargs)
        test = load_hc18(root, "test", limit=test_limit, **kwargs)
    elif kind == "hippocampus":
        kwargs = {"shape": tuple(int(s) for s in shape)}
        train = load_hippocampus(root, "train", limit=train_limit, **kwargs)
        test = load_hippocampus(root, "test", limit=test_limit, **kwargs)
    else:
        kwargs = {}
        train = load_pneumonia(root, "train", limit=train_limit)
        test = load_pneumonia(root, "test", limit=test_limit)
    task = "classification" if kind == "pneumonia" else "segmentation"
    num_classes = max(2, int(max(train[1].max(), test[1].max())) + 1)
    return EvalData(kind, root, task, num_classes, kwargs, train[0], train[1], train[2], test[0], test[1])


def read_protection(name: str, path: str | Path, task: str) -> Protection:
    """Describe a protected copy from its ``manifest.json`` (when there is one).

    Args:
        name: Name of the protection in the report.
        path: Root of the protected copy (``ulmed protect -o``), or a protected ``.npz``.
        task: ``segmentation`` or ``classification`` (resolves the ``auto`` surrogate).

    Returns:
        The :class:`Protection`; method, surrogate and budget stay None without a manifest.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise InputError(f"protected copy {name!r} not found; check --protected {name}=PATH", root)
    manifest = (root if root.is_dir() else root.parent) / MANIFEST_NAME
    if not manifest.is_file():
        return Protection(name, root)
    try:
        params = dict(json.loads(manifest.read_text()).get("params", {}))
    except (OSError, ValueError, AttributeError) as exc:
        raise InputError(f"cannot read the manifest ({exc}); re-run ulmed protect or remove it", manifest) from None
    surrogate = params.get("surrogate")
    if surrogate == "auto":
        surrogate = AUTO_SURROGATE.get(task, "auto")
    budget = params.get("budget")
    return Protection(name, root, params.get("method"), surrogate, None if budget is None else str(budget),
                      {k: v for k, v in params.items() if k not in ("input", "output", "uid_salt")})


def _protected_file(root: Path, key: str) -> Path:
    path = root / key
    if not path.is_file() and (root / output_relpath(Path(key))).is_file():
        path = root / output_relpath(Path(key))
    if not path.is_file():
        raise InputError("protected copy of this item not found; is the protected path the ulmed protect output?", path)
    return path


def native_pairs(
    data: EvalData, protected_root: str | Path, limit: int | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
    """Yield ``(key, clean, protected, scale)`` for train items at native resolution.

    Args:
        data: The clean data (its dataset kind, root and train keys).
        protected_root: Root of the protected copy.
        limit: Stop after this many items.

    Yields:
        Key, clean and protected images ``(C, *spatial)`` float64 in [0, 1] (protected
        may leave [0, 1] slightly for volumes), and native units per [0, 1] unit.
    """
    root = Path(protected_root)
    keys = data.train_keys[:limit] if limit is not None else data.train_keys
    if data.dataset == "pneumonia":
        # NpzFile[name] decompresses the whole array on every access: read each array once
        arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        with np.load(_npz_path(data.root)) as c, np.load(_npz_path(root)) as p:
            for key in keys:
                arr, i = key.split("/")[0], int(key.split("/")[1])
                if arr not in arrays:
                    arrays[arr] = (c[arr], p[arr])
                yield key, arrays[arr][0][i][None] / 255.0, arrays[arr][1][i][None] / 255.0, 255.0
        return
    for key in keys:
        prot_path = _protected_file(root, key)
        if data.dataset == "hippocampus":
            clean = _read_nifti(data.root / key).astype(np.float64)
            prot = _read_nifti(prot_path).astype(np.float64)
            if clean.shape != prot.shape:
                raise InputError(f"protected volume has shape {prot.shape}, the clean one {clean.shape}", prot_path)
            lo, hi = float(clean.min()), float(clean.max())
            scale = hi - lo if hi > lo else 1.0
            yield key, ((clean - lo) / scale)[None], ((prot - lo) / scale)[None], scale
        else:
            clean2d = _read_2d(data.root / key).astype(np.float64)
            prot2d = _read_2d(prot_path).astype(np.float64)
            if clean2d.shape != prot2d.shape:
                raise InputError(f"protected image has shape {prot2d.shape}, the clean one {clean2d.shape}", prot_path)
            yield key, clean2d[None], prot2d[None], 255.0


def imperceptibility_summary(data: EvalData, protected_root: str | Path) -> dict[str, float | int | None]:
    """Mean imperceptibility of a protected copy over the train items (native resolution).

    Returns:
        ``psnr`` (mean over changed items; None when none changed), ``ssim``, ``linf`` (max),
        ``linf_native`` (max), ``rms`` (mean), ``l0_fraction`` (mean), ``n`` and ``unchanged``
        (items identical to the clean ones).
    """
    rows = [imperceptibility(c, p, scale) for _, c, p, scale in native_pairs(data, protected_root)]
    psnr = [r["psnr"] for r in rows if np.isfinite(r["psnr"])]
    ssim = [r["ssim"] for r in rows if np.isfinite(r["ssim"])]
    return {
        "psnr": float(np.mean(psnr)) if psnr else None,
        "ssim": float(np.mean(ssim)) if ssim else None,
        "linf": float(max(r["linf"] for r in rows)),
        "linf_native": float(max(r["linf_native"] for r in rows)),
        "rms": float(np.mean([r["rms"] for r in rows])),
        "l0_fraction": float(np.mean([r["l0_fraction"] for r in rows])),
        "n": len(rows),
        "unchanged": len(rows) - len(psnr),
    }

"""What an evaluation reads besides the clean data: the protected copies, and (clean, protected) pairs.

* :func:`read_protection` describes a protected copy of the train split from its
  ``manifest.json`` (written by ``ulmed protect``): method, budget and surrogate, so a
  report can say which surrogate made the noise and which victim was fooled (transfer).
* :func:`native_pairs` yields (clean, protected) train items at their *native* resolution
  in [0, 1] -- not the resized arrays the victims see -- for imperceptibility numbers and
  picture strips. Volumes are mapped to [0, 1] with the clean volume's min/max, the same
  for both, so the difference is the perturbation itself.

The clean data itself is found, split and loaded by :mod:`ulmed.eval.data`
(:class:`~ulmed.eval.data.EvalData` is re-exported here for the modules that name it).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ulmed.errors import ConfigError, InputError
from ulmed.eval.data import EvalData, protected_file
from ulmed.eval.imperceptibility import imperceptibility
from ulmed.eval.loading import read_image_2d, read_volume

__all__ = ["AUTO_SURROGATE", "EvalData", "MANIFEST_NAME", "Protection", "check_name", "imperceptibility_summary",
           "native_pairs", "read_protection"]

MANIFEST_NAME = "manifest.json"
#: Default surrogate of the optimised methods when the manifest says ``auto``.
AUTO_SURROGATE = {"segmentation": "unet", "classification": "resnet18"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


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


def native_pairs(
    data: EvalData, protected_root: str | Path, limit: int | None = None
) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
    """Yield ``(key, clean, protected, scale)`` for train items at native resolution.

    Args:
        data: The clean data (its train items, dimensions and channels).
        protected_root: Root of the protected copy.
        limit: Stop after this many items.

    Yields:
        Key, clean and protected images ``(C, *spatial)`` float64 in [0, 1] (protected
        may leave [0, 1] slightly for volumes), and native units per [0, 1] unit.
    """
    root = Path(protected_root)
    items = data.train_items[:limit] if limit is not None else data.train_items
    for item in items:
        prot_path = protected_file(root, item.key)
        if data.spatial_dims == 3:
            clean = read_volume(item.image)[0].astype(np.float64)
            prot = read_volume(prot_path)[0].astype(np.float64)
            if clean.shape != prot.shape:
                raise InputError(f"protected volume has shape {prot.shape}, the clean one {clean.shape}", prot_path)
            lo, hi = float(clean.min()), float(clean.max())
            scale = hi - lo if hi > lo else 1.0
            yield item.key, ((clean - lo) / scale)[None], ((prot - lo) / scale)[None], scale
        else:
            clean2d, scale = read_image_2d(item.image, data.channels)
            prot2d = read_image_2d(prot_path, data.channels)[0]
            if clean2d.shape != prot2d.shape:
                raise InputError(f"protected image has shape {prot2d.shape[1:]}, the clean one {clean2d.shape[1:]}",
                                 prot_path)
            yield item.key, clean2d.astype(np.float64), prot2d.astype(np.float64), scale


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

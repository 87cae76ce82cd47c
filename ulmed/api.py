"""The Python API for data-sharing scripts: ``ulmed.protect(...)`` over arrays or files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ulmed.core.budget import DEFAULT_BUDGET
from ulmed.core.method import DEFAULT_METHOD
from ulmed.errors import ConfigError
from ulmed.io.record import IntensityMapping, Record
from ulmed.pipeline.manifest import Manifest
from ulmed.pipeline.methods import build_method
from ulmed.pipeline.protect import run_protection
from ulmed.pipeline.request import ProtectRequest


def protect_array(
    image: np.ndarray,
    *,
    method: str = DEFAULT_METHOD,
    eps: str | float = DEFAULT_BUDGET,
    target: np.ndarray | int | None = None,
    channel_axis: int | None = None,
    seed: int = 0,
    device: str = "auto",
    key: str = "array",
) -> np.ndarray:
    """Protect one in-memory image or volume and return it with the same shape and dtype.

    Integer arrays use their dtype's range as [0, 1] (8/255 is 8 grey levels of a uint8
    image); float arrays must lie in [0, 1].

    Args:
        image: 2D (H, W) or 3D (D, H, W) array, plus a channel axis if ``channel_axis`` is set.
        method: Registered method name.
        eps: L-inf budget (``"auto"``: 8/255 on an array, ``"4/255"``, ``0.03``; native units are
            those of the dtype range).
        target: Optional class label or mask of the spatial shape.
        channel_axis: Axis that holds channels (RGB), if any.
        seed: Seed.
        device: Torch device for methods that use one.
        key: Name used to derive per-record randomness.
    """
    arr = np.asarray(image)
    if arr.ndim - (channel_axis is not None) not in (2, 3):
        raise ConfigError(f"expected a 2D or 3D image (plus a channel axis if given), got shape {arr.shape}")
    chw = np.moveaxis(arr, channel_axis, 0) if channel_axis is not None else arr[None]
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        mapping = IntensityMapping(info.min, info.max, info.min, info.max, quantum=1.0)
    elif np.issubdtype(arr.dtype, np.floating):
        if arr.size and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1):
            raise ConfigError("float arrays must lie in [0, 1]; scale the image or pass an integer array")
        mapping = IntensityMapping(0.0, 1.0, 0.0, 1.0, quantum=0.0)
    else:
        raise ConfigError(f"unsupported array dtype {arr.dtype}")
    record = Record(key=key, image=chw, mapping=mapping, spatial_dims=chw.ndim - 1, kind="array", target=target)
    protected = build_method(method, eps, seed, device).protect(record).image
    if np.issubdtype(arr.dtype, np.integer):
        protected = np.clip(np.rint(protected), mapping.valid_min, mapping.valid_max)
    protected = protected.astype(arr.dtype)
    return np.moveaxis(protected, 0, channel_axis) if channel_axis is not None else protected[0]


def protect(input: Any, output: str | Path | None = None, **kwargs: Any) -> np.ndarray | Manifest:
    """Protect an array (returns the protected array) or a file/folder (returns the manifest).

    Args:
        input: A numpy array, or a path to a DICOM export, NIfTI file/folder, image folder
            or data set.
        output: Output folder; required for paths.
        **kwargs: Passed to :func:`protect_array`, or for paths the options of
            :class:`~ulmed.pipeline.request.ProtectRequest` (``method``, ``eps``, ``masks`` ...)
            and ``progress`` (a wrapper for the main loop).
    """
    if isinstance(input, np.ndarray):
        if output is not None:
            raise ConfigError("arrays are protected in memory; do not pass an output path")
        return protect_array(input, **kwargs)
    if output is None:
        raise ConfigError("protecting files needs an output folder: ulmed.protect(input, output)")
    progress = kwargs.pop("progress", None)
    request = ProtectRequest(Path(input), Path(output), **kwargs)
    return run_protection(request) if progress is None else run_protection(request, progress)

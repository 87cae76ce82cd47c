"""What a protection run is asked to do: one validated, immutable request.

:class:`ProtectRequest` gathers the options of ``ulmed protect`` and of
:func:`ulmed.protect` / :func:`ulmed.pipeline.protect.protect_path` in one frozen object. Its
constructor checks everything that needs neither the method nor the output folder (the input
exists, the part, the engine, the chunk size, the metrics choice), so a bad option fails before
any work; :func:`ulmed.pipeline.plan.plan_run` then turns it into a run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ulmed.core.budget import DEFAULT_BUDGET
from ulmed.core.method import DEFAULT_METHOD
from ulmed.errors import ConfigError, InputError
from ulmed.eval.imperceptibility import metrics_options
from ulmed.pipeline.engines import Engine, EngineConfig
from ulmed.pipeline.journal import CONTROL_DIR
from ulmed.pipeline.shard import Part

#: Records per chunk for methods that fit over the data set (bounded memory; HC18 fits in one).
DEFAULT_CHUNK_SIZE = 1000


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


@dataclass(frozen=True)
class ProtectRequest:
    """The options of one protection run (the keyword options of ``protect_path``).

    Args:
        input_path: DICOM export, NIfTI file/folder, image folder or data-set folder.
        output_path: Output folder (created; must be outside the input). Kept resolved.
        method: Registered method name (``ulmed protect --method``).
        eps: Budget: ``"auto"`` (default: 8/255 at a PSNR of at least 38 dB on images; 16/255 of
            the robust range at a PSNR of at least 40 dB on DICOM and NIfTI), ``"8/255"`` or native such as
            ``"20HU"`` (L-inf), or ``"l2:0.5"`` (L2, for the methods whose ``norms`` include it: random, none,
            em, salm).
        seed: Run seed.
        device: Torch device for methods that use one.
        masks: Optional masks folder matched by relative path.
        strict: Stop at the first bad input instead of skipping it.
        skip_non_image: Leave non-image DICOM objects out instead of copying them.
        dicom_encoding: ``explicit``, ``rle``, ``jpegls`` or ``j2k`` (all lossless).
        overwrite: Allow writing into a non-empty output folder, and start over instead
            of resuming an earlier run there.
        method_options: Extra keyword arguments for the method's constructor (``rho`` ...).
        labels: Optional CSV of class labels by relative path (classification targets).
        deidentify: De-identify DICOM with dicognito before writing (extra ``ulmed[deid]``).
        deid_key: The secret that keys the de-identification (default: ``$ULMED_DEID_KEY``);
            the same key gives the same pseudonyms and UIDs in every part and on resume.
        chunk_size: Records per fit for methods that fit over the data set (None: all at once).
        num_parts: Number of parts the work is split into (``--num-parts``).
        part_id: The part this call does, 0..num_parts-1 (``--part-id``).
        engine: ``local`` or ``ray``.
        workers: Worker processes (local) or concurrent Ray tasks.
        ray_address: Existing Ray cluster to join (engine ``ray``).
        key_salt: The secret that keys record keys derived from UIDs (default: ``$ULMED_KEY_SALT``,
            else the de-identification key, else a random salt kept in ``.ulmed/secret``;
            :mod:`ulmed.pipeline.salt`). Give the same salt to reproduce a run's DICOM output
            byte for byte in another folder.
        metrics: How each record's imperceptibility is measured: ``sampled`` (SSIM over about
            262k window positions per record, the share stated), ``full`` or ``none``
            (no SSIM); PSNR and the norms are always exact.

    Raises:
        InputError: The input does not exist.
        ConfigError: The part, engine, workers, chunk size or metrics choice is invalid.
    """

    input_path: Path
    output_path: Path
    method: str = DEFAULT_METHOD
    eps: str | float = DEFAULT_BUDGET
    seed: int = 0
    device: str = "auto"
    masks: Path | None = None
    strict: bool = False
    skip_non_image: bool = False
    dicom_encoding: str = "explicit"
    overwrite: bool = False
    method_options: Mapping[str, Any] = field(default_factory=dict)
    labels: Path | None = None
    deidentify: bool = False
    deid_key: str | None = field(default=None, repr=False)
    chunk_size: int | None = DEFAULT_CHUNK_SIZE
    num_parts: int = 1
    part_id: int = 0
    engine: Engine | str = Engine.LOCAL
    workers: int = 1
    ray_address: str | None = None
    key_salt: str | None = field(default=None, repr=False)
    metrics: str = "sampled"

    def __post_init__(self) -> None:
        src = Path(self.input_path).expanduser()
        set_ = object.__setattr__  # frozen: the constructor normalises its own fields
        set_(self, "input_path", src)
        set_(self, "output_path", Path(self.output_path).expanduser().resolve())
        set_(self, "masks", _optional_path(self.masks))
        set_(self, "labels", _optional_path(self.labels))
        set_(self, "method_options", dict(self.method_options or {}))
        if not src.exists():
            raise InputError("does not exist; check the -i path", src)
        Part(self.part_id, self.num_parts)  # checked here: a bad part fails before any work
        set_(self, "engine", self.engine_config.name)
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ConfigError(f"--chunk-size must be >= 1, got {self.chunk_size}")
        metrics_options(self.metrics)  # a clear error for an unknown choice, before any work

    @property
    def part(self) -> Part:
        """The part of a sharded run this request does."""
        return Part(self.part_id, self.num_parts)

    @property
    def engine_config(self) -> EngineConfig:
        """How the units are run (engine, workers, Ray cluster)."""
        return EngineConfig(self.engine, self.workers, ray_address=self.ray_address)

    @property
    def control_dir(self) -> Path:
        """The output's run-state folder (journal, run.json, key salt)."""
        return self.output_path / CONTROL_DIR


__all__ = ["DEFAULT_CHUNK_SIZE", "ProtectRequest"]

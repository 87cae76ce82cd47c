"""A protection run over a file or folder: discover, read, protect, write, manifest.

Safety rules enforced here:

* the input is never written: the output may not lie inside the input (nor the input
  inside the output), and every output file is written atomically;
* one bad file is reported, skipped and listed in the manifest, unless ``strict``;
* an existing non-empty output folder is refused unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ulmed.core.method import DEFAULT_METHOD, METHODS, ProtectionMethod
from ulmed.errors import ConfigError, InputError, MissingDependencyError, OutputError
from ulmed.eval.imperceptibility import imperceptibility
from ulmed.io.atomic import atomic_copy
from ulmed.io.base import WriteOptions
from ulmed.io.dicom import write_series
from ulmed.io.discover import Item, discover
from ulmed.io.images import output_relpath, write_image
from ulmed.io.labels import load_labels
from ulmed.io.nifti import write_nifti
from ulmed.io.record import Record
from ulmed.pipeline.manifest import Entry, Manifest, sha256_of
from ulmed.pipeline.units import Unit, read_unit, relative, units_of

log = logging.getLogger("ulmed")
T = TypeVar("T")
#: ``progress(iterable, total, description)`` wraps the main loop (the CLI passes a bar).
Progress = Callable[[Iterable[T], int, str], Iterable[T]]


def _no_progress(items: Iterable[T], total: int, description: str) -> Iterable[T]:
    return items


def check_paths(input_path: Path, output_path: Path, overwrite: bool) -> None:
    """Refuse outputs that could touch the input or silently mix with older results.

    Raises:
        OutputError: The output lies inside the input (or the reverse), or is a file,
            or is a non-empty folder and ``overwrite`` is False.
    """
    src = input_path.resolve()
    dst = output_path.resolve()
    src_dir = src if src.is_dir() else src.parent
    if dst == src_dir or src_dir in dst.parents:
        raise OutputError("output folder lies inside the input; choose an -o outside it (inputs are never written)", dst)
    if dst in src_dir.parents:
        raise OutputError("input lies inside the output folder; choose an -o that does not contain the input", dst)
    if dst.exists() and not dst.is_dir():
        raise OutputError("exists and is not a folder; choose another -o", dst)
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise OutputError("output folder is not empty; choose a new -o or pass --overwrite", dst)


def _register_methods() -> None:
    """Import the packages whose modules register methods."""
    import ulmed.baselines  # noqa: F401
    import ulmed.medical  # noqa: F401
    import ulmed.segmentation  # noqa: F401


def available_methods() -> dict[str, str]:
    """Registered method names with the first line of their docstring."""
    _register_methods()
    return {name: (METHODS.get(name).__doc__ or "").strip().splitlines()[0] for name in METHODS.names()}


def build_method(name: str, eps: str | float, seed: int, device: str, **options: Any) -> ProtectionMethod:
    """Instantiate a registered method by name."""
    _register_methods()
    cls = METHODS.get(name)
    try:
        return cls(budget=eps, seed=seed, device=device, **options)
    except TypeError as exc:  # an option the method does not take
        raise ConfigError(f"method {name!r} does not take these options {sorted(options)}: {exc}") from None


def _write(unit: Unit, protected: Record, root: Path, out: Path, opts: WriteOptions) -> list[tuple[Path, Path, str | None]]:
    """Write one protected record; return (input, output, note) triples."""
    if unit.kind == "dicom":
        return [(src, dst, None) for src, dst in write_series(protected, root, out, opts)]
    assert isinstance(unit.source, Item)
    rel = unit.source.rel
    if unit.kind == "nifti":
        dst = out / rel
        write_nifti(protected, dst)
        return [(unit.source.path, dst, None)]
    out_rel = output_relpath(rel)
    dst = out / out_rel
    write_image(protected, dst)
    note = f"lossy input re-encoded losslessly as {out_rel.name}" if out_rel != rel else None
    return [(unit.source.path, dst, note)]


def _uid_salt(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _iter_protected(
    units: list[Unit], method: ProtectionMethod, root: Path, strict: bool, manifest: Manifest,
    labels: dict[str, int] | None = None,
) -> Iterator[tuple[Unit, Record | None, Record | None]]:
    """Read and protect unit by unit; failures become ``(unit, None, None)`` after a manifest entry.

    Methods that optimise over the data set (``needs_fit``) see every record first.
    """

    def read(unit: Unit) -> Record | None:
        try:
            rec = read_unit(unit, root)
            if labels and rec.target is None:
                rec.target = labels.get(rec.key, labels.get(str(Path(rec.key).parent)))
            return rec
        except (InputError, MissingDependencyError) as exc:
            if strict:
                raise
            log.warning("skipped %s", exc)
            for path in unit.files:
                manifest.add(Entry(relative(path, root), "failed", kind=unit.kind, record=unit.key, reason=exc.reason))
            return None

    if method.needs_fit:
        records = [(u, read(u)) for u in units]
        method.fit([r for _, r in records if r is not None])
        for unit, rec in records:
            yield unit, rec, method.protect(rec) if rec is not None else None
        return
    for unit in units:
        rec = read(unit)
        yield unit, rec, method.protect(rec) if rec is not None else None


def protect_path(
    input_path: str | Path,
    output_path: str | Path,
    *,
    method: str = DEFAULT_METHOD,
    eps: str | float = "8/255",
    seed: int = 0,
    device: str = "auto",
    masks: str | Path | None = None,
    strict: bool = False,
    skip_non_image: bool = False,
    dicom_encoding: str = "explicit",
    overwrite: bool = False,
    progress: Progress = _no_progress,
    method_options: dict[str, Any] | None = None,
    labels: str | Path | None = None,
) -> Manifest:
    """Protect everything under ``input_path`` into ``output_path``.

    Args:
        input_path: DICOM export, NIfTI file/folder, image folder or data-set folder.
        output_path: Output folder (created; must be outside the input).
        method: Registered method name (``ulmed protect --method``).
        eps: L-inf budget, ``"8/255"`` or native such as ``"20HU"``.
        seed: Run seed.
        device: Torch device for methods that use one.
        masks: Optional masks folder matched by relative path.
        strict: Stop at the first bad input instead of skipping it.
        skip_non_image: Leave non-image DICOM objects out instead of copying them.
        dicom_encoding: ``explicit``, ``rle``, ``jpegls`` or ``j2k`` (all lossless).
        overwrite: Allow writing into a non-empty output folder.
        progress: Wrapper for the main loop (progress bar).
        method_options: Extra keyword arguments for the method's constructor (``rho`` ...).
        labels: Optional CSV of class labels by relative path (classification targets).

    Returns:
        The manifest (also written to ``output_path/manifest.json``).
    """
    src = Path(input_path).expanduser()
    out = Path(output_path).expanduser().resolve()
    if not src.exists():
        raise InputError("does not exist; check the -i path", src)
    check_paths(src, out, overwrite)
    protector = build_method(method, eps, seed, device, **(method_options or {}))
    label_map = load_labels(labels) if labels is not None else None
    inv = discover(src, masks)
    root = inv.root
    params = {**protector.params(), "dicom_encoding": dicom_encoding, "skip_non_image": skip_non_image}
    opts = WriteOptions(method=method, budget=f"Linf {protector.budget.spec}", uid_salt=_uid_salt(params), dicom_encoding=dicom_encoding)
    manifest = Manifest(params={**params, "input": str(src.resolve()), "output": str(out), "uid_salt": opts.uid_salt})
    bad = [(p, r, "dicom") for p, r in inv.dicom.bad] + [(p, r, "input") for p, r in inv.bad]
    for path, reason, kind in bad:
        if strict:
            raise InputError(reason, path)
        log.warning("skipped %s: %s", path, reason)
        manifest.add(Entry(relative(path, root), "failed", kind=kind, reason=reason))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({exc.strerror}); choose a writable -o", out) from exc

    units = units_of(inv)
    for unit, clean, protected in progress(_iter_protected(units, protector, root, strict, manifest, label_map), len(units), "protecting"):
        if clean is None or protected is None:
            continue
        budget = protector.budget.describe(clean.mapping)
        metrics = imperceptibility(clean.unit_image(), protected.unit_image(), clean.mapping.scale)
        for src_file, dst_file, note in _write(unit, protected, root, out, opts):
            manifest.add(
                Entry(
                    relative(src_file, root), "written", relative(dst_file, out), unit.kind, unit.key,
                    sha256_of(dst_file), note, budget, metrics,
                )
            )

    manifest.fit = protector.fit_report()
    masks_root = Path(masks).expanduser().resolve() if masks is not None else None
    copies: list[tuple[Path, Path, str]] = []
    for path in inv.targets:
        dst = out / "masks" / path.relative_to(masks_root) if masks_root is not None and masks_root in path.parents else out / path.relative_to(root)
        copies.append((path, dst, "target"))
    copies += [(p, out / p.relative_to(root), "other") for p in inv.others]
    for path in inv.dicom.non_image:
        if skip_non_image:
            manifest.add(Entry(relative(path, root), "skipped", kind="dicom-non-image", reason="non-image DICOM left out (--skip-non-image)"))
        else:
            copies.append((path, out / path.relative_to(root), "dicom-non-image"))
    for path, dst, kind in copies:
        atomic_copy(path, dst)
        manifest.add(Entry(relative(path, root), "copied", relative(dst, out), kind, sha256=sha256_of(dst)))
    for path, reason in inv.skipped:
        manifest.add(Entry(relative(path, root), "skipped", kind="other", reason=reason))
    manifest.save(out)
    return manifest


def summarize(manifest: Manifest) -> dict[str, Any]:
    """Counts and PSNR range of a run, for the CLI's closing line."""
    psnrs = [e.metrics["psnr"] for e in manifest.entries if e.metrics and e.metrics["psnr"] != float("inf")]
    records = {e.record for e in manifest.entries if e.status == "written"}
    return {
        **manifest.counts(),
        "records": len(records),
        "psnr_min": min(psnrs) if psnrs else None,
        "psnr_max": max(psnrs) if psnrs else None,
    }


__all__ = ["available_methods", "build_method", "check_paths", "protect_path", "summarize"]

"""A protection run over a file or folder: discover, read, protect, write, manifest.

Safety rules enforced here:

* the input is never written: the output may not lie inside the input (nor the input
  inside the output), and every output file is written atomically;
* one bad file is reported, skipped and listed in the manifest, unless ``strict``;
* an existing non-empty output folder is refused unless ``overwrite``, or unless it holds
  an earlier run with the same parameters, which is then resumed (:mod:`ulmed.pipeline.journal`).

Scale: units (series, volumes, images, copies) stream through an engine
(:mod:`ulmed.pipeline.engines`) one batch at a time; methods that fit over the data set see
it in chunks of ``chunk_size`` records with their surrogate carried from chunk to chunk;
``num_parts``/``part_id`` split the units deterministically between processes or machines
(:mod:`ulmed.pipeline.shard`), and ``ulmed merge-manifests`` joins the parts.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from ulmed.core.budget import Budget
from ulmed.core.method import DEFAULT_METHOD, METHODS, ProtectionMethod
from ulmed.errors import ConfigError, InputError, OutputError, os_reason
from ulmed.eval.imperceptibility import metrics_options
from ulmed.io.base import WriteOptions
from ulmed.io.discover import discover
from ulmed.io.labels import load_labels
from ulmed.pipeline.engines import EngineConfig, run_units
from ulmed.pipeline.journal import (
    CONTROL_DIR,
    RUN_FILE,
    Journal,
    JournalState,
    check_run_identity,
    params_digest,
    remove_stale_temporaries,
)
from ulmed.pipeline.cleanup import manifest_entries, remove_outputs
from ulmed.pipeline.manifest import Entry, Manifest, sha256_of
from ulmed.pipeline.runstate import Progress, RunState, fit_in_chunks
from ulmed.pipeline.salt import derive_salt, keep_salt, new_salt, salt_fingerprint, stored_salt
from ulmed.pipeline.shard import Part, keys_digest
from ulmed.pipeline.units import copies_of, output_paths, relative, units_of
from ulmed.pipeline.work import WorkContext

log = logging.getLogger("ulmed")
T = TypeVar("T")


def _no_progress(items: Iterable[T], total: int, description: str) -> Iterable[T]:
    return items


def check_paths(input_path: Path, output_path: Path, overwrite: bool) -> None:
    """Refuse outputs that could touch the input or silently mix with older results.

    A non-empty folder that holds an earlier ulmed run is let through here; whether it may be
    resumed is decided by :func:`ulmed.pipeline.journal.check_run_identity`.

    Raises:
        OutputError: The output lies inside the input (or the reverse), or is a file,
            or is a non-empty folder of something else and ``overwrite`` is False.
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
    earlier_run = (dst / CONTROL_DIR).is_dir()  # run.json may still be on its way from another part
    if dst.is_dir() and any(dst.iterdir()) and not overwrite and not earlier_run:
        raise OutputError("output folder is not empty; choose a new -o or pass --overwrite", dst)


#: The module in which each method registers itself. Only the chosen method's module is
#: imported, so training-free methods (lsp, random) run without loading torch or MONAI.
METHOD_MODULES = {
    "none": "ulmed.baselines.random_noise",
    "random": "ulmed.baselines.random_noise",
    "lsp": "ulmed.baselines.lsp",
    "em": "ulmed.baselines.em",
    "salm": "ulmed.medical.salm",
    "unseg": "ulmed.segmentation.method",
}


def _register_methods() -> None:
    """Import every module that registers a method."""
    for module in sorted(set(METHOD_MODULES.values())):
        importlib.import_module(module)


def method_class(name: str) -> type[ProtectionMethod]:
    """The class of a method, importing only its own module when it is a known one."""
    if name not in METHODS:
        if name in METHOD_MODULES:
            importlib.import_module(METHOD_MODULES[name])
        else:
            _register_methods()
    return METHODS.get(name)


def available_methods() -> dict[str, str]:
    """Registered method names with the first line of their docstring."""
    _register_methods()
    return {name: (METHODS.get(name).__doc__ or "").strip().splitlines()[0] for name in METHODS.names()}


def build_method(name: str, eps: str | float, seed: int, device: str, **options: Any) -> ProtectionMethod:
    """Instantiate a registered method by name."""
    cls = method_class(name)
    if Budget.parse(eps).norm not in cls.norms:
        _register_methods()  # the constructor's refusal then names every method that supports the norm
    try:
        return cls(budget=eps, seed=seed, device=device, **options)
    except TypeError as exc:  # an option the method does not take
        raise ConfigError(f"method {name!r} does not take these options {sorted(options)}: {exc}") from None


#: Records per chunk for methods that fit over the data set (bounded memory; HC18 fits in one).
DEFAULT_CHUNK_SIZE = 1000


def _uid_salt(params: dict[str, Any]) -> str:
    return params_digest(params)[:16]


#: Environment variable holding the de-identification key (never written anywhere).
DEID_KEY_ENV = "ULMED_DEID_KEY"


def _deidentify_options(deidentify: bool, key: str | None) -> tuple[Any, dict[str, str]]:
    """The writer's de-identification options and a fingerprint of the key for run.json.

    The key must be secret: with it, anyone could test guessed names or UIDs against the
    output. It is therefore never derived from the run parameters (which the manifest
    publishes) and only a salted hash of it is kept, so a resume with another key is refused.
    """
    if not deidentify:
        return None, {}
    key = key or os.environ.get(DEID_KEY_ENV)
    if not key or len(key) < 16:
        raise ConfigError(
            f"--deidentify needs a secret key of at least 16 characters in ${DEID_KEY_ENV} (or deid_key=), "
            f"the same for every part of the run, e.g. export {DEID_KEY_ENV}=$(openssl rand -hex 32); keep it away from the shared data"
        )
    from ulmed.io.deidentify import DeidentifyOptions

    fingerprint = hashlib.sha256(f"ulmed-deid-key:{key}".encode()).hexdigest()[:16]
    return DeidentifyOptions(seed=key), {"deid_key_fingerprint": fingerprint}


def _relative_reasons(entries: list[Entry], root: Path) -> None:
    """Cut the input root out of the reasons (a library's message may name the absolute path)."""
    prefix = f"{root.resolve()}{os.sep}"
    for entry in entries:
        if entry.reason and prefix in entry.reason:
            entry.reason = entry.reason.replace(prefix, "")


def start_over(out: Path, journal: Journal, suffix: str) -> int:
    """``--overwrite``: delete what the earlier run of this part wrote, then forget it.

    What it wrote is what its journal and its manifest list; a file is deleted only when it
    still holds what was written (:func:`ulmed.pipeline.cleanup.remove_outputs`), so files the
    run did not write stay.

    Returns:
        How many files were deleted.
    """
    state = journal.load(out)
    entries = [e for group in (*state.units.values(), *state.lost.values()) for e in group]
    entries += manifest_entries(out / f"manifest{suffix}.json")
    removed = remove_outputs(out, entries)
    journal.reset()
    return removed


def drop_departed(out: Path, journal: Journal, done: JournalState, keys: set[str]) -> int:
    """Delete the outputs of finished units that are no longer in the input, and journal it.

    Returns:
        How many units were dropped.
    """
    departed = [k for k in (*done.units, *done.lost) if k not in keys]
    for key in departed:
        entries = done.units.pop(key, None) or done.lost.pop(key, [])
        remove_outputs(out, entries)
        journal.unit_removed(key)
    return len(departed)


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
    deidentify: bool = False,
    deid_key: str | None = None,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    num_parts: int = 1,
    part_id: int = 0,
    engine: str = "local",
    workers: int = 1,
    ray_address: str | None = None,
    key_salt: str | None = None,
    metrics: str = "sampled",
) -> Manifest:
    """Protect everything under ``input_path`` into ``output_path``; resume an interrupted run.

    Args:
        input_path: DICOM export, NIfTI file/folder, image folder or data-set folder.
        output_path: Output folder (created; must be outside the input).
        method: Registered method name (``ulmed protect --method``).
        eps: Budget, ``"8/255"`` or native such as ``"20HU"`` (L-inf), or ``"l2:0.5"`` (L2,
            for the methods whose ``norms`` include it: random, none, em, salm).
        seed: Run seed.
        device: Torch device for methods that use one.
        masks: Optional masks folder matched by relative path.
        strict: Stop at the first bad input instead of skipping it.
        skip_non_image: Leave non-image DICOM objects out instead of copying them.
        dicom_encoding: ``explicit``, ``rle``, ``jpegls`` or ``j2k`` (all lossless).
        overwrite: Allow writing into a non-empty output folder, and start over instead
            of resuming an earlier run there.
        progress: Wrapper for the main loop (progress bar).
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

    Returns:
        The manifest, also written to ``output_path/manifest.json`` (one part:
        ``manifest.part-K-of-N.json``; join the parts with ``ulmed merge-manifests``).
    """
    src = Path(input_path).expanduser()
    out = Path(output_path).expanduser().resolve()
    if not src.exists():
        raise InputError("does not exist; check the -i path", src)
    part = Part(part_id, num_parts)
    engine_config = EngineConfig(engine, workers, ray_address=ray_address)
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"--chunk-size must be >= 1, got {chunk_size}")
    check_paths(src, out, overwrite)
    metrics_options(metrics)  # a clear error for an unknown choice, before any work
    protector = build_method(method, eps, seed, device, **(method_options or {}))
    label_map = load_labels(labels) if labels is not None else None
    params = {**protector.params(), "dicom_encoding": dicom_encoding, "skip_non_image": skip_non_image}
    if deidentify:
        params["deidentify"] = "dicognito"
    salt = _uid_salt(params)
    deid, deid_identity = _deidentify_options(deidentify, deid_key)
    given_salt = derive_salt(deid.seed if deid is not None else None, key_salt)
    key_salt_now = given_salt or stored_salt(out / CONTROL_DIR) or new_salt()
    inv = discover(src, masks, key_salt_now)
    root = inv.root
    opts = WriteOptions(method=method, budget=protector.budget.label, uid_salt=salt, dicom_encoding=dicom_encoding, deidentify=deid)
    run_params = {
        **params, "input": src.resolve().name, "uid_salt": salt,
        "masks": Path(masks).expanduser().resolve().name if masks is not None else None,
        "labels": Path(labels).expanduser().resolve().name if labels is not None else None,
        "chunk_size": chunk_size if protector.needs_fit else None, "num_parts": part.count, "metrics": metrics,
    }
    if deid is not None:
        from ulmed.io.deidentify import deidentifier_info

        run_params["deidentifier"] = deidentifier_info()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({os_reason(exc)}); choose a writable -o", out) from exc
    if given_salt is None and keep_salt(out / CONTROL_DIR, key_salt_now) != key_salt_now:
        key_salt_now = stored_salt(out / CONTROL_DIR) or key_salt_now  # another part stored its salt first
        inv = discover(src, masks, key_salt_now)
    # The run's identity holds no path: a moved input folder resumes, its units' contents decide.
    where = ("input", "masks", "labels")
    identity = {**{k: v for k, v in run_params.items() if k not in where}, **deid_identity,
                "key_salt_fingerprint": salt_fingerprint(key_salt_now),
                "labels_sha256": sha256_of(Path(labels).expanduser()) if labels is not None else None}
    resumed = check_run_identity(out, identity, overwrite)
    journal = Journal(out, part.suffix)
    if overwrite:
        n = start_over(out, journal, part.suffix)
        if n:
            log.info("--overwrite: removed %d file(s) that the earlier run wrote", n)
        resumed = False
    done = JournalState()
    if resumed:
        done = journal.load(out)
        log.info("resuming: %d unit(s) already done", len(done.units))

    masks_root = Path(masks).expanduser().resolve() if masks is not None else None
    all_units = units_of(inv)
    all_copies = copies_of(inv, masks_root, skip_non_image)
    units = [u for u in all_units if part.owns(u.key)]
    copies = [u for u in all_copies if part.owns(u.key)]
    gone = drop_departed(out, journal, done, {u.key for u in (*units, *copies)})
    if gone:
        log.warning("%d unit(s) of the earlier run are no longer in the input: their outputs were removed", gone)
    owned = {p for u in (*units, *copies) for p in output_paths(u, root)}
    owned |= {f"manifest{part.suffix}.json", f"{CONTROL_DIR}/{RUN_FILE}"}
    owned |= {f"{CONTROL_DIR}/state{part.suffix}.chunk-{i}.pt" for i in range(len(units) // (chunk_size or 1) + 1)}
    removed = remove_stale_temporaries(out, owned)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", removed)
    manifest = Manifest(params={**run_params, "output": ".", "engine": engine_config.name, "workers": engine_config.workers})
    manifest.root, manifest.out = root, out
    discovered: list[Entry] = []
    bad = [(p, r, "dicom") for p, r in inv.dicom.bad] + [(p, r, "input") for p, r in inv.bad]
    for path, reason, kind in bad:
        if not part.owns(f"entry:{relative(path, root)}"):
            continue
        if strict:
            raise InputError(reason, path)
        log.warning("skipped %s: %s", path, reason)
        discovered.append(Entry(relative(path, root), "failed", kind=kind, reason=reason))
    skipped = [(p, "non-image DICOM left out (--skip-non-image)", "dicom-non-image") for p in inv.dicom.non_image if skip_non_image]
    skipped += [(p, r, "other") for p, r in inv.skipped]
    skipped += [(p, r, "dicom") for p, r in inv.dicom.skipped]  # another copy of the instance is used
    for path, reason, kind in skipped:
        if part.owns(f"entry:{relative(path, root)}"):
            discovered.append(Entry(relative(path, root), "skipped", kind=kind, reason=reason))

    run = RunState(out, part, journal, done, strict, root)
    ctx = WorkContext(root, out, protector, opts, label_map, metrics)
    started = time.perf_counter()
    if protector.needs_fit:
        if engine_config.name != "local" or engine_config.workers > 1:
            log.info("%s fits over the data set: it protects in this process (spread it with --num-parts)", method)
        manifest.fit = fit_in_chunks(run, units, ctx, chunk_size, progress)
    else:
        for result in progress(run_units(run.todo(units), ctx, engine_config), len(units) - run.resumed, "protecting"):
            run.commit(result)
        if engine_config.name == "local" and engine_config.workers == 1:
            manifest.fit = protector.fit_report()  # what it saw in this process; entries carry per-record notes
    for result in run_units(run.todo(copies), ctx, EngineConfig()):  # plain copies: not worth a second pool
        run.commit(result)

    manifest.entries = [e for u in (*units, *copies) for e in run.entries.get(u.key, [])] + discovered
    _relative_reasons(manifest.entries, root)
    manifest.run = {
        "units": len(units), "copies": len(copies), "done_now": run.new, "resumed": run.resumed,
        "changed": run.changed, "removed": gone,
        "failed_units": run.failed, "seconds": round(time.perf_counter() - started, 3),
    }
    if part.count > 1:
        manifest.part = {
            "index": part.index, "count": part.count, "inventory_units": len(all_units) + len(all_copies),
            "inventory_sha256": keys_digest(u.key for u in (*all_units, *all_copies)),
            "units": sorted(u.key for u in (*units, *copies)),
        }
    manifest.save(out, part.suffix)
    return manifest


def summarize(manifest: Manifest) -> dict[str, Any]:
    """Counts, records by kind (series, volumes, images), resumed and PSNR range of a run."""
    psnrs = [e.metrics["psnr"] for e in manifest.entries if e.metrics and e.metrics["psnr"] not in (None, float("inf"))]
    records: dict[str, str] = {e.record: e.kind for e in manifest.entries if e.status == "written" and e.record}
    words = {"dicom": "series", "nifti": "volume(s)", "image": "image(s)"}
    by_kind = {words.get(k, k): sum(v == k for v in records.values()) for k in ("dicom", "nifti", "image")}
    suffix = Part(manifest.part["index"], manifest.part["count"]).suffix if manifest.part else ""
    return {
        **manifest.counts(),
        "records": len(records),
        "by_kind": {k: n for k, n in by_kind.items() if n},
        "resumed": manifest.run.get("resumed", 0),
        "changed": manifest.run.get("changed", 0),
        "removed": manifest.run.get("removed", 0),
        "psnr_min": min(psnrs) if psnrs else None,
        "psnr_max": max(psnrs) if psnrs else None,
        "manifest": f"manifest{suffix}.json",
    }


__all__ = ["available_methods", "build_method", "check_paths", "protect_path", "summarize"]

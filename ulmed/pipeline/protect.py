"""A protection run over a file or folder: discover, read, protect, write, manifest.

A run goes through five steps, each in its own module:

1. :class:`~ulmed.pipeline.request.ProtectRequest`: the options, checked early;
2. :func:`~ulmed.pipeline.plan.plan_run`: the method, the secrets, the inputs, the run's identity;
   :func:`~ulmed.pipeline.plan.part_work`: the units this part does;
3. :func:`~ulmed.pipeline.resume.resume_state`: what an earlier run finished (or start over);
4. :func:`run_engine`: the units through an engine (:mod:`ulmed.pipeline.engines`);
5. :func:`finish_manifest`: the entries and counts, saved as the manifest.

Safety rules enforced here:

* the input is never written: the output may not lie inside the input (nor the input
  inside the output), and every output file is written atomically;
* one bad file is reported, skipped and listed in the manifest, unless ``strict``;
* an existing non-empty output folder is refused unless ``overwrite``, or unless it holds
  an earlier run with the same parameters, which is then resumed (:mod:`ulmed.pipeline.journal`).

Scale: units (series, volumes, images, copies) stream through an engine one batch at a time;
methods that fit over the data set see it in chunks of ``chunk_size`` records with their
surrogate carried from chunk to chunk; ``num_parts``/``part_id`` split the units
deterministically between processes or machines (:mod:`ulmed.pipeline.shard`), and
``ulmed merge-manifests`` joins the parts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from ulmed.pipeline.engines import Engine, EngineConfig, run_units
from ulmed.pipeline.manifest import Entry, Manifest
from ulmed.pipeline.methods import METHOD_MODULES, available_methods, build_method, method_class
from ulmed.pipeline.plan import DEID_KEY_ENV, PartWork, RunPlan, check_paths, discovered_entries, part_work, plan_run
from ulmed.pipeline.request import DEFAULT_CHUNK_SIZE, ProtectRequest
from ulmed.pipeline.resume import clear_leftovers, drop_departed, resume_state, start_over
from ulmed.pipeline.runstate import Progress, RunState, fit_in_chunks
from ulmed.pipeline.shard import Part, keys_digest
from ulmed.pipeline.work import WorkContext

log = logging.getLogger("ulmed")
T = TypeVar("T")


def _no_progress(items: Iterable[T], total: int, description: str) -> Iterable[T]:
    return items


def protect_path(input_path: str | Path, output_path: str | Path, *, progress: Progress = _no_progress,
                 **options: Any) -> Manifest:
    """Protect everything under ``input_path`` into ``output_path``; resume an interrupted run.

    Args:
        input_path: DICOM export, NIfTI file/folder, image folder or data-set folder.
        output_path: Output folder (created; must be outside the input).
        progress: Wrapper for the main loop (progress bar).
        **options: The keyword options of :class:`~ulmed.pipeline.request.ProtectRequest`:
            ``method``, ``eps``, ``seed``, ``device``, ``masks``, ``strict``, ``skip_non_image``,
            ``dicom_encoding``, ``overwrite``, ``method_options``, ``labels``, ``deidentify``,
            ``deid_key``, ``chunk_size``, ``num_parts``, ``part_id``, ``engine``, ``workers``,
            ``ray_address``, ``key_salt``, ``metrics``.

    Returns:
        The manifest, also written to ``output_path/manifest.json`` (one part:
        ``manifest.part-K-of-N.json``; join the parts with ``ulmed merge-manifests``).
    """
    return run_protection(ProtectRequest(Path(input_path), Path(output_path), **options), progress)


def run_protection(request: ProtectRequest, progress: Progress = _no_progress) -> Manifest:
    """Carry out a request: plan, resume, run the units, write the manifest.

    Args:
        request: The validated options of the run.
        progress: Wrapper for the main loop (progress bar).

    Returns:
        The manifest, also saved in the output folder.
    """
    plan = plan_run(request)
    journal, done = resume_state(request, plan.identity)
    work = part_work(plan.inventory, request)
    gone = clear_leftovers(request, journal, done, work, plan.root)
    engine = request.engine_config
    manifest = Manifest(params={**plan.params, "output": ".", "engine": engine.name, "workers": engine.workers})
    manifest.root, manifest.out = plan.root, request.output_path
    discovered = discovered_entries(plan.inventory, request)
    run = RunState(request.output_path, request.part, journal, done, request.strict, plan.root)
    started = time.perf_counter()
    manifest.fit = run_engine(plan, run, work, progress)
    journal.sync()
    finish_manifest(manifest, run, work, discovered, gone, round(time.perf_counter() - started, 3))
    manifest.save(request.output_path, request.part.suffix)
    return manifest


def run_engine(plan: RunPlan, run: RunState, work: PartWork, progress: Progress) -> dict[str, Any]:
    """Protect this part's records, then copy its files; every result is committed as it comes.

    A method that fits over the data set runs here, chunk by chunk (:func:`fit_in_chunks`);
    the others go through the request's engine.

    Returns:
        What the method's fit found (empty when the records ran in other processes).
    """
    request, method = plan.request, plan.method
    ctx = WorkContext(plan.root, request.output_path, method, plan.write_options, plan.labels, request.metrics)
    engine = request.engine_config
    one_process = engine.name is Engine.LOCAL and engine.workers == 1
    fit: dict[str, Any] = {}
    if method.needs_fit:
        if not one_process:
            log.info("%s fits over the data set: it protects in this process (spread it with --num-parts)",
                     request.method)
        fit = fit_in_chunks(run, work.units, ctx, request.chunk_size, progress)
    else:
        todo = run.todo(work.units)  # takes over what an earlier run finished: run.resumed counts it
        for result in progress(run_units(todo, ctx, engine), len(work.units) - run.resumed, "protecting"):
            run.commit(result)
        if one_process:
            fit = method.fit_report()  # what it saw in this process; entries carry per-record notes
    for result in run_units(run.todo(work.copies), ctx, EngineConfig()):  # plain copies: not worth a second pool
        run.commit(result)
    return fit


def _relative_reasons(entries: list[Entry], root: Path) -> None:
    """Cut the input root out of the reasons (a library's message may name the absolute path)."""
    prefix = f"{root.resolve()}{os.sep}"
    for entry in entries:
        if entry.reason and prefix in entry.reason:
            entry.reason = entry.reason.replace(prefix, "")


def finish_manifest(manifest: Manifest, run: RunState, work: PartWork, discovered: list[Entry], gone: int,
                    seconds: float) -> None:
    """Fill in the manifest's entries (units in order, then bad and skipped inputs), counts and part.

    Args:
        manifest: The run's manifest (parameters set).
        run: The run's bookkeeping, after every unit was committed.
        work: The units of the inventory and of this part.
        discovered: Entries of the inputs that are no unit (:func:`ulmed.pipeline.plan.discovered_entries`).
        gone: Finished units dropped because their input left.
        seconds: How long the units took.
    """
    manifest.entries = [e for u in work.mine for e in run.entries.get(u.key, [])] + discovered
    _relative_reasons(manifest.entries, run.root)
    manifest.run = {
        "units": len(work.units), "copies": len(work.copies), "done_now": run.new, "resumed": run.resumed,
        "changed": run.changed, "removed": gone, "failed_units": run.failed, "seconds": seconds,
    }
    part = run.part
    if part.count > 1:
        everything = (*work.all_units, *work.all_copies)
        manifest.part = {
            "index": part.index, "count": part.count, "inventory_units": len(everything),
            "inventory_sha256": keys_digest(u.key for u in everything),
            "units": sorted(u.key for u in work.mine),
        }


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


__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEID_KEY_ENV", "METHOD_MODULES", "ProtectRequest", "available_methods", "build_method",
    "check_paths", "drop_departed", "finish_manifest", "method_class", "protect_path", "run_engine",
    "run_protection", "start_over", "summarize",
]

"""Planning a protection run: from a :class:`~ulmed.pipeline.request.ProtectRequest` to a :class:`RunPlan`.

:func:`plan_run` checks the paths, builds the method, settles the secrets (the de-identification
key and the key salt, :mod:`ulmed.pipeline.salt`), finds the inputs, creates the output folder
and fixes the run's identity, the parameters that ``run.json`` compares on a resume.
:func:`part_work` then picks the units this part does, and :func:`discovered_entries` the
manifest entries of the inputs that are no unit (bad or skipped files).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ulmed.core.method import ProtectionMethod
from ulmed.errors import ConfigError, InputError, OutputError, os_reason
from ulmed.io.base import WriteOptions
from ulmed.io.discover import Inventory, discover
from ulmed.io.labels import load_labels
from ulmed.pipeline.journal import CONTROL_DIR, params_digest
from ulmed.pipeline.manifest import Entry, sha256_of
from ulmed.pipeline.methods import build_method
from ulmed.pipeline.request import ProtectRequest
from ulmed.pipeline.salt import derive_salt, keep_salt, new_salt, salt_fingerprint, stored_salt
from ulmed.pipeline.units import Unit, copies_of, relative, units_of

log = logging.getLogger("ulmed")

#: Environment variable holding the de-identification key (never written anywhere).
DEID_KEY_ENV = "ULMED_DEID_KEY"
#: Run parameters that name a path: recorded in the manifest, left out of the run's identity.
_WHERE = ("input", "masks", "labels")


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
        raise OutputError("output folder lies inside the input; choose an -o outside it (inputs are never written)",
                          dst)
    if dst in src_dir.parents:
        raise OutputError("input lies inside the output folder; choose an -o that does not contain the input", dst)
    if dst.exists() and not dst.is_dir():
        raise OutputError("exists and is not a folder; choose another -o", dst)
    earlier_run = (dst / CONTROL_DIR).is_dir()  # run.json may still be on its way from another part
    if dst.is_dir() and any(dst.iterdir()) and not overwrite and not earlier_run:
        raise OutputError("output folder is not empty; choose a new -o or pass --overwrite", dst)


def deidentify_options(deidentify: bool, key: str | None) -> tuple[Any, dict[str, str]]:
    """The writer's de-identification options and a fingerprint of the key for run.json.

    The key must be secret: with it, anyone could test guessed names or UIDs against the
    output. It is therefore never derived from the run parameters (which the manifest
    publishes) and only a salted hash of it is kept, so a resume with another key is refused.

    Raises:
        ConfigError: ``deidentify`` without a key of at least 16 characters.
    """
    if not deidentify:
        return None, {}
    key = key or os.environ.get(DEID_KEY_ENV)
    if not key or len(key) < 16:
        raise ConfigError(
            f"--deidentify needs a secret key of at least 16 characters in ${DEID_KEY_ENV} (or deid_key=), "
            f"the same for every part of the run, e.g. export {DEID_KEY_ENV}=$(openssl rand -hex 32); "
            "keep it away from the shared data"
        )
    from ulmed.io.deidentify import DeidentifyOptions

    fingerprint = hashlib.sha256(f"ulmed-deid-key:{key}".encode()).hexdigest()[:16]
    return DeidentifyOptions(seed=key), {"deid_key_fingerprint": fingerprint}


@dataclass
class RunPlan:
    """What :func:`plan_run` settled before any unit is done.

    Args:
        request: The request it was made from.
        method: The protection method, built.
        labels: Class labels by relative path (``labels=``), if any.
        write_options: The writers' options (UID salt, DICOM encoding, de-identification).
        params: The run's parameters as the manifest records them.
        identity: What ``run.json`` compares on a resume (no path: a moved input resumes).
        inventory: The inputs found, keyed with the run's key salt.
    """

    request: ProtectRequest
    method: ProtectionMethod
    labels: dict[str, int] | None
    write_options: WriteOptions
    params: dict[str, Any]
    identity: dict[str, Any]
    inventory: Inventory

    @property
    def root(self) -> Path:
        """The input root (the folder the inputs' relative paths start from)."""
        return self.inventory.root


def _name(path: Path | None) -> str | None:
    return path.expanduser().resolve().name if path is not None else None


def output_params(request: ProtectRequest, method: ProtectionMethod) -> dict[str, Any]:
    """The parameters that shape the output files (their digest salts the new DICOM UIDs)."""
    params = {**method.params(), "dicom_encoding": request.dicom_encoding, "skip_non_image": request.skip_non_image}
    if request.deidentify:
        params["deidentify"] = "dicognito"
    return params


def manifest_params(request: ProtectRequest, method: ProtectionMethod, params: dict[str, Any],
                    uid_salt: str) -> dict[str, Any]:
    """The run's parameters as the manifest records them: the output's, names of the inputs, how it ran."""
    recorded = {
        **params, "input": request.input_path.resolve().name, "uid_salt": uid_salt,
        "masks": _name(request.masks), "labels": _name(request.labels),
        "chunk_size": request.chunk_size if method.needs_fit else None, "num_parts": request.num_parts,
        "metrics": request.metrics,
    }
    if request.deidentify:
        from ulmed.io.deidentify import deidentifier_info

        recorded["deidentifier"] = deidentifier_info()
    return recorded


def run_identity(request: ProtectRequest, params: dict[str, Any], deid_identity: dict[str, str],
                 key_salt: str) -> dict[str, Any]:
    """What must match for a rerun to resume: the parameters without paths, the secrets' fingerprints."""
    labels = request.labels
    return {**{k: v for k, v in params.items() if k not in _WHERE}, **deid_identity,
            "key_salt_fingerprint": salt_fingerprint(key_salt),
            "labels_sha256": sha256_of(labels.expanduser()) if labels is not None else None}


def make_output_folder(out: Path) -> None:
    """Create the output folder, or say in one line why it cannot be."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder ({os_reason(exc)}); choose a writable -o", out) from exc


def plan_run(request: ProtectRequest) -> RunPlan:
    """Check the paths, build the method, settle the secrets, find the inputs, create the output.

    The inputs are found before the output folder is created (a bad input leaves nothing
    behind). Without a given key salt, the random one is stored in the output; when another
    part stored its salt first, that one is used and the inputs are keyed again.

    Raises:
        UlmedError: A path, the method, a secret or the inputs cannot be used.
    """
    check_paths(request.input_path, request.output_path, request.overwrite)
    method = build_method(request.method, request.eps, request.seed, request.device, **request.method_options)
    labels = load_labels(request.labels) if request.labels is not None else None
    params = output_params(request, method)
    uid_salt = params_digest(params)[:16]
    deid, deid_identity = deidentify_options(request.deidentify, request.deid_key)
    given_salt = derive_salt(deid.seed if deid is not None else None, request.key_salt)
    key_salt = given_salt or stored_salt(request.control_dir) or new_salt()
    inventory = discover(request.input_path, request.masks, key_salt)
    write_options = WriteOptions(method=request.method, budget=method.budget.label, uid_salt=uid_salt,
                                 dicom_encoding=request.dicom_encoding, deidentify=deid)
    recorded = manifest_params(request, method, params, uid_salt)
    make_output_folder(request.output_path)
    if given_salt is None and keep_salt(request.control_dir, key_salt) != key_salt:
        key_salt = stored_salt(request.control_dir) or key_salt  # another part stored its salt first
        inventory = discover(request.input_path, request.masks, key_salt)
    identity = run_identity(request, recorded, deid_identity, key_salt)
    return RunPlan(request, method, labels, write_options, recorded, identity, inventory)


@dataclass
class PartWork:
    """The units of the whole inventory and those this part does.

    Args:
        all_units: Every record to protect (series, volumes, images), in a stable order.
        all_copies: Every file to copy unchanged.
        units: The records this part protects.
        copies: The files this part copies.
    """

    all_units: list[Unit]
    all_copies: list[Unit]
    units: list[Unit]
    copies: list[Unit]

    @property
    def mine(self) -> list[Unit]:
        """This part's units, records first, then copies."""
        return [*self.units, *self.copies]


def part_work(inventory: Inventory, request: ProtectRequest) -> PartWork:
    """Split the inventory's units into the whole and this part's share (:mod:`ulmed.pipeline.shard`)."""
    masks_root = request.masks.expanduser().resolve() if request.masks is not None else None
    all_units = units_of(inventory)
    all_copies = copies_of(inventory, masks_root, request.skip_non_image)
    part = request.part
    return PartWork(all_units, all_copies, [u for u in all_units if part.owns(u.key)],
                    [u for u in all_copies if part.owns(u.key)])


def discovered_entries(inventory: Inventory, request: ProtectRequest) -> list[Entry]:
    """Manifest entries of this part's inputs that are no unit: bad files (``failed``) and left-out ones.

    Raises:
        InputError: A bad input, with ``strict``.
    """
    root, part = inventory.root, request.part
    entries: list[Entry] = []
    bad = [(p, r, "dicom") for p, r in inventory.dicom.bad] + [(p, r, "input") for p, r in inventory.bad]
    for path, reason, kind in bad:
        if not part.owns(f"entry:{relative(path, root)}"):
            continue
        if request.strict:
            raise InputError(reason, path)
        log.warning("skipped %s: %s", path, reason)
        entries.append(Entry(relative(path, root), "failed", kind=kind, reason=reason))
    skipped = [(p, "non-image DICOM left out (--skip-non-image)", "dicom-non-image")
               for p in inventory.dicom.non_image if request.skip_non_image]
    skipped += [(p, r, "other") for p, r in inventory.skipped]
    skipped += [(p, r, "dicom") for p, r in inventory.dicom.skipped]  # another copy of the instance is used
    for path, reason, kind in skipped:
        if part.owns(f"entry:{relative(path, root)}"):
            entries.append(Entry(relative(path, root), "skipped", kind=kind, reason=reason))
    return entries


__all__ = ["DEID_KEY_ENV", "PartWork", "RunPlan", "check_paths", "deidentify_options", "discovered_entries",
           "part_work", "plan_run"]

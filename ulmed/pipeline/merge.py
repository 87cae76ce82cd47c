"""Join the manifests of a sharded run (``ulmed merge-manifests``) and check the split.

Each part ``K`` of ``N`` writes ``manifest.part-K-of-N.json`` with the keys of the units it
owned and a digest of the whole inventory. Merging checks that every part is there and
was run with the same parameters on the same inventory, that no unit was owned (or output
written) by two parts, that the parts' units add up to the inventory, and that every unit
a part owned has its entries; then it writes one ``manifest.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ulmed.errors import InputError
from ulmed.pipeline.manifest import MANIFEST_NAME, Entry, Manifest
from ulmed.pipeline.shard import keys_digest

_PART = re.compile(r"^manifest\.part-(\d+)-of-(\d+)\.json$")
#: Parameters that may differ between parts (how each part was run, not what it made).
_PER_PART = ("engine", "workers", "output")


def _load_parts(folder: Path) -> dict[int, dict[str, Any]]:
    found: dict[int, dict[str, Any]] = {}
    counts: set[int] = set()
    for path in sorted(folder.glob("manifest.part-*-of-*.json")):
        match = _PART.match(path.name)
        if match is None:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read this part manifest ({exc}); rerun that part", path) from None
        found[int(match.group(1))] = data
        counts.add(int(match.group(2)))
    if not found:
        raise InputError("holds no part manifests (manifest.part-K-of-N.json); "
                         "run ulmed protect with --num-parts/--part-id first", folder)
    if len(counts) > 1:
        raise InputError(f"holds parts of runs split in different ways ({sorted(counts)} parts); keep one split",
                         folder)
    total = counts.pop()
    missing = sorted(set(range(total)) - set(found))
    if missing:
        names = ", ".join(f"manifest.part-{k}-of-{total}.json" for k in missing)
        raise InputError(f"part(s) {missing} of {total} are missing ({names}); "
                         "run them with --part-id and merge again", folder)
    return found


def _unit_has_entries(key: str, entries: list[dict[str, Any]]) -> bool:
    if key.startswith("copy:"):
        return any(e.get("output") == key[5:] for e in entries)
    return any(e.get("record") == key for e in entries)


def merge_manifests(folder: str | Path) -> Manifest:
    """Check and join the part manifests in ``folder`` into ``folder/manifest.json``.

    Raises:
        InputError: A part is missing or unreadable, parts disagree on parameters or
            inventory, a unit was done by two parts or by none, or an output was written twice.
    """
    root = Path(folder).expanduser().resolve()
    parts = _load_parts(root)
    first = parts[0]
    common = {k: v for k, v in first["params"].items() if k not in _PER_PART}
    owner: dict[str, int] = {}
    outputs: dict[str, int] = {}
    entries: list[dict[str, Any]] = []
    for index, data in sorted(parts.items()):
        name = f"manifest.part-{index}-of-{len(parts)}.json"
        params = {k: v for k, v in data["params"].items() if k not in _PER_PART}
        if params != common:
            changed = sorted(k for k in set(params) | set(common) if params.get(k) != common.get(k))
            raise InputError(f"was run with other parameters than part 0 ({', '.join(changed)}); "
                             "rerun it with the same ones", root / name)
        info = data.get("part", {})
        if info.get("inventory_sha256") != first["part"]["inventory_sha256"]:
            raise InputError("saw a different input inventory than part 0 (files added or removed in between); "
                             "rerun every part", root / name)
        for key in info.get("units", []):
            if key in owner:
                raise InputError(f"unit {key!r} was done by parts {owner[key]} and {index}; "
                                 "rerun the parts with one --num-parts", root)
            owner[key] = index
            if not _unit_has_entries(key, data["entries"]):
                raise InputError(f"part {index} owned {key!r} but has no entry for it; "
                                 f"rerun part {index} to finish it", root / name)
        for e in data["entries"]:
            out = e.get("output")
            if out is not None and out in outputs and e["status"] in ("written", "copied"):
                raise InputError(f"output {out} was written by parts {outputs[out]} and {index}", root)
            if out is not None:
                outputs[out] = index
        entries += data["entries"]
    expected = first["part"]["inventory_units"]
    if len(owner) != expected or keys_digest(owner) != first["part"]["inventory_sha256"]:
        raise InputError(f"the parts cover {len(owner)} of {expected} units of the inventory; "
                         "rerun the parts that are short", root)
    manifest = Manifest(params={**common, "output": "."}, versions=first["versions"],
                        entries=[Entry(**e) for e in sorted(entries, key=lambda e: e["input"])])
    fits = {str(k): v.get("fit", {}) for k, v in sorted(parts.items()) if v.get("fit")}
    manifest.fit = {"parts": fits} if fits else {}
    manifest.run = {
        "parts": len(parts),
        "units": sum(v.get("run", {}).get("units", 0) + v.get("run", {}).get("copies", 0) for v in parts.values()),
        "seconds_per_part": [v.get("run", {}).get("seconds") for _, v in sorted(parts.items())],
    }
    manifest.save(root)
    return manifest


__all__ = ["MANIFEST_NAME", "merge_manifests"]

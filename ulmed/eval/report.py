"""The evaluation report: ratios to the clean baseline, transfer notes, and the files.

:func:`write_report` completes the grid's raw report (ratio of every cell to the clean
cell of the same victim and defense, one transfer note per protection and victim) and
writes, atomically, into the output folder:

* ``report.json``: everything (settings, protections with their manifest parameters and
  imperceptibility, every cell with its metrics, ratio and timing); NaN/inf become null;
* ``report.md``: one table per victim (defense, protection, metric, ratio to clean, the
  Unlearnable Distance when the cells carry SAL, PSNR, SSIM), the imperceptibility table
  and the transfer note;
* ``glance.png`` (metric per defense beside the clean one, example predictions),
  ``metric_bars.png`` and ``strip_<protection>.png`` (see :mod:`ulmed.eval.figures`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ulmed.errors import ConfigError
from ulmed.eval.grid import CLEAN, CLEAN_PART, write_json
from ulmed.eval.learnability import unlearnable_distance
from ulmed.eval.sources import EvalData
from ulmed.io.atomic import atomic_write_bytes

METRIC_LABEL = {"dice": "Dice", "accuracy": "accuracy"}
#: The at-a-glance figure (:func:`ulmed.eval.figures.glance`).
GLANCE = "glance.png"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _finite(value) else "-"


def add_ratios(cells: list[dict[str, Any]]) -> None:
    """Set ``ratio`` (value / clean value of the same victim and defense) on every cell, in place."""
    base: dict[tuple[str, str], Any] = {(c["victim"], c["defense"]): c.get("value")
                                        for c in cells if c["protection"] == CLEAN}
    for c in cells:
        ref: Any = base.get((c["victim"], c["defense"]))
        value: Any = c.get("value")
        c["ratio"] = round(value / ref, 6) if _finite(ref) and _finite(value) and ref != 0 else None


def add_unlearnable_distance(cells: list[dict[str, Any]]) -> None:
    """Set ``ud`` and ``ud_detail`` on every cell with ``sal``, against the clean cell of its victim and defense.

    ``ud`` is None (and ``ud_detail`` says why) where there is no clean SAL to compare with
    or the Unlearnable Distance is undefined; cells without ``sal`` are left alone.
    """
    base = {(c["victim"], c["defense"]): c.get("sal") for c in cells if c["protection"] == CLEAN}
    for c in cells:
        if c.get("sal") is None:
            continue
        ref = base.get((c["victim"], c["defense"]))
        try:
            if ref is None:
                raise ConfigError("no clean cell with SAL for this victim and defense")
            ud = unlearnable_distance(ref, c["sal"])
        except ConfigError as exc:
            c["ud"], c["ud_detail"] = None, {"error": exc.reason}
            continue
        c["ud"] = round(ud["ud"], 6)
        c["ud_detail"] = {k: ud[k] for k in ("threshold", "n_clean", "n_protected")}


def transfer_notes(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One note per (protection, victim): which surrogate made the noise, which victim was trained."""
    notes = []
    for p in report["protections"]:
        for v in report["victims"]:
            sur = p.get("surrogate")
            if p.get("method") is None:
                how = "made by an unknown method (no manifest.json in the protected copy)"
            elif sur is None:
                how = f"made with {p['method']} (no surrogate: training-free or not recorded)"
            else:
                how = f"made with {p['method']} on surrogate {sur}"
            transfer = None if sur is None else sur != v
            kind = {True: f" (transfer: surrogate {sur} is not victim {v})",
                    False: " (same network family as the surrogate)", None: ""}[transfer]
            notes.append({"protection": p["name"], "method": p.get("method"), "surrogate": sur, "victim": v,
                          "transfer": transfer, "note": f"{p['name']}: {how}, evaluated on victim {v}{kind}"})
    return notes


def _markdown(report: dict[str, Any]) -> str:
    s, metric = report["settings"], report["main_metric"]
    label = METRIC_LABEL.get(metric, metric)
    imp = {p["name"]: p["imperceptibility"] for p in report["protections"]}
    has_ud = any("ud" in c for c in report["cells"])
    ud_head, ud_rule = (" UD |", "---|") if has_ud else ("", "")
    lines = [
        "# ulmed evaluation", "",
        (f"Clean data: `{report['clean']}` ({s['dataset']}, {s['task']}); {s['n_train']} train item(s), "
        f"{s['n_test']} clean test item(s). Victims train on the clean or protected train split after the "
        f"defense and are tested on the clean test split. Ratio = {label} / {label} of the clean-trained victim "
        f"with the same defense (lower = better protection). PSNR/SSIM: protected vs clean train items at "
        f"native resolution. `{CLEAN_PART}` = trained on the clean share of a mixing defense only."), "",
    ]
    if has_ud:
        lines += [("UD = Unlearnable Distance: layers of the victim whose sharpness-aware learnability (on the clean "
                   "test split) exceeds the median of the clean-trained victim's, divided by that count for the "
                   "clean-trained victim (1 = as many sharp layers as the clean victim; "
                   "docs/metrics/unlearnable_distance.md)."), ""]
    for v in report["victims"]:
        lines += [f"## Victim {v} ({s['victim_size']})", "",
                  f"| defense | protection | {label} | ratio to clean |{ud_head} PSNR (dB) | SSIM | train s |",
                  f"|---|---|---|---|{ud_rule}---|---|---|"]
        for c in report["cells"]:
            if c["victim"] != v:
                continue
            i = imp.get(c["protection"], {})
            ud = f" {_num(c.get('ud'))} |" if has_ud else ""
            lines.append(f"| {c['defense']} | {c['protection']} | {_num(c.get('value'))} | "
                         f"{_num(c.get('ratio'))} |{ud} "
                         f"{_num(i.get('psnr'), 1)} | {_num(i.get('ssim'))} | {_num(c.get('train_s'), 1)} |")
        lines.append("")
    if report["protections"]:
        lines += ["## Imperceptibility (train split)", "",
                  "| protection | method | budget | PSNR (dB) | SSIM | L-inf | L-inf native | L0 fraction | items |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in report["protections"]:
            i = p["imperceptibility"]
            lines.append(f"| {p['name']} | {p.get('method') or '?'} | {p.get('budget') or '?'} | "
                         f"{_num(i['psnr'], 1)} | "
                         f"{_num(i['ssim'])} | {_num(i['linf'], 4)} | {_num(i['linf_native'], 2)} | "
                         f"{_num(i['l0_fraction'])} | {i['n']} |")
        lines += ["", "## Transfer", ""]
        lines += [f"- {n['note']}" for n in report["transfer"]]
        lines.append("")
    figures = [f for f in report["files"] if f.endswith(".png")]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    lines.append(f"{report['trained']} cell(s) trained, {report['reused']} reused; wall time {report['wall_s']:.1f} s.")
    return "\n".join(lines) + "\n"


def summary_line(report: dict[str, Any]) -> str:
    """One line: cell counts, the range of ratios per protection, the report path."""
    parts = []
    for p in [p["name"] for p in report["protections"]]:
        ratios = [c["ratio"] for c in report["cells"] if c["protection"] == p and c.get("ratio") is not None]
        if ratios:
            parts.append(f"{p} {min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else f"{p} {ratios[0]:.2f}")
    ratio_text = f"; {report['main_metric']} ratio to clean: " + ", ".join(parts) if parts else ""
    return (f"{len(report['cells'])} cell(s) ({report['trained']} trained, {report['reused']} reused) in "
            f"{report['wall_s']:.1f} s{ratio_text} -> {Path(report['out']) / 'report.md'}")


def write_report(
    report: dict[str, Any],
    out: Path,
    *,
    data: EvalData,
    protections: Mapping[str, Path],
    figures: bool = True,
    started: float | None = None,
    strip_items: int = 3,
) -> dict[str, Any]:
    """Complete ``report`` and write report.json, report.md and the figures into ``out``.

    Args:
        report: The grid's report (settings, protections, cells ...).
        out: Output folder.
        data: The clean data (for picture strips).
        protections: Protection name -> root of the protected copy.
        figures: Write the PNG figures.
        started: ``time.perf_counter()`` at the start of the run (for the wall time).
        strip_items: Train items per picture strip.

    Returns:
        The completed report, with ``files`` (names relative to ``out``).
    """
    add_ratios(report["cells"])
    add_unlearnable_distance(report["cells"])
    report["transfer"] = transfer_notes(report)
    files: list[str] = []
    if figures:
        from ulmed.eval.figures import glance, metric_bars, picture_strip

        files.append(glance(report, data, out / "cells", out / GLANCE).name)
        files.append(metric_bars(report, out / "metric_bars.png").name)
        for name, root in protections.items():
            files.append(picture_strip(data, root, out / f"strip_{name}.png", name, strip_items).name)
    report["files"] = ["report.json", "report.md", *files]
    report["wall_s"] = round(time.perf_counter() - started, 3) if started is not None else 0.0
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    write_json(out / "report.json", report)
    atomic_write_bytes(out / "report.md", _markdown(report).encode())
    report["summary"] = summary_line(report)
    return report

"""``ulmed info`` and ``ulmed methods``: what a run would read, and which methods there are."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ulmed.cli.app import app, console


def print_records(rows: list[tuple[str, ...]], columns: tuple[str, ...], title: str) -> None:
    """A table on a terminal; piped or redirected, tab-separated lines (a header, then one per row)."""
    if sys.stdout.isatty():
        from rich.table import Table

        table = Table(title=title)
        for col in columns:
            table.add_column(col, overflow="fold")  # wrap long keys, never cut them
        for row in rows:
            table.add_row(*row)
        console().print(table, markup=False)
    else:
        for row in (columns, *rows):
            print("\t".join(v.replace("\t", " ").replace("\n", " ") for v in row))


def closing_lines(description: dict[str, Any]) -> list[str]:
    """What ``info`` prints after the records: the copies, then each bad and skipped input."""
    d = description
    lines = [f"{d['copied']} file(s) would be copied unchanged ({d['non_image_dicom']} non-image DICOM)"]
    lines += [f"bad: {key}: {reason}" for key, reason in d["bad"]]
    lines += [f"skipped: {key}: {reason}" for key, reason in d["skipped"]]
    return lines


@app.command()
def info(
    path: Annotated[Path, typer.Argument(help="File or folder to inspect.")],
    masks: Annotated[Path | None, typer.Option(help="Masks folder matched by relative path.")] = None,
) -> None:
    """List what `protect` would read: series or files, shape, spacing, modality, dtype, range.

    On a terminal it prints a table; piped or redirected, tab-separated lines (a header, then
    one line per record) with every key whole. Bad and skipped inputs follow, one per line.

    Exit codes, for a pre-flight check: 0 when every input is readable, 3 when some inputs are
    bad, 2 when none is readable or PATH cannot be used.
    """
    from ulmed.pipeline.info import COLUMNS, describe, exit_code, table_rows

    d = describe(path, masks)
    rows = table_rows(d)
    print_records(rows, COLUMNS, f"{len(rows)} record(s) under {path}")
    print("\n".join(closing_lines(d)), flush=True)  # plain lines: never wrapped or cut
    code = exit_code(d)
    if code:
        raise typer.Exit(code=code)


@app.command()
def methods() -> None:
    """List the protection methods."""
    from ulmed.pipeline.methods import available_methods

    for name, doc in available_methods().items():
        console().print(f"{name:10s} {doc}", markup=False, highlight=False)


__all__ = ["closing_lines", "info", "methods", "print_records"]

"""The typer application every command registers on, its global options and its output helpers.

Global options (``--device``, ``--seed``, ``-v``, ``-q``, ``--debug``) are read by the group's
callback into :data:`state`, which the commands read. Messages go to stderr as plain lines
(:func:`say`); a progress bar is drawn only on a terminal (:func:`progress_bar`). rich, which
draws the bar and ``info``'s tables, is imported only then (about 40 ms of every run's start).
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  rich_markup_mode=None,  # plain help: "ulmed[deid]" stays as written, not read as markup
                  help="Protect medical images and segmentation data sets with unlearnable perturbations.\n\n"
                       "The options below may also follow the subcommand: ulmed protect -i a -o b --seed 1 -q")


class _State:
    """The global options of this invocation."""

    device = "auto"
    seed = 0
    verbosity = 0
    debug = False


state = _State()


def _print_version(value: bool) -> None:
    """``--version``: print ``ulmed X.Y.Z`` and stop."""
    if value:
        from ulmed import __version__

        print(f"ulmed {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    seed: Annotated[int, typer.Option(help="Run seed; the same seed gives the same output.")] = 0,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More messages (repeat for more).")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only errors; no progress bar.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option(help="Show tracebacks of errors, and the libraries' warnings.")] = False,
) -> None:
    """Global options, before or after the subcommand.

    E.g. ``ulmed --device cpu protect ...`` or ``ulmed protect ... --device cpu``.
    """
    state.device, state.seed, state.debug = device, seed, debug
    from ulmed.io.notices import set_debug

    set_debug(debug)  # library warnings reach the terminal only with --debug (else: the manifest)
    state.verbosity = -1 if quiet else verbose
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(message)s", stream=sys.stderr, force=True)


def say(message: str) -> None:
    """One plain line on stderr (no wrapping, no markup), safe for logs and scripts."""
    print(message, file=sys.stderr, flush=True)


@functools.cache
def console(stderr: bool = False) -> Console:
    """The rich console on stdout (or stderr), made on first use."""
    from rich.console import Console

    return Console(stderr=stderr)


def progress_bar(items: Iterable[T], total: int, description: str) -> Iterable[T]:
    """A rich progress bar on stderr, shown only on a terminal and when not quiet."""
    if state.verbosity < 0 or not sys.stderr.isatty():
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


__all__ = ["app", "console", "progress_bar", "say", "state"]

"""Command-line words before click sees them, and usage errors as one line.

nnU-Net and TotalSegmentator users type global options anywhere: ``ulmed protect -i a -o b
--seed 1 -q``. Click only reads a group's options before the subcommand, so
:func:`hoist_global_options` moves them there. It reads which words are options, and how
many values each takes, from the click commands themselves, so it never needs a list of
its own and a global option is defined once, on the group's callback.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any


def click_exceptions() -> ModuleType:
    """The module of the click exceptions typer raises: its own copy of click (typer >= 0.20) or click's."""
    try:
        from typer._click import exceptions
    except ImportError:  # older typer runs on click itself
        from click import exceptions
    return exceptions


def option_arities(params: Iterable[Any]) -> dict[str, int]:
    """Every spelling of every option (``-q``, ``--quiet``, ``--no-x``) -> how many values it reads.

    Args:
        params: A click command's ``params`` (options and arguments).
    """
    out: dict[str, int] = {}
    for p in params:
        if getattr(p, "param_type_name", "") == "option":
            n = 0 if (p.is_flag or p.count) else max(p.nargs, 1)
            for name in (*p.opts, *p.secondary_opts):
                out[name] = n
    return out


def _match(word: str, options: dict[str, int]) -> int | None:
    """How many following words ``word`` takes as values if it is one of ``options``, else None.

    Handles ``--name value``, ``--name=value``, ``-xVALUE`` and clusters of flags (``-vq``).
    """
    if word in options:
        return options[word]
    if word.startswith("--"):
        name = word.split("=", 1)[0]
        return 0 if "=" in word and name in options else None
    if word.startswith("-") and len(word) > 2:
        if options.get(word[:2], 0) > 0:
            return 0  # a short option with its value attached: -o/tmp/out
        if all(options.get(f"-{c}") == 0 for c in word[1:]):
            return 0  # flags clustered: -vq
    return None


def hoist_global_options(args: Sequence[str], group: Any) -> list[str]:
    """Move the group's options that follow the subcommand in front of it.

    The subcommand's own options and their values are stepped over, so a value that looks
    like a global option (``-o --seed``) stays a value, and a subcommand option spelt like a
    global one stays the subcommand's. Words after ``--`` are left alone. Hoisted options
    come after those already before the subcommand, so that the later one still wins.

    Args:
        args: The command line without the program name.
        group: The click group (``typer.main.get_command(app)``).

    Returns:
        The words in the order click reads them; ``args`` unchanged when there is no
        known subcommand.
    """
    args = list(args)
    own_globals = option_arities(group.params)
    i = 0
    while i < len(args) and args[i].startswith("-") and args[i] != "--":
        i += 1 + (_match(args[i], own_globals) or 0)
    if i >= len(args) or args[i] not in group.commands:
        return args
    sub = option_arities(group.commands[args[i]].params)
    head, moved, rest = args[:i], [], [args[i]]
    j = i + 1
    while j < len(args):
        word = args[j]
        if word == "--":
            rest += args[j:]
            break
        n_sub, n_global = _match(word, sub), _match(word, own_globals)
        if n_sub is not None:
            rest += args[j : j + 1 + n_sub]
            j += 1 + n_sub
        elif n_global is not None:
            moved += args[j : j + 1 + n_global]
            j += 1 + n_global
        else:
            rest.append(word)
            j += 1
    return head + moved + rest


def usage_line(exc: Any, program: str = "ulmed") -> str:
    """A usage error as one line, with the help command that shows the right usage.

    Args:
        exc: A click ``UsageError`` (with the context of the command it concerns, if any).
        program: The program name.

    Returns:
        E.g. ``ulmed: error: No such option: --bogus (try 'ulmed protect --help')``.
    """
    command = exc.ctx.command_path if exc.ctx is not None else program
    message = " ".join(exc.format_message().split())
    return f"{program}: error: {message} (try '{command} --help')"


__all__ = ["click_exceptions", "hoist_global_options", "option_arities", "usage_line"]

"""The ``ulmed`` entry point: run the app, and turn every error into one line and an exit code.

Errors that ulmed raises on purpose are printed as one line naming the file and what to
do, with a non-zero exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import typer

from ulmed.cli.app import app, say, state
from ulmed.errors import UlmedError, os_reason

#: The modules whose commands register on :data:`ulmed.cli.app.app`, in the order ``ulmed --help`` lists them.
COMMAND_MODULES = ("ulmed.cli.protection", "ulmed.cli.inspection", "ulmed.cli.evaluation", "ulmed.cli.publish")
for _module in COMMAND_MODULES:
    importlib.import_module(_module)


#: Exit code of an interrupted command (typer turns Ctrl-C into ``Exit(130)`` itself).
INTERRUPTED = 130
#: What an interrupted run tells the user.
RESUME_HINT = "interrupted; finished outputs are complete and journalled: rerun the same command to resume"


def _error_line(exc: UlmedError | OSError) -> int:
    """Print an ulmed error or an operating-system error as one line; return the exit code 2."""
    if isinstance(exc, UlmedError):
        say(f"error: {exc}")
    else:  # an OSError that no ulmed code turned into an UlmedError: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        say(f"error: {where}{os_reason(exc)}; check the path and free space (--debug shows the traceback)")
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turn usage and ulmed errors into one line and an exit code.

    Global options may also follow the subcommand (:func:`ulmed.cli_argv.hoist_global_options`).

    Args:
        argv: The words after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0, 1 (aborted, or ``verify`` found a change), 2 (an error), 3 (some
        inputs failed), 130 (interrupted), or click's code for a usage error.
    """
    from ulmed.cli_argv import click_exceptions, hoist_global_options, usage_line

    args = sys.argv[1:] if argv is None else list(argv)
    group = typer.main.get_command(app)
    click_errors = click_exceptions()
    try:
        code = group.main(args=hoist_global_options(args, group), prog_name="ulmed", standalone_mode=False)
        if code == INTERRUPTED:
            say(RESUME_HINT)
        return code if isinstance(code, int) else 0
    except click_errors.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:  # a bare `ulmed`: the help
            print(exc.ctx.get_help())
        else:
            say(usage_line(exc))
        return exc.exit_code
    except click_errors.ClickException as exc:  # not a usage error (a file click could not open ...)
        say(f"ulmed: error: {' '.join(exc.format_message().split())}")
        return exc.exit_code
    except typer.Abort:
        say("ulmed: aborted")
        return 1
    except (UlmedError, OSError) as exc:
        if state.debug or "--debug" in args:
            raise
        return _error_line(exc)
    except KeyboardInterrupt:  # outside a command (while parsing, say)
        say(RESUME_HINT)
        return INTERRUPTED


__all__ = ["COMMAND_MODULES", "main"]

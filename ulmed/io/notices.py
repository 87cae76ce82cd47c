"""Warnings and log messages of the file libraries, kept with the file instead of the terminal.

pydicom warns about (and logs) values that break their VR, codec plugins log the traceback
of every frame they fail on, Pillow warns about possible decompression bombs. In the middle
of a run none of that helps on a terminal, and some of it quotes values of the file.
:func:`library_messages` collects it while a file is read or written, so that the file's
manifest entry can carry it; quoted values are masked (:func:`clean_message`).

With debugging on (``ulmed --debug`` calls :func:`set_debug`; ``ULMED_DEBUG=1`` in the
environment, which worker processes inherit, does the same) the messages also go where they
would have gone without ulmed.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["DEBUG_ENV", "clean_message", "debug_enabled", "join_messages", "library_messages", "set_debug"]

#: Environment variable that turns debugging on (inherited by spawned worker processes).
DEBUG_ENV = "ULMED_DEBUG"
#: Loggers whose messages are collected (their children too).
LIBRARY_LOGGERS = ("pydicom", "PIL")
#: At most this many messages are kept per block; a last line counts the others.
MAX_MESSAGES = 20
_MAX_CHARS = 300
# A quoted value ('...', "...", b'...'), not an apostrophe inside a word.
_QUOTED = re.compile(r"""(?<![\w'"])b?(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")(?![\w'"])""")
_NOT_ABOUT_THE_FILE = (DeprecationWarning, PendingDeprecationWarning)
_ACTIVE: list[list[str]] = []  # the messages of the blocks entered, innermost last


def set_debug(on: bool) -> None:
    """Let library messages through to the terminal as well (``--debug``), here and in workers."""
    if on:
        os.environ[DEBUG_ENV] = "1"
    else:
        os.environ.pop(DEBUG_ENV, None)


def debug_enabled() -> bool:
    """Whether library messages are let through (see :func:`set_debug`)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def clean_message(text: str) -> str:
    """One line of at most 300 characters, quoted values masked as ``'...'`` (they may be patient data)."""
    text = " ".join(_QUOTED.sub("'...'", str(text)).split())
    return text if len(text) <= _MAX_CHARS else text[: _MAX_CHARS - 3] + "..."


def _add(messages: list[str], text: str) -> None:
    text = clean_message(text)
    if text and text not in messages and len(messages) <= MAX_MESSAGES:
        messages.append(text if len(messages) < MAX_MESSAGES else "(further messages left out)")


def join_messages(*blocks: list[str]) -> list[str]:
    """The messages of several :func:`library_messages` blocks as one block would hold them.

    For a file whose reading and writing were collected in separate blocks: each message
    once, in order, at most :data:`MAX_MESSAGES` and a last line that says more were left out.
    """
    messages: list[str] = []
    for block in blocks:
        for text in block:
            _add(messages, text)
    return messages


class _Collector(logging.Handler):
    """Adds every WARNING-or-worse record to a list (with its exception, for a logged traceback)."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and str(exc) not in text:
            text = f"{text} ({type(exc).__name__}: {exc})"
        _add(self.messages, text)


@contextmanager
def library_messages(forward: bool = True) -> Iterator[list[str]]:
    """Collect the warnings and the library log messages (pydicom, PIL) raised inside the block.

    Blocks nest: an inner block's messages also go to the enclosing one. Outside debugging
    nothing reaches the terminal; deprecation warnings, which are not about a file, are dropped.

    Args:
        forward: Give the messages to the enclosing block too; False for a probe whose
            messages say nothing about the file (is it DICOM at all?).

    Yields:
        A list that holds, once the block is left, each message once, cleaned, in order.
    """
    messages: list[str] = []
    show = debug_enabled()
    handler = _Collector(messages)
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = lg.propagate and show
        if lg.getEffectiveLevel() > logging.WARNING:  # collected even under --quiet
            lg.setLevel(logging.WARNING)
    _ACTIVE.append(messages)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
    finally:
        _ACTIVE.pop()
        for lg, (propagate, level) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate = propagate
            lg.setLevel(level)
        for w in caught:
            if not issubclass(w.category, _NOT_ABOUT_THE_FILE):
                _add(messages, str(w.message))
            if show:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if _ACTIVE and forward:
            for text in messages:
                _add(_ACTIVE[-1], text)

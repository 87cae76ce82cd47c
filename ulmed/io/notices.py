"""Warnings and log messages of the file libraries, kept with the file instead of the terminal.

pydicom warns about (and logs) values that break their VR, codec plugins log the traceback
of every frame they fail on, Pillow warns about possible decompression bombs. In the middle
of a run none of that helps on a terminal, and some of it quotes values of the file.
:func:`library_messages` collects it while a file is read or written, so that the file's
manifest entry can carry it; quoted values are masked (:func:`clean_message`).

With debugging on (``ulmed --debug`` calls :func:`set_debug`; ``ULMED_DEBUG=1`` in the
environment, which worker processes inherit, does the same) the messages also go where they
would have gone without ulmed.

A block on its own swaps the process's warning filters and the libraries' log handlers while it
runs, which two threads must not do at once. Inside :func:`routed_messages` one router holds
them instead and hands each warning and log record to the innermost block of the thread that
raised it, so blocks can run in a reader thread beside the main one (:mod:`ulmed.pipeline.work`).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEBUG_ENV", "clean_message", "debug_enabled", "join_messages", "library_messages", "routed_messages",
           "set_debug"]

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


@dataclass
class _Block:
    """One open :func:`library_messages` block: its messages, and the warnings it added at its end."""

    messages: list[str] = field(default_factory=list)
    warned: list[str] = field(default_factory=list)


_LOCAL = threading.local()  # .blocks: this thread's open blocks, innermost last


def _blocks() -> list[_Block]:
    blocks = getattr(_LOCAL, "blocks", None)
    if blocks is None:
        blocks = _LOCAL.blocks = []
    return blocks


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


def _record_text(record: logging.LogRecord) -> str:
    """A log record's message, with its exception where the message does not quote it (a logged traceback)."""
    text = record.getMessage()
    exc = record.exc_info[1] if record.exc_info else None
    if exc is not None and str(exc) not in text:
        text = f"{text} ({type(exc).__name__}: {exc})"
    return text


class _Collector(logging.Handler):
    """Adds every WARNING-or-worse record to a list."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        _add(self.messages, _record_text(record))


def _hook(handler: logging.Handler, show: bool) -> Callable[[], None]:
    """Add ``handler`` to the library loggers (collected even under --quiet); return what undoes it."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.propagate = lg.propagate and show
        if lg.getEffectiveLevel() > logging.WARNING:
            lg.setLevel(logging.WARNING)

    def undo() -> None:
        for lg, (propagate, level) in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.propagate = propagate
            lg.setLevel(level)

    return undo


class _Router(logging.Handler):
    """Hands log records and warnings to the innermost block of the thread that raised them."""

    def __init__(self, show: bool, showwarning: Callable[..., Any]) -> None:
        super().__init__(logging.WARNING)
        self.show, self.showwarning = show, showwarning
        self.shown: set[tuple[Any, ...]] = set()  # outside blocks: each warning once per place

    def emit(self, record: logging.LogRecord) -> None:
        if blocks := _blocks():
            _add(blocks[-1].messages, _record_text(record))

    def warning(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                file: Any = None, line: str | None = None) -> None:
        blocks = _blocks()
        if blocks:
            if not issubclass(category, _NOT_ABOUT_THE_FILE):
                blocks[-1].warned.append(str(message))
            if self.show:
                self.showwarning(message, category, filename, lineno, file, line)
            return
        place = (category, str(message), filename, lineno)  # a thread without a block: as Python's
        if place not in self.shown and (self.show or not issubclass(category, _NOT_ABOUT_THE_FILE)):
            self.shown.add(place)  # default filter shows it: once per place, deprecations left out
            self.showwarning(message, category, filename, lineno, file, line)


_ROUTER: _Router | None = None


@contextmanager
def routed_messages() -> Iterator[None]:
    """Let :func:`library_messages` blocks run in several threads at once, inside this block.

    Enter it in one thread around the work of all of them. Meanwhile library log records raised
    outside any block are not shown (unless debugging), and the warning filter is "always".
    """
    global _ROUTER
    if _ROUTER is not None:  # nested: the outer router serves
        yield
        return
    show = debug_enabled()
    with warnings.catch_warnings():  # restores the filters and showwarning at the end
        warnings.simplefilter("always")
        router = _Router(show, warnings.showwarning)
        warnings.showwarning = router.warning
        undo = _hook(router, show)
        _ROUTER = router
        try:
            yield
        finally:
            _ROUTER = None
            undo()


@contextmanager
def library_messages(forward: bool = True) -> Iterator[list[str]]:
    """Collect the warnings and the library log messages (pydicom, PIL) raised inside the block.

    Blocks nest: an inner block's messages also go to the enclosing one. Outside debugging
    nothing reaches the terminal; deprecation warnings, which are not about a file, are dropped.
    Inside :func:`routed_messages` blocks may run in several threads at once.

    Args:
        forward: Give the messages to the enclosing block too; False for a probe whose
            messages say nothing about the file (is it DICOM at all?).

    Yields:
        A list that holds, once the block is left, each message once, cleaned, in order.
    """
    block = _Block()
    blocks = _blocks()
    blocks.append(block)
    try:
        if _ROUTER is not None:
            yield block.messages
        else:
            yield from _swapped(block)
    finally:
        blocks.pop()
        for text in block.warned:  # warnings after the log records, in both ways of collecting
            _add(block.messages, text)
        if blocks and forward:
            for text in block.messages:
                _add(blocks[-1].messages, text)


def _swapped(block: _Block) -> Iterator[list[str]]:
    """A block on its own: this thread swaps in a log handler and a warnings recorder while it runs."""
    show = debug_enabled()
    undo = _hook(_Collector(block.messages), show)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield block.messages
    finally:
        undo()
        for w in caught:
            if not issubclass(w.category, _NOT_ABOUT_THE_FILE):
                block.warned.append(str(w.message))
            if show:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)

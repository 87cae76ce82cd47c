"""Tests of ulmed.io.notices: library warnings and log messages kept with the file, off the terminal."""

from __future__ import annotations

import logging
import shutil
import warnings

import pytest
from PIL import Image

from ulmed.io.notices import DEBUG_ENV, MAX_MESSAGES, clean_message, library_messages, routed_messages
from ulmed.pipeline.protect import protect_path


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEBUG_ENV, "0")


def test_warnings_and_library_logs_are_collected_masked_and_kept_off_the_terminal(capsys, caplog, recwarn) -> None:
    caplog.set_level(logging.DEBUG)
    with library_messages() as messages:
        warnings.warn("Invalid value for VR PN: 'Doe^John'.", UserWarning, stacklevel=1)
        logging.getLogger("pydicom").warning("Invalid value for VR PN: 'Doe^John'.")  # warn_and_log does both
        try:
            raise OSError("broken data stream")
        except OSError:
            logging.getLogger("pydicom.pixels.decoders.base").exception("pillow failed")
        logging.getLogger("PIL.PngImagePlugin").debug("STREAM b'IHDR'")  # below WARNING: not kept
        logging.getLogger("ulmed").warning("ours")  # ulmed's own messages are not touched
        warnings.warn("old API", DeprecationWarning, stacklevel=1)  # not about a file
    assert messages == ["Invalid value for VR PN: '...'.", "pillow failed (OSError: broken data stream)"]
    assert [r.name for r in caplog.records if r.levelno >= logging.WARNING] == ["ulmed"]
    assert not capsys.readouterr().err and not [w for w in recwarn if "VR PN" in str(w.message)]
    assert logging.getLogger("pydicom").propagate and not logging.getLogger("pydicom").handlers[1:]


def test_blocks_nest_and_a_probe_keeps_its_messages_to_itself() -> None:
    with library_messages() as outer:
        with library_messages() as inner:
            warnings.warn("inner", stacklevel=1)
        with library_messages(forward=False):
            warnings.warn("probe", stacklevel=1)
        for i in range(MAX_MESSAGES + 5):
            logging.getLogger("pydicom").warning("message %d", i)
    assert inner == ["inner"]
    assert outer[:2] == ["inner", "message 0"] and len(outer) == MAX_MESSAGES + 1 and "probe" not in outer
    assert outer[-1] == "(further messages left out)"


def test_with_debug_the_messages_go_through_as_well(monkeypatch, caplog, recwarn) -> None:
    monkeypatch.setenv(DEBUG_ENV, "1")
    caplog.set_level(logging.WARNING)
    with library_messages() as messages:
        warnings.warn("seen twice", stacklevel=1)
        logging.getLogger("pydicom").error("logged twice")
    assert messages == ["logged twice", "seen twice"]
    assert [r.getMessage() for r in caplog.records] == ["logged twice"]
    assert [str(w.message) for w in recwarn] == ["seen twice"]


def test_clean_message_is_one_short_line_without_quoted_values() -> None:
    assert clean_message("it's the file's value 'Doe^John' or \"x\" or b'\\x00'\nnext") == (
        "it's the file's value '...' or '...' or '...' next")
    assert len(clean_message("x" * 1000)) == 300


def test_a_pillow_decompression_bomb_warning_goes_to_the_image_entry(real_data, tmp_path, monkeypatch, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(real_data / "hc18/images/005_HC.png", src / "a.png")  # 400 x 270 = 108000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 80_000)  # above the limit, below twice it: a warning
    manifest = protect_path(src, tmp_path / "out", method="random")
    (entry,) = manifest.entries
    assert entry.status == "written" and any("decompression bomb" in w for w in entry.warnings or [])
    assert "decompression bomb" not in capsys.readouterr().err


def test_join_messages_keeps_each_message_once_in_order_and_caps_the_count() -> None:
    from ulmed.io.notices import join_messages

    assert join_messages(["a", "b"], [], ["b", "c"]) == ["a", "b", "c"]
    many = join_messages([f"m{i}" for i in range(MAX_MESSAGES)], ["one more", "and another"])
    assert len(many) == MAX_MESSAGES + 1 and many[-1] == "(further messages left out)"


def test_inside_routed_messages_blocks_in_two_threads_keep_their_own_messages(capsys, recwarn) -> None:
    import threading

    filters, show = list(warnings.filters), warnings.showwarning
    handlers = list(logging.getLogger("pydicom").handlers)
    both_open = threading.Barrier(2)
    got: dict[str, list[str]] = {}

    def work(name: str) -> None:
        with library_messages() as messages:
            both_open.wait(5)  # the two threads' blocks are open at the same time
            logging.getLogger("pydicom").warning("%s logged", name)
            warnings.warn(f"{name} warned 'Doe'", UserWarning, stacklevel=1)
            both_open.wait(5)
        got[name] = messages

    with routed_messages(), library_messages() as outer:
        reader = threading.Thread(target=work, args=("reader",))
        reader.start()
        work("main")
        reader.join()
    assert got == {"main": ["main logged", "main warned '...'"], "reader": ["reader logged", "reader warned '...'"]}
    assert outer == got["main"]  # an inner block forwards to the enclosing block of its own thread
    assert list(warnings.filters) == filters and warnings.showwarning is show
    assert logging.getLogger("pydicom").handlers == handlers
    assert not capsys.readouterr().err and not [w for w in recwarn if "warned" in str(w.message)]


def test_inside_routed_messages_a_thread_without_a_block_warns_once_per_place(recwarn) -> None:
    import threading

    def outside() -> None:
        for _ in range(3):
            warnings.warn("numpy said so", RuntimeWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)

    with routed_messages():
        helper = threading.Thread(target=outside)
        helper.start()
        helper.join()
    assert [str(w.message) for w in recwarn] == ["numpy said so"]  # once, as Python's default filter shows it

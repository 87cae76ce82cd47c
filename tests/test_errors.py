import errno

from ulmed.errors import ConfigError, InputError, UlmedError, os_reason


def test_an_error_names_its_file_first_and_keeps_the_reason():
    e = InputError("truncated pixel data; re-export the series", path="a/b.dcm")
    assert str(e) == "a/b.dcm: truncated pixel data; re-export the series"
    assert e.path == "a/b.dcm" and e.reason.startswith("truncated") and isinstance(e, UlmedError)
    assert str(ConfigError("eps must be positive")) == "eps must be positive"


def test_os_reason_is_never_none():
    assert os_reason(OSError(errno.ENOSPC, None)) == "No space left on device"
    assert os_reason(OSError(errno.EACCES, "Permission denied")) == "Permission denied"
    assert os_reason(OSError("disk went away")) == "disk went away"
    assert os_reason(OSError()) == "OSError"


def test_an_input_the_system_refuses_to_read_is_said_so_and_other_errors_are_left_to_the_reader():
    from ulmed.errors import unreadable

    assert unreadable(PermissionError(13, "Permission denied", "x.png")) == (
        "cannot be read (Permission denied); check its permissions, then rerun")
    assert unreadable(OSError("image file is truncated")) is None  # Pillow's words for a cut file
    assert unreadable(ValueError("bad header")) is None

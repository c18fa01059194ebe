"""atomic_write: whole files only, with the permissions a plain open() would give."""

import os
import stat
from pathlib import Path

import pytest

from vil.io_utils import atomic_write


def _write(text):
    return lambda tmp: Path(tmp).write_text(text)


def _write_then_crash(tmp):
    Path(tmp).write_text("half")
    raise RuntimeError("crash")


def test_atomic_write_replaces_whole_files_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    atomic_write(path, _write("first"))
    atomic_write(path, _write("second"))
    assert path.read_text() == "second"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    with pytest.raises(RuntimeError, match="crash"):
        atomic_write(path, _write_then_crash)
    assert path.read_text() == "second" and [p.name for p in path.parent.iterdir()] == ["file.txt"]

"""Atomic writes: files get the mode the umask gives a plain open, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest

from gainx.io import atomic_open, atomic_write_text


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "config.pbtxt", "name: 'm'\n")
        with atomic_open(tmp_path / "model.onnx", "wb") as fh:
            fh.write(b"\x00")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    for name in ("config.pbtxt", "model.onnx", "plain.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.pbtxt", "model.onnx", "plain.txt"]


def test_current_umask_reads_without_changing_it():
    from gainx.io import current_umask

    old = os.umask(0o037)
    try:
        assert current_umask() == 0o037 and current_umask() == 0o037
    finally:
        os.umask(old)

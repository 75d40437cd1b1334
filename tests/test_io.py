"""The one I/O layer: atomic writes keep the old file on failure and use normal file modes."""
import os
import stat

import pytest

from vitdet_lib.io import atomic_write, provenance, write_json_atomic, write_text_atomic


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, {"x": 1})

    def boom(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, boom)
    assert path.read_text().replace(" ", "").replace("\n", "") == '{"x":1}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_written_files_get_the_umask_mode_not_private(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "t.txt", "hello")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_provenance_names_code_and_packages():
    env = provenance()
    assert env["packages"]["torch"]
    assert env["git_commit"] is None or len(env["git_commit"]) == 40

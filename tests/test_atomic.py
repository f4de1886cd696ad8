"""airrep/atomic.py: a published file or folder is the old one or the whole new one."""

from __future__ import annotations

import pytest

from airrep.atomic import atomic_dir, write_text_atomic


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "models" / "lm"
    with atomic_dir(target) as folder:
        (folder / "weights").write_text("v1")
        assert not target.exists()  # nothing is visible before the block ends
    assert (target / "weights").read_text() == "v1"

    with pytest.raises(RuntimeError), atomic_dir(target) as folder:
        (folder / "weights").write_text("half")
        raise RuntimeError("the writer failed")
    assert (target / "weights").read_text() == "v1"  # the old folder stands
    assert [p.name for p in target.parent.iterdir()] == ["lm"]  # no temporary folder left

    with atomic_dir(target) as folder:
        (folder / "other").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["other"]


def test_two_writers_never_share_a_temporary_file(tmp_path):
    target = tmp_path / "a.txt"
    with atomic_dir(tmp_path / "d") as first, atomic_dir(tmp_path / "d") as second:
        assert first != second
    write_text_atomic(target, "x")
    assert target.read_text() == "x" and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

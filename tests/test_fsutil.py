"""Atomic writes (ganctl/fsutil.py): whatever is at the temp name, a planted link or a dead
process's file, is replaced and never written through."""

from __future__ import annotations


def test_an_atomic_write_never_writes_through_what_is_at_its_temp_name(tmp_path):
    """The temp name is predictable (the pid): a link planted there, or a file a dead process of
    the same pid left, is removed and a new file made; the link's target is untouched."""
    from ganctl.fsutil import atomic_write, temp_path

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "grid.png"
    temp_path(out).symlink_to(victim)
    atomic_write(out, b"new")
    assert victim.read_text() == "precious" and not out.is_symlink() and out.read_bytes() == b"new"
    temp_path(out).write_bytes(b"left by a dead process, much longer than what comes now")
    atomic_write(out, b"newer")
    assert out.read_bytes() == b"newer" and not temp_path(out).exists()

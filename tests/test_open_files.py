"""Several handles on one file, and open files whose file changes under them (real mounts).

Each test does what programs do (logrotate's copytruncate, a temp file deleted while open, a
mapping written after close, a folder's copies changed while a file is read) and asserts
what ext4 gives; then that every copy holds those bytes and the catalog's size and hash are
theirs. Found by review; each failed before its fix.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from homepool.pool import LiveFile, Pool

from .helpers import assert_clean, copies_on_disk, out_of_memory, reader
from .mounting import mount_pool, wait_for

# Writers too are passed through to the kernel (the test drives have less room than it needs).
PASSTHROUGH = {"HOMEPOOL_PASSTHROUGH_ROOM": "0"}


@pytest.fixture(params=["daemon", "passthrough"])
def mnt(request: pytest.FixtureRequest, dir_pool: Pool, state_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """The pool mounted; with "passthrough", 1-copy files (Videos) are written by the kernel."""
    dir_pool.close()
    with mount_pool(state_dir, tmp_path, env=PASSTHROUGH if request.param == "passthrough" else None) as (m, _):
        yield m


def recorded(state_dir: Path, rel: str) -> tuple[int, str | None]:
    with reader(state_dir) as pool:
        node = pool.stat(rel)
        return node.size, node.hash


def assert_holds(state_dir: Path, dir_drives: list[Path], rel: str, expected: bytes) -> None:
    """Every copy of `rel` holds `expected`, and the catalog says so (size and hash)."""
    copies = copies_on_disk(dir_drives, rel)
    assert copies and all(c.read_bytes() == expected for c in copies), "a copy differs from what was written"
    assert recorded(state_dir, rel) == (len(expected), blake3.blake3(expected).hexdigest())


@pytest.mark.parametrize("folder", ["Documents", "Videos"])
def test_a_write_through_another_handle_counts_in_the_hash(mnt: Path, state_dir: Path, dir_drives: list[Path],
                                                          folder: str) -> None:
    p = mnt / f"{folder}/a.bin"
    fd1 = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd1, b"a" * 100)  # in order from 0: this handle hashes as it writes
    fd2 = os.open(p, os.O_RDWR)
    os.pwrite(fd2, b"X", 10)  # another handle changes the middle
    os.close(fd2)
    os.close(fd1)  # recorded last
    assert_holds(state_dir, dir_drives, f"{folder}/a.bin", b"a" * 10 + b"X" + b"a" * 89)


@pytest.mark.parametrize("how", ["truncate", "O_TRUNC"])
def test_a_file_truncated_while_a_writer_has_it_open(mnt: Path, state_dir: Path, dir_drives: list[Path],
                                                     how: str) -> None:
    """logrotate's copytruncate: the log is emptied by path while the program writing it
    goes on at its own offset (leaving a hole); an appender writes at the new end."""
    p = mnt / "Documents/app.log"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"a" * 100)
    if how == "truncate":
        os.truncate(p, 0)
    else:
        os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    assert os.stat(p).st_size == 0
    appender = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(appender, b"line\n")
    os.close(appender)
    assert p.read_bytes() == b"line\n"
    os.write(fd, b"b" * 10)  # at its offset, 100
    os.close(fd)
    assert_holds(state_dir, dir_drives, "Documents/app.log", b"line\n" + bytes(95) + b"b" * 10)


def test_every_handle_shows_the_size_the_file_has(mnt: Path) -> None:
    p = mnt / "Documents/f.bin"
    fd1 = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    fd2 = os.open(p, os.O_RDWR)
    try:
        os.write(fd2, b"z" * 1000)
        os.ftruncate(fd1, 10)  # the last change wins, whichever handle made it
        assert (os.fstat(fd1).st_size, os.fstat(fd2).st_size, os.stat(p).st_size) == (10, 10, 10)
    finally:
        os.close(fd1)
        os.close(fd2)


@pytest.mark.parametrize("folder", ["Documents", "Videos"])
def test_a_deleted_file_still_open_takes_every_change(mnt: Path, folder: str) -> None:
    """A temp file deleted while open (mkstemp, then unlink): ftruncate, fchmod, futimens and
    the xattr calls on its descriptor work, as on ext4; the pool has nothing left of it."""
    p = mnt / f"{folder}/tmp"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 100)
        os.unlink(p)
        os.ftruncate(fd, 4096)
        os.fchmod(fd, 0o644)
        os.utime(fd, ns=(1_000_000_000, 2_000_000_000))
        os.setxattr(fd, "user.k", b"v")
        st = os.fstat(fd)
        assert (st.st_size, st.st_mode & 0o7777, st.st_mtime_ns, st.st_nlink) == (4096, 0o644, 2_000_000_000, 0)
        assert os.getxattr(fd, "user.k") == b"v" and "user.k" in os.listxattr(fd)
        os.removexattr(fd, "user.k")
        assert os.pread(fd, 4096, 0) == b"x" * 100 + bytes(3996)
    finally:
        os.close(fd)
    assert not p.exists()


def test_a_new_file_never_gets_the_inode_of_a_deleted_one_still_open(dir_pool: Pool, state_dir: Path,
                                                                     tmp_path: Path) -> None:
    """The mount's first new file after the newest one was deleted while open: its node id
    (the inode number) is a new one, not the deleted file's, which the kernel still holds
    (SQLite hands out the highest id again). Found by review: the ids were counted from the
    first create, not from the start of the mount."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.write_bytes("Documents/b.txt", b"B")  # the highest id
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        fd = os.open(mnt / "Documents/b.txt", os.O_RDONLY)
        try:
            os.unlink(mnt / "Documents/b.txt")
            (mnt / "Documents/c.txt").write_bytes(b"C")
            assert os.fstat(fd).st_ino != os.stat(mnt / "Documents/c.txt").st_ino
            assert os.pread(fd, 10, 0) == b"B" and (mnt / "Documents/c.txt").read_bytes() == b"C"
        finally:
            os.close(fd)
    with reader(state_dir) as pool:
        assert pool.read_bytes("Documents/c.txt") == b"C"
        assert_clean(pool)


def test_a_second_writer_passed_through_does_not_trust_an_old_hash(mnt: Path, state_dir: Path,
                                                                   dir_drives: list[Path]) -> None:
    p = mnt / "Videos/v.bin"
    p.write_bytes(b"A" * 4096)
    fd1 = os.open(p, os.O_RDWR)
    os.pwrite(fd1, b"B" * 4096, 0)  # same size, perhaps by the kernel itself: not yet recorded
    fd2 = os.open(p, os.O_RDWR)
    os.close(fd1)
    os.close(fd2)  # nothing changed through this one since it opened, but the file did
    assert_holds(state_dir, dir_drives, "Videos/v.bin", b"B" * 4096)


@pytest.mark.parametrize("folder", ["Documents", "Videos"])
def test_a_mapping_written_after_close_is_recorded(mnt: Path, state_dir: Path, dir_drives: list[Path],
                                                   folder: str) -> None:
    """Stores to a shared mapping after its file was closed: recorded when the mapping goes
    (munmap ends the file's last use; the catalog takes it in the background)."""
    p = mnt / f"{folder}/m.bin"
    p.write_bytes(bytes(8192))
    fd = os.open(p, os.O_RDWR)
    m = mmap.mmap(fd, 8192)
    m[0:5] = b"first"
    os.close(fd)  # recorded with "first"
    m[100:106] = b"second"  # the same dirty page: the file's times do not change
    m.close()
    expected = bytearray(8192)
    expected[0:5] = b"first"
    expected[100:106] = b"second"
    want = (len(expected), blake3.blake3(expected).hexdigest())
    wait_for(lambda: recorded(state_dir, f"{folder}/m.bin") == want, what="the mapping's writes recorded")
    assert_holds(state_dir, dir_drives, f"{folder}/m.bin", bytes(expected))


def _set_copies(state_dir: Path, folder: str, copies: int) -> None:
    subprocess.run([sys.executable, "-m", "homepool", "--pool", str(state_dir), "folder", "set", folder,
                    "--copies", str(copies)], check=True, capture_output=True)


def test_copies_change_only_when_the_file_is_closed(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    """A folder's copies change while its files are open for reading: a file open for
    reading keeps its copies until its last close. Writing it meanwhile works (a reader
    passed through to the kernel keeps the inode's one copy), and the reader reads what was
    written (its copy is not the one removed)."""
    grows, shrinks = mnt / "Videos/g.bin", mnt / "Documents/s.bin"
    grows.write_bytes(b"g" * 1000)
    shrinks.write_bytes(b"a" * 8192)
    r1, r2 = os.open(grows, os.O_RDONLY), os.open(shrinks, os.O_RDONLY)
    try:
        _set_copies(state_dir, "Videos", 2)
        _set_copies(state_dir, "Documents", 1)
        for p, data in ((grows, b"G" * 10), (shrinks, b"b" * 10)):
            w = os.open(p, os.O_WRONLY)  # not ETXTBSY
            os.pwrite(w, data, 0)
            os.close(w)
        assert os.pread(r1, 20, 0) == b"G" * 10 + b"g" * 10
        assert os.pread(r2, 20, 0) == b"b" * 10 + b"a" * 10
        assert len(copies_on_disk(dir_drives, "Videos/g.bin")) == 1  # not yet
        assert len(copies_on_disk(dir_drives, "Documents/s.bin")) == 2
    finally:
        os.close(r1)
        os.close(r2)
    wait_for(lambda: len(copies_on_disk(dir_drives, "Videos/g.bin")) == 2
             and len(copies_on_disk(dir_drives, "Documents/s.bin")) == 1, what="the copies to change at the close")
    assert_holds(state_dir, dir_drives, "Videos/g.bin", b"G" * 10 + b"g" * 990)
    assert_holds(state_dir, dir_drives, "Documents/s.bin", b"b" * 10 + b"a" * 8182)


def test_names_and_renames_around_an_open_writer(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    """A hard link made and the own name removed while writing; a rename over a file being
    written; two appenders: what ext4 gives, and a clean pool after."""
    p = mnt / "Documents/h1"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"1" * 5000)
    os.link(p, mnt / "Documents/h2")
    os.unlink(p)
    os.write(fd, b"2" * 5000)
    os.fchmod(fd, 0o600)
    os.close(fd)
    assert_holds(state_dir, dir_drives, "Documents/h2", b"1" * 5000 + b"2" * 5000)
    (mnt / "Documents/new").write_bytes(b"N" * 100)
    fd = os.open(mnt / "Documents/old", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"O" * 100)
    os.rename(mnt / "Documents/new", mnt / "Documents/old")
    os.write(fd, b"O" * 100)  # to the file that lost its name
    os.close(fd)
    assert_holds(state_dir, dir_drives, "Documents/old", b"N" * 100)
    log = mnt / "Documents/k.log"
    a = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    b = os.open(log, os.O_WRONLY | os.O_APPEND)
    for i in range(50):
        os.write(a, b"A%03d\n" % i)
        os.write(b, b"B%03d\n" % i)
    os.close(b)
    os.close(a)
    assert_holds(state_dir, dir_drives, "Documents/k.log", b"".join(b"A%03d\nB%03d\n" % (i, i) for i in range(50)))
    with reader(state_dir) as pool:
        assert_clean(pool)


def test_a_read_from_memory_only_says_when_the_drive_must_be_asked(loop_drives, tmp_path: Path) -> None:
    """`LiveFile.read(wait=False)` (the mount's first try at a small read): the bytes if the
    page cache holds them all, or the end of the file; BlockingIOError if part of them is on
    the drive only; on a filesystem that cannot tell (tmpfs), the bytes, read as with `wait`."""
    (drive,) = loop_drives(64)
    data = os.urandom(1 << 20)
    on_ext4 = drive / "film.mkv"
    on_ext4.write_bytes(data)
    out_of_memory(on_ext4)
    fd = os.open(on_ext4, os.O_RDONLY)
    try:
        f = LiveFile(1, "Documents/film.mkv", {1: fd}, len(data), writable=False)
        with pytest.raises(BlockingIOError):
            f.read(4096, 8192, wait=False)
        assert f.read(4096, 8192) == data[8192:12288]  # (and now in memory, with what the kernel read ahead)
        assert f.read(4096, 8192, wait=False) == data[8192:12288]
        with pytest.raises(BlockingIOError):
            f.read(4096, len(data) - 100, wait=False)
        assert f.read(4096, len(data) - 100) == data[-100:]
        assert f.read(4096, len(data) - 100, wait=False) == data[-100:]  # the end: fewer bytes, no wait
    finally:
        os.close(fd)
    shm = Path("/dev/shm") / f"homepool-test-{os.getpid()}"
    shm.write_bytes(data[:10_000])
    fd = os.open(shm, os.O_RDONLY)
    try:
        f = LiveFile(1, "Documents/notes.txt", {1: fd}, 10_000, writable=False)
        assert f.read(4096, 8192, wait=False) == data[8192:10_000] and not f.tells_cached
    finally:
        os.close(fd)
        shm.unlink()

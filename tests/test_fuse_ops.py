"""The FUSE mount (first slice: a read-only view), on a real mount in a child process."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from homepool import mount as mount_mod
from homepool.cli import main
from homepool.errors import FuseUnavailable
from homepool.pool import Pool

from .helpers import copies_on_disk


def fuse_or_skip() -> None:
    try:
        mount_mod.check_fuse()
    except FuseUnavailable as e:
        pytest.skip(f"LOUD SKIP: {e}")


def wait_for(cond, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition, bounded by the deadline


def force_unmount(mnt: Path) -> None:
    for cmd in (["fusermount3", "-u", str(mnt)], ["umount", str(mnt)], ["umount", "-l", str(mnt)]):
        if not os.path.ismount(mnt):
            return
        subprocess.run(cmd, capture_output=True)


@contextmanager
def mount_pool(state_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    """The pool mounted at tmp/mnt by `homepool mount --foreground`; always unmounted after."""
    fuse_or_skip()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "mount.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "homepool", "--pool", str(state_dir), "mount", "-f", str(mnt)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, what="the mount")
        assert os.path.ismount(mnt), log.read_text()
        yield mnt, proc
    finally:
        force_unmount(mnt)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def mounted(dir_pool: Pool, state_dir: Path, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen]]:
    with mount_pool(state_dir, tmp_path) as m:
        yield m


def fill(pool: Pool) -> dict[str, bytes]:
    files = {"Photos/2010/beach.jpg": os.urandom(300_000), "Photos/2010/notes.txt": b"sunny",
             "Documents/a.txt": b"letter", "Videos/film.mkv": os.urandom(3_000_000)}
    for path, data in files.items():
        pool.makedirs(path.rpartition("/")[0])
        pool.write_bytes(path, data, mode=0o640, mtime_ns=1_300_000_000_000_000_000)
    return files


def test_the_tree_and_attributes_match_the_pool(dir_pool: Pool, mounted) -> None:
    files = fill(dir_pool)
    mnt, _ = mounted
    assert sorted(os.listdir(mnt)) == sorted(n.name for n in dir_pool.listdir(""))
    assert sorted(os.listdir(mnt / "Photos/2010")) == ["beach.jpg", "notes.txt"]
    for path, data in files.items():
        st = os.stat(mnt / path)
        assert st.st_size == len(data)
        assert st.st_mtime_ns == 1_300_000_000_000_000_000
        assert st.st_mode & 0o7777 == 0o640
        assert st.st_ino == dir_pool.stat(path).id
    assert os.path.isdir(mnt / "Photos/2010")


def test_reads_return_the_content(dir_pool: Pool, mounted) -> None:
    files = fill(dir_pool)
    mnt, _ = mounted
    for path, data in files.items():
        assert (mnt / path).read_bytes() == data
    with open(mnt / "Videos/film.mkv", "rb") as f:
        f.seek(1_000_003)
        assert f.read(5000) == files["Videos/film.mkv"][1_000_003:1_005_003]


def test_missing_names_and_case(dir_pool: Pool, mounted) -> None:
    fill(dir_pool)
    mnt, _ = mounted
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "Photos/nope.jpg")
    assert os.path.isdir(mnt / "photos")  # folders match as Windows would


def test_changes_are_refused_with_erofs(dir_pool: Pool, mounted) -> None:
    fill(dir_pool)
    mnt, _ = mounted
    for attempt in (lambda: os.open(mnt / "Photos/new.jpg", os.O_WRONLY | os.O_CREAT),
                    lambda: os.open(mnt / "Documents/a.txt", os.O_WRONLY | os.O_APPEND),
                    lambda: os.mkdir(mnt / "Photos/new"), lambda: os.unlink(mnt / "Documents/a.txt"),
                    lambda: os.rename(mnt / "Documents/a.txt", mnt / "Documents/b.txt")):
        with pytest.raises(OSError) as e:
            attempt()
        assert e.value.errno == errno.EROFS
    assert dir_pool.read_bytes("Documents/a.txt") == b"letter"


def test_files_added_while_mounted_appear(dir_pool: Pool, mounted) -> None:
    mnt, _ = mounted
    assert not (mnt / "Documents/later.txt").exists()
    dir_pool.write_bytes("Documents/later.txt", b"added after mounting")
    wait_for(lambda: (mnt / "Documents/later.txt").exists(), what="the new file")
    assert (mnt / "Documents/later.txt").read_bytes() == b"added after mounting"


@pytest.mark.expect_errors
def test_a_read_falls_over_to_the_other_copy(dir_pool: Pool, dir_drives: list[Path], mounted) -> None:
    dir_pool.write_bytes("Photos/only-twice.jpg", b"precious" * 1000)
    mnt, _ = mounted
    for copy in copies_on_disk(dir_drives, "Photos/only-twice.jpg")[:1]:
        copy.unlink()  # one copy lost behind the pool's back
    assert (mnt / "Photos/only-twice.jpg").read_bytes() == b"precious" * 1000


def test_statfs_shows_the_pool(dir_pool: Pool, mounted) -> None:
    mnt, _ = mounted
    st = os.statvfs(mnt)
    size, free = dir_pool.space()
    assert st.f_blocks * st.f_frsize == size // 4096 * 4096
    assert abs(st.f_bavail * st.f_frsize - free) < 1 << 20


def test_sigterm_unmounts_cleanly(dir_pool: Pool, mounted) -> None:
    mnt, proc = mounted
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not os.path.ismount(mnt)


def test_mount_and_unmount_commands(dir_pool: Pool, state_dir: Path, tmp_path: Path, capsys) -> None:
    fuse_or_skip()
    mnt = tmp_path / "m"
    assert main(["--pool", str(state_dir), "mount", str(tmp_path / "missing")]) == 3
    assert "mkdir -p" in capsys.readouterr().err
    assert main(["--pool", str(state_dir), "unmount", str(tmp_path)]) == 3
    assert "not a homepool mount" in capsys.readouterr().err
    mnt.mkdir()
    try:
        assert main(["--pool", str(state_dir), "mount", str(mnt)]) == 0
        assert os.path.ismount(mnt) and mount_mod.is_homepool_mount(mnt)
        assert main(["--pool", str(state_dir), "mount", str(mnt)]) == 3
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "already mounted" in err
        assert mount_mod.pidfile(state_dir, mnt).exists()
        assert main(["--pool", str(state_dir), "unmount", str(mnt)]) == 0
        assert not os.path.ismount(mnt)
        assert not mount_mod.pidfile(state_dir, mnt).exists()  # the daemon is gone too
    finally:
        force_unmount(mnt)


def open_copies(pid: int) -> list[str]:
    """The drive files a mount daemon has open, from /proc."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if "/HomePool/" in target:
                out.append(target)
    return out


def test_concurrent_readers_spread_over_the_copies(dir_pool: Pool, mounted) -> None:
    dir_pool.write_bytes("Music/song.flac", b"la" * 100_000)
    mnt, proc = mounted
    with open(mnt / "Music/song.flac", "rb") as a, open(mnt / "Music/song.flac", "rb") as b:
        assert a.read(10) == b.read(10) == b"lalalalala"
        held = open_copies(proc.pid)
        assert len(held) == 2 and held[0] != held[1], held  # one reader per drive


def test_extended_attributes_come_from_the_copies(dir_pool: Pool, dir_drives: list[Path], mounted) -> None:
    dir_pool.write_bytes("Documents/tagged.txt", b"x")
    for copy in copies_on_disk(dir_drives, "Documents/tagged.txt"):
        os.setxattr(copy, "user.origin", b"scanner")
    mnt, _ = mounted
    assert os.getxattr(mnt / "Documents/tagged.txt", "user.origin") == b"scanner"
    assert "user.origin" in os.listxattr(mnt / "Documents/tagged.txt")
    with pytest.raises(OSError) as e:
        os.getxattr(mnt / "Documents/tagged.txt", "user.missing")
    assert e.value.errno == errno.ENODATA


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32): the filesystem fails every I/O from now on


@pytest.mark.expect_errors
def test_a_drive_failing_under_a_reader_is_invisible_to_it(state_dir: Path, loop_drives, tmp_path: Path) -> None:
    a, b = loop_drives(64, 64)
    data = os.urandom(8 << 20)
    with Pool.create(state_dir) as pool:
        pool.add_drive(a)
        pool.add_drive(b)
        pool.write_bytes("Videos/film.mkv", data)
        pool.set_copies("Videos", 2)
    with mount_pool(state_dir, tmp_path) as (mnt, proc):
        with open(mnt / "Videos/film.mkv", "rb", buffering=0) as f:
            first = f.read(1 << 20)
            (held,) = open_copies(proc.pid)
            dying = a if held.startswith(str(a)) else b
            fd = os.open(dying, os.O_RDONLY)
            try:  # the drive under the reader fails: every read there is EIO from now on
                fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", 2))
            finally:
                os.close(fd)
            rest = f.read()
        assert first + rest == data
    with Pool.open(state_dir, write=False) as pool:
        states = {d.root: state for d, state in pool.replicas("Videos/film.mkv")}
        assert states[dying] == "bad"


def test_a_file_replaced_while_mounted_is_read_fresh(dir_pool: Pool, mounted) -> None:
    dir_pool.write_bytes("Documents/v.txt", b"version 1")
    mnt, _ = mounted
    assert (mnt / "Documents/v.txt").read_bytes() == b"version 1"
    assert (mnt / "Documents/v.txt").read_bytes() == b"version 1"  # cached: same content
    dir_pool.write_bytes("Documents/v.txt", b"version 2")
    wait_for(lambda: (mnt / "Documents/v.txt").read_bytes() == b"version 2", what="the new version")

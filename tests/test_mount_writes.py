"""Changing the pool through the mount: every operation, its errors, copies and the catalog
(real mounts over directory drives, and real ext4 loop drives where space or crashes matter)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import blake3
import pytest

from homepool.pool import LiveFile, Pool

from .helpers import assert_clean, copies_on_disk, raises, reader
from .mounting import mount_pool, wait_for

Mount = Callable[[], Path]


@pytest.fixture
def mnt(dir_pool: Pool, state_dir: Path, tmp_path: Path) -> Iterator[Path]:
    """The three-drive directory pool (Documents: 2 copies, Videos: 1), mounted."""
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (m, _):
        yield m


def test_a_new_file_is_written_to_every_copy_and_recorded(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    data = os.urandom(3 << 20)
    (mnt / "Documents/report.pdf").write_bytes(data)
    assert (mnt / "Documents/report.pdf").read_bytes() == data
    copies = copies_on_disk(dir_drives, "Documents/report.pdf")
    assert len(copies) == 2 and all(c.read_bytes() == data for c in copies)  # byte-identical plain files
    assert copies[0].stat().st_mtime_ns == copies[1].stat().st_mtime_ns
    with reader(state_dir) as pool:
        node = pool.stat("Documents/report.pdf")
        assert node.size == len(data) and node.hash == blake3.blake3(data).hexdigest()
        assert sorted(state for _, state in pool.replicas("Documents/report.pdf")) == ["ok", "ok"]
        assert node.mtime_ns == copies[0].stat().st_mtime_ns
        assert_clean(pool)


def test_a_one_copy_folder_keeps_one_copy(mnt: Path, dir_drives: list[Path]) -> None:
    (mnt / "Videos/clip.mkv").write_bytes(b"v" * 100_000)
    assert len(copies_on_disk(dir_drives, "Videos/clip.mkv")) == 1


def test_open_flags_excl_trunc_append(mnt: Path, state_dir: Path) -> None:
    p = mnt / "Documents/log.txt"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"one\n")
    os.close(fd)
    raises(errno.EEXIST, lambda: os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"two\n")
    os.close(fd)
    assert p.read_bytes() == b"one\ntwo\n"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert p.read_bytes() == b"" and p.stat().st_size == 0
    with reader(state_dir) as pool:
        assert pool.stat("Documents/log.txt").size == 0


def test_random_writes_and_truncate_keep_copies_identical(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    p = mnt / "Documents/db.bin"
    model = bytearray(os.urandom(200_000))
    p.write_bytes(model)
    with open(p, "r+b", buffering=0) as f:
        for off, n in ((150_000, 70_000), (10, 5), (400_000, 3)):  # over, inside, past the end (a hole)
            chunk = os.urandom(n)
            f.seek(off)
            f.write(chunk)
            model[len(model):off] = bytes(max(0, off - len(model)))
            model[off:off + n] = chunk
        f.truncate(300_000)
        del model[300_000:]
        assert os.fstat(f.fileno()).st_size == 300_000
    os.truncate(p, 250_000)  # by path, while not open
    del model[250_000:]
    assert p.read_bytes() == bytes(model)
    assert all(c.read_bytes() == bytes(model) for c in copies_on_disk(dir_drives, "Documents/db.bin"))
    with reader(state_dir) as pool:
        node = pool.stat("Documents/db.bin")
        assert (node.size, node.hash) == (len(model), blake3.blake3(model).hexdigest())
        assert_clean(pool)


def test_directories(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    os.mkdir(mnt / "Documents/taxes", 0o750)
    assert stat.S_IMODE((mnt / "Documents/taxes").stat().st_mode) == 0o750
    assert all((d / "HomePool/Documents/taxes").is_dir() for d in dir_drives)
    raises(errno.EEXIST, lambda: os.mkdir(mnt / "Documents/taxes"))
    (mnt / "Documents/taxes/2025.pdf").write_bytes(b"x")
    raises(errno.ENOTEMPTY, lambda: os.rmdir(mnt / "Documents/taxes"))
    raises(errno.ENOTDIR, lambda: os.rmdir(mnt / "Documents/taxes/2025.pdf"))
    raises(errno.EISDIR, lambda: os.unlink(mnt / "Documents/taxes"))
    os.unlink(mnt / "Documents/taxes/2025.pdf")
    os.rmdir(mnt / "Documents/taxes")
    assert not any((d / "HomePool/Documents/taxes").exists() for d in dir_drives)
    raises(errno.ENOENT, lambda: os.rmdir(mnt / "Documents/taxes"))
    os.mkdir(mnt / "Scans")  # at the top: a new folder
    raises(errno.EPERM, lambda: (mnt / "loose.txt").write_bytes(b"x"))  # files live in folders
    with reader(state_dir) as pool:
        assert pool.folder("Scans")[1] == 1
        assert_clean(pool)


def test_unlink_while_open_stays_readable(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    data = os.urandom(1 << 20)
    (mnt / "Documents/tmp.bin").write_bytes(data)
    with open(mnt / "Documents/tmp.bin", "rb") as r, open(mnt / "Documents/tmp.bin", "r+b") as w:
        os.unlink(mnt / "Documents/tmp.bin")
        assert not (mnt / "Documents/tmp.bin").exists()
        assert r.read() == data
        w.write(b"still writable")
        w.flush()
        st = os.fstat(w.fileno())
        assert st.st_size == len(data) and st.st_nlink == 0  # no name left
    assert copies_on_disk(dir_drives, "Documents/tmp.bin") == []
    with reader(state_dir) as pool:
        assert pool.lookup("Documents/tmp.bin") is None
        assert_clean(pool)


def test_rename(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    (mnt / "Documents/a.txt").write_bytes(b"A")
    (mnt / "Documents/b.txt").write_bytes(b"B")
    os.rename(mnt / "Documents/a.txt", mnt / "Documents/b.txt")  # atomic replace
    assert (mnt / "Documents/b.txt").read_bytes() == b"A" and not (mnt / "Documents/a.txt").exists()
    os.mkdir(mnt / "Documents/sub")
    os.rename(mnt / "Documents/b.txt", mnt / "Documents/sub/c.txt")
    os.rename(mnt / "Documents/sub/c.txt", mnt / "Videos/c.txt")  # to a 1-copy folder
    # (the mount's next round, within a second, not the rename: see `copy_moved_files`)
    wait_for(lambda: len(copies_on_disk(dir_drives, "Videos/c.txt")) == 1, what="the extra copy to go")
    os.mkdir(mnt / "Documents/empty")
    os.rename(mnt / "Documents/sub", mnt / "Documents/empty")  # over an empty directory
    os.mkdir(mnt / "Documents/full")
    (mnt / "Documents/full/x").write_bytes(b"x")
    raises(errno.ENOTEMPTY, lambda: os.rename(mnt / "Documents/empty", mnt / "Documents/full"))
    raises(errno.EISDIR, lambda: os.rename(mnt / "Documents/full/x", mnt / "Documents/empty"))
    raises(errno.ENOTDIR, lambda: os.rename(mnt / "Documents/empty", mnt / "Documents/full/x"))
    raises(errno.ENOENT, lambda: os.rename(mnt / "Documents/nope", mnt / "Documents/x"))
    with reader(state_dir) as pool:
        assert pool.read_bytes("Videos/c.txt") == b"A"
        assert pool.stat("Documents/empty").is_dir
        assert_clean(pool)


def renameat2(src: Path, dst: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_rename_noreplace_and_exchange(mnt: Path) -> None:
    (mnt / "Documents/a").write_bytes(b"A")
    (mnt / "Documents/b").write_bytes(b"B")
    raises(errno.EEXIST, lambda: renameat2(mnt / "Documents/a", mnt / "Documents/b", 1))  # RENAME_NOREPLACE
    raises(errno.EINVAL, lambda: renameat2(mnt / "Documents/a", mnt / "Documents/b", 2))  # RENAME_EXCHANGE
    renameat2(mnt / "Documents/a", mnt / "Documents/c", 1)
    assert (mnt / "Documents/c").read_bytes() == b"A" and (mnt / "Documents/b").read_bytes() == b"B"


def test_symlinks_and_fifos(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    (mnt / "Documents/real.txt").write_bytes(b"R")
    os.symlink("real.txt", mnt / "Documents/link")
    assert os.readlink(mnt / "Documents/link") == "real.txt"
    assert (mnt / "Documents/link").read_bytes() == b"R"
    assert all(os.readlink(d / "HomePool/Documents/link") == "real.txt" for d in dir_drives)
    os.rename(mnt / "Documents/link", mnt / "Documents/link2")
    assert os.readlink(mnt / "Documents/link2") == "real.txt"
    os.mkfifo(mnt / "Documents/pipe", 0o640)
    assert stat.S_ISFIFO(os.lstat(mnt / "Documents/pipe").st_mode)
    os.link(mnt / "Documents/link2", mnt / "Documents/link3")  # a hard link of the symlink (test_hard_links.py)
    assert os.readlink(mnt / "Documents/link3") == "real.txt" and os.lstat(mnt / "Documents/link2").st_nlink == 2
    assert all(os.lstat(d / "HomePool/Documents/link3").st_ino == os.lstat(d / "HomePool/Documents/link2").st_ino
               for d in dir_drives)
    os.unlink(mnt / "Documents/link3")
    os.unlink(mnt / "Documents/link2")
    os.unlink(mnt / "Documents/pipe")
    assert not any(os.path.lexists(d / "HomePool/Documents/link2") for d in dir_drives)
    with reader(state_dir) as pool:
        assert_clean(pool)


def test_times_before_1970(mnt: Path, state_dir: Path) -> None:
    p = mnt / "Documents/old.txt"
    p.write_bytes(b"x")
    os.utime(p, ns=(-1_000_000_001, -86_400_000_000_000))  # a day before 1970, and just before
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (-1_000_000_001, -86_400_000_000_000)
    assert [e.stat().st_mtime_ns for e in os.scandir(mnt / "Documents") if e.name == "old.txt"] == [st.st_mtime_ns]
    with reader(state_dir) as pool:
        assert pool.stat("Documents/old.txt").mtime_ns == -86_400_000_000_000
        assert_clean(pool)


def test_chmod_chown_utimens(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    p = mnt / "Documents/f.txt"
    p.write_bytes(b"x")
    os.chmod(p, 0o604)
    os.chown(p, 1234, 5678)
    os.utime(p, ns=(1_000_000_000, 1_600_000_000_123_456_789))
    st = p.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o604, 1234, 5678)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_000, 1_600_000_000_123_456_789)
    os.utime(p, ns=(2_000_000_000, 1_600_000_000_123_456_789))  # the access time alone
    assert (p.stat().st_atime_ns, p.stat().st_mtime_ns) == (2_000_000_000, 1_600_000_000_123_456_789)
    subprocess.run(["touch", "-m", "-d", "@1500000000", p], check=True)  # the mtime alone (UTIME_OMIT)
    assert (p.stat().st_atime_ns, p.stat().st_mtime_ns) == (2_000_000_000, 1_500_000_000_000_000_000)
    os.utime(p, ns=(2_000_000_000, 1_600_000_000_123_456_789))
    for c in copies_on_disk(dir_drives, "Documents/f.txt"):
        cst = c.stat()
        assert (stat.S_IMODE(cst.st_mode), cst.st_uid, cst.st_gid, cst.st_mtime_ns) == \
            (0o604, 1234, 5678, 1_600_000_000_123_456_789)
    os.chmod(mnt / "Documents", 0o700)
    assert stat.S_IMODE((mnt / "Documents").stat().st_mode) == 0o700
    with reader(state_dir) as pool:
        node = pool.stat("Documents/f.txt")
        assert (node.uid, node.gid, node.mtime_ns, node.atime_ns) == (1234, 5678, 1_600_000_000_123_456_789,
                                                                      2_000_000_000)
        assert_clean(pool)


def test_a_directory_changes_time_when_its_entries_change(mnt: Path, state_dir: Path) -> None:
    d, other = mnt / "Documents/d", mnt / "Documents/other"
    os.mkdir(d)
    os.mkdir(other)

    def times(p: Path) -> tuple[int, int]:
        st = p.stat()
        return st.st_mtime_ns, st.st_ctime_ns

    for change in (lambda: (d / "f").write_bytes(b"x"), lambda: os.mkdir(d / "sub"),
                   lambda: os.symlink("f", d / "link"), lambda: os.mkfifo(d / "fifo"),
                   lambda: os.rename(d / "f", d / "g"), lambda: os.unlink(d / "g"), lambda: os.rmdir(d / "sub")):
        before = times(d)
        change()
        after = times(d)
        assert after[0] > before[0] and after[1] > before[1]
    before_d, before_other = times(d), times(other)
    os.rename(d / "link", other / "link")  # both sides change
    assert times(d)[0] > before_d[0] and times(other)[0] > before_other[0]
    os.utime(d, ns=(5, 1_000_000_000_000_000_000))  # a time set by hand wins
    assert times(d)[0] == 1_000_000_000_000_000_000
    shown = times(other)[0]

    def recorded() -> int:
        with reader(state_dir) as pool:
            return pool.stat("Documents/other").mtime_ns
    wait_for(lambda: recorded() == shown, what="the mount to record the directory's time")


def test_names_longer_than_255_bytes(mnt: Path) -> None:
    long = mnt / "Documents" / ("x" * 256)
    raises(errno.ENAMETOOLONG, lambda: long.write_bytes(b"x"))
    raises(errno.ENAMETOOLONG, lambda: long.stat())
    raises(errno.ENAMETOOLONG, lambda: os.mkdir(long))
    (mnt / "Documents/short").write_bytes(b"x")
    raises(errno.ENAMETOOLONG, lambda: os.rename(mnt / "Documents/short", long))
    (mnt / "Documents" / ("y" * 255)).write_bytes(b"fits")
    assert (mnt / "Documents" / ("y" * 255)).read_bytes() == b"fits"
    os.symlink("z" * 300, mnt / "Documents/link")  # a symlink's target is a path, not a name
    assert os.readlink(mnt / "Documents/link") == "z" * 300


@contextmanager
def _descend(top: Path, names: list[str], make: bool = False) -> Iterator[int]:
    """A descriptor of the folder `top`/names...: walked one name at a time, as a program
    does past PATH_MAX (the whole path is too long for the kernel here too)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            if make:
                os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd
    finally:
        os.close(fd)


def test_paths_longer_than_path_max_work_as_on_a_local_filesystem(mnt: Path, state_dir: Path,
                                                                   dir_drives: list[Path]) -> None:
    """A local filesystem has no limit on depth, so neither has the pool: past PATH_MAX, with
    the drive's own path in front, each copy is still a plain file at the same path on its
    drive (reached there through a descriptor of a folder on the way: `drives.reach`)."""
    names = ["d" * 250] * 20  # 5,020 bytes below Documents/deep
    deep = "Documents/deep/" + "/".join(names)
    os.mkdir(mnt / "Documents/deep")
    (mnt / "Documents/tree/branch").mkdir(parents=True)
    (mnt / "Documents/tree/branch/leaf").write_bytes(b"leaf")
    with _descend(mnt / "Documents/deep", names, make=True) as at:
        fd = os.open("file", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=at)
        os.write(fd, b"deep down")
        os.setxattr(fd, "user.where", b"deep")
        os.close(fd)
        os.rename("file", "moved", src_dir_fd=at, dst_dir_fd=at)
        os.link("moved", "other name", src_dir_fd=at, dst_dir_fd=at)
        os.symlink("moved", "link", dir_fd=at)
        os.mkfifo("fifo", dir_fd=at)
        os.chmod("moved", 0o600, dir_fd=at)
        os.chown("moved", 1234, 5678, dir_fd=at)
        os.utime("moved", ns=(1_000_000_000, 2_000_000_000), dir_fd=at)
        os.rename(mnt / "Documents/tree", f"/proc/self/fd/{at}/tree")  # a folder moved down there
        st = os.stat("moved", dir_fd=at)
        assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_nlink) \
            == (0o600, 1234, 5678, 2_000_000_000, 2)
        assert sorted(os.listdir(at)) == ["fifo", "link", "moved", "other name", "tree"]
        assert os.readlink("link", dir_fd=at) == "moved"
        fd = os.open("other name", os.O_RDONLY, dir_fd=at)
        assert os.read(fd, 100) == b"deep down" and os.getxattr(fd, "user.where") == b"deep"
        os.close(fd)
        fd = os.open("tree/branch/leaf", os.O_RDONLY, dir_fd=at)
        assert os.read(fd, 100) == b"leaf"
        os.close(fd)
    with reader(state_dir) as pool:
        node = pool.stat(f"{deep}/moved")
        held = [pool.drive(r.drive_id) for r in pool.cat.replicas(node.id)]
        assert len(held) == 2  # Documents keeps two copies: both plain files, past PATH_MAX
        for d in held:
            assert d.hash(f"{deep}/moved") == node.hash
            assert os.path.samestat(d.lstat(f"{deep}/moved"), d.lstat(f"{deep}/other name"))
            assert d.lstat(f"{deep}/moved").st_mode & 0o7777 == 0o600
            assert d.hash(f"{deep}/tree/branch/leaf") == pool.stat(f"{deep}/tree/branch/leaf").hash
        assert_clean(pool)  # `check` walks and reads the drives that deep too
    with _descend(mnt / "Documents/deep", names) as at:
        for name in ("moved", "other name", "link", "fifo", "tree/branch/leaf"):
            os.unlink(name, dir_fd=at)
        os.rmdir("tree/branch", dir_fd=at)
        os.rmdir("tree", dir_fd=at)
    with _descend(mnt / "Documents/deep", names[:-1]) as at:
        os.rmdir(names[-1], dir_fd=at)
    with reader(state_dir) as pool:
        assert pool.lookup(f"{deep}/moved") is None
        assert all(not d.lexists(f"{deep}/moved") and d.lexists(deep.rpartition("/")[0]) for d in pool.drives())
        assert_clean(pool)


def test_a_size_past_the_drives_limit_is_refused_and_drops_no_copy(mnt: Path, state_dir: Path,
                                                                    dir_drives: list[Path]) -> None:
    """EFBIG from every copy is the caller's error, not a failed drive: the copies stay."""
    too_big = 999_999_999_999_999  # past ext4's largest file
    for folder in ("Documents", "Videos"):
        p = mnt / folder / "keep.txt"
        p.write_bytes(b"precious")
        raises(errno.EFBIG, lambda p=p: os.truncate(p, too_big))
        with open(p, "r+b") as f:
            raises(errno.EFBIG, lambda f=f: os.ftruncate(f.fileno(), too_big))
            raises(errno.EFBIG, lambda f=f: os.pwrite(f.fileno(), b"x", too_big))
        assert p.read_bytes() == b"precious"
        wanted = 2 if folder == "Documents" else 1
        assert [c.read_bytes() for c in copies_on_disk(dir_drives, f"{folder}/keep.txt")] == [b"precious"] * wanted
    with reader(state_dir) as pool:
        assert len(pool.replicas("Documents/keep.txt")) == 2 and pool.stat("Documents/keep.txt").size == 8
        assert_clean(pool)


def test_attributes_set_while_open_are_recorded_at_close(mnt: Path, state_dir: Path, dir_drives: list[Path]) -> None:
    """tar's way: write, then fchown, fchmod and futimens on the open descriptor, then close."""
    p = mnt / "Documents/extracted.txt"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, b"content")
        os.fchown(fd, 1234, 5678)
        os.fchmod(fd, 0o640)
        os.utime(fd, ns=(1_000_000_000, 1_500_000_000_000_000_007))
        assert "extracted.txt" in os.listdir(p.parent)  # a listing shows them too (the kernel keeps them)
        st = p.stat()  # seen while still open
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns) == \
            (0o640, 1234, 5678, 1_500_000_000_000_000_007, 1_000_000_000)
    finally:
        os.close(fd)
    copies = copies_on_disk(dir_drives, "Documents/extracted.txt")
    assert len(copies) == 2
    for c in copies:
        cst = c.stat()
        assert (stat.S_IMODE(cst.st_mode), cst.st_uid, cst.st_gid, cst.st_mtime_ns) == \
            (0o640, 1234, 5678, 1_500_000_000_000_000_007)
    with reader(state_dir) as pool:
        node = pool.stat("Documents/extracted.txt")
        assert (stat.S_IMODE(node.mode), node.uid, node.gid, node.mtime_ns, node.atime_ns) == \
            (0o640, 1234, 5678, 1_500_000_000_000_000_007, 1_000_000_000)
        assert_clean(pool)


def test_permissions_are_enforced_for_other_users(dir_pool: Pool, state_dir: Path) -> None:
    """With other users let in (--allow-other), the kernel checks every mode as on a local
    filesystem (default_permissions), and a write by another user clears set-id bits."""
    dir_pool.close()
    # pytest's own temporary folders are closed to other users: mount where they can reach.
    place = Path(tempfile.mkdtemp(prefix="homepool-users-", dir="/var/tmp"))
    try:
        os.chmod(place, 0o755)
        with mount_pool(state_dir, place, allow_other=True) as (mnt, _):
            docs = mnt / "Documents"
            os.chmod(docs, 0o777)
            (docs / "public").write_bytes(b"p")
            os.chmod(docs / "public", 0o644)
            os.mkdir(docs / "private", 0o700)
            (docs / "private/secret").write_bytes(b"s")
            (docs / "setid").write_bytes(b"x")
            os.chmod(docs / "setid", 0o6777)
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

            def as_nobody(*cmd: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([*nobody, *cmd], capture_output=True, text=True)

            assert as_nobody("cat", str(docs / "public")).stdout == "p"  # let in...
            for denied in (as_nobody("cat", str(docs / "private/secret")),  # ...but not everywhere
                           as_nobody("sh", "-c", f"echo x > {docs / 'public'}"),
                           as_nobody("ls", str(docs / "private"))):
                assert denied.returncode != 0 and "Permission denied" in denied.stderr
            assert as_nobody("sh", "-c", f"echo y >> {docs / 'setid'}").returncode == 0
            assert stat.S_IMODE((docs / "setid").stat().st_mode) == 0o777
            assert (docs / "public").read_bytes() == b"p"
    finally:
        shutil.rmtree(place, ignore_errors=True)


@pytest.mark.parametrize("folder", ["Documents", "Videos"])
def test_set_id_bits_are_cleared_as_on_a_local_filesystem(dir_pool: Pool, state_dir: Path, folder: str) -> None:
    """The mount clears set-id bits itself (FUSE_HANDLE_KILLPRIV_V2), as ext4 does: on a write,
    a truncate or an O_TRUNC open by a user who may not keep them, and on any chown;
    set-group-id only with group execute, or if that user is not in the file's group. In the
    1-copy folder writers are passed through to the kernel, which then clears nothing: a
    set-id file is not passed through, and a bit set while such a writer is open is cleared
    when it closes."""
    dir_pool.close()
    place = Path(tempfile.mkdtemp(prefix="homepool-users-", dir="/var/tmp"))
    try:
        os.chmod(place, 0o755)
        with mount_pool(state_dir, place, allow_other=True, env={"HOMEPOOL_PASSTHROUGH_ROOM": "0"}) as (mnt, _):
            d = mnt / folder
            os.chmod(d, 0o777)
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]

            def made(name: str, mode: int) -> Path:
                p = d / name
                p.write_bytes(b"x")
                os.chmod(p, mode)
                return p

            def as_nobody(code: str) -> Callable[[Path], object]:
                script = f"import os, sys; p = sys.argv[1]; {code}"
                return lambda p: subprocess.run([*nobody, sys.executable, "-c", script, str(p)], check=True)

            cases = {  # name: (mode before, what nobody or root does, mode after)
                "write": (0o6777, as_nobody("open(p, 'ab').write(b'y')"), 0o777),
                "truncate": (0o6777, as_nobody("os.truncate(p, 0)"), 0o777),
                "o_trunc": (0o6777, as_nobody("open(p, 'wb')"), 0o777),
                "chown": (0o6755, lambda p: os.chown(p, 65534, 65534), 0o755),
                "chown_same": (0o4755, lambda p: os.chown(p, 0, 0), 0o755),
                "chown_locking": (0o2644, lambda p: os.chown(p, 65534, 65534), 0o2644),
                "chown_nothing": (0o6755, lambda p: os.chown(p, -1, -1), 0o755),
                "locking": (0o2666, as_nobody("open(p, 'ab').write(b'y')"), 0o2666),  # in the file's group
                "not_in_group": (0o2666, as_nobody("open(p, 'ab').write(b'y')"), 0o666),  # Linux >= 6.2
                "root": (0o6777, lambda p: p.write_bytes(b"y"), 0o6777),
            }
            for name, (before, act, after) in cases.items():
                p = made(name, before)
                if name == "locking":
                    os.chown(p, 0, 65534)
                    os.chmod(p, before)
                act(p)
                assert stat.S_IMODE(p.stat().st_mode) == after, name
            # A bit set while another user's writer is open (passed through in Videos).
            p = made("later", 0o777)
            writer = subprocess.Popen([*nobody, sys.executable, "-c", "import sys; f = open(sys.argv[1], 'r+b', 0); "
                                       "print('open', flush=True); sys.stdin.readline(); f.write(b'late')", str(p)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                assert writer.stdout is not None and writer.stdout.readline() == "open\n"
                os.chmod(p, 0o6777)
                writer.communicate("go\n", timeout=20)
            finally:
                writer.kill()
            assert writer.returncode == 0
            assert stat.S_IMODE(p.stat().st_mode) == 0o777 and p.read_bytes() == b"late"
    finally:
        shutil.rmtree(place, ignore_errors=True)


def test_extended_attributes_are_set_on_every_copy(mnt: Path, dir_drives: list[Path]) -> None:
    p = mnt / "Documents/tagged"
    p.write_bytes(b"t")
    os.setxattr(p, "user.rating", b"5")
    assert os.getxattr(p, "user.rating") == b"5"
    assert all(os.getxattr(c, "user.rating") == b"5" for c in copies_on_disk(dir_drives, "Documents/tagged"))
    os.removexattr(p, "user.rating")
    raises(errno.ENODATA, lambda: os.getxattr(p, "user.rating"))
    raises(errno.ENODATA, lambda: os.removexattr(p, "user.rating"))


def test_fsync_and_a_big_two_copy_write(mnt: Path, dir_drives: list[Path]) -> None:
    h = hashlib.sha256()
    with open(mnt / "Documents/big.bin", "wb") as f:
        for _ in range(24):
            chunk = os.urandom(1 << 20)
            h.update(chunk)
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    copies = copies_on_disk(dir_drives, "Documents/big.bin")
    assert len(copies) == 2
    assert all(hashlib.sha256(c.read_bytes()).digest() == h.digest() for c in copies)


def test_a_full_drive_moves_the_file_and_the_write_goes_on(state_dir: Path, loop_drives, tmp_path: Path) -> None:
    small, big = loop_drives(32, 128)
    with Pool.create(state_dir) as pool:
        pool.add_drive(small, label="small")
        pool.add_drive(big, label="big")
    ballast = big / "ballast"  # behind the pool's back: the big drive looks fuller than the small one
    with open(ballast, "wb") as f:
        st = os.statvfs(big)
        f.write(b"\0" * (st.f_bavail * st.f_frsize - (16 << 20)))
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        data = os.urandom(40 << 20)  # more than the small drive holds
        with open(mnt / "Videos/movie.mkv", "wb") as f:
            f.write(data[: 1 << 20])
            f.flush()
            assert (small / "HomePool/Videos/movie.mkv").exists()  # placed on the emptier drive
            ballast.unlink()
            f.write(data[1 << 20:])
        assert (mnt / "Videos/movie.mkv").read_bytes() == data
        assert (big / "HomePool/Videos/movie.mkv").read_bytes() == data
        assert not (small / "HomePool/Videos/movie.mkv").exists()
    with reader(state_dir) as pool:
        assert [d.label for d, _ in pool.replicas("Videos/movie.mkv")] == ["big"]
        assert_clean(pool)


def test_a_full_drive_moves_the_file_for_every_handle_on_it(state_dir: Path, loop_drives, tmp_path: Path) -> None:
    """Two programs write one file and a third reads it when the drive fills: the file moves
    for all three. The other writer's writes, made while it moves and after, land in the
    moved file (before, they went to the copy left behind, deleted: lost), and the reader
    reads what was written."""
    small, big = loop_drives(32, 128)
    with Pool.create(state_dir) as pool:
        pool.add_drive(small, label="small")
        pool.add_drive(big, label="big")
    ballast = big / "ballast"
    with open(ballast, "wb") as f:
        st = os.statvfs(big)
        f.write(b"\0" * (st.f_bavail * st.f_frsize - (16 << 20)))
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        data = bytearray(os.urandom(40 << 20))  # more than the small drive holds
        path = mnt / "Videos/log.bin"
        with open(path, "wb", buffering=0) as first:
            first.write(data[: 1 << 20])
            assert (small / "HomePool/Videos/log.bin").exists()
            with open(path, "r+b", buffering=0) as second, open(path, "rb", buffering=0) as watcher:
                ballast.unlink()
                # Meanwhile the second writer adds blocks past the end, a write at a time.
                tail = os.urandom(2 << 20)
                adding = threading.Thread(target=lambda: [os.pwrite(second.fileno(), tail[i:i + 4096], (40 << 20) + i)
                                                          for i in range(0, len(tail), 4096)])
                adding.start()
                first.write(data[1 << 20:])  # the small drive fills: the file moves to the big one
                adding.join()
                data += tail
                assert not (small / "HomePool/Videos/log.bin").exists()
                os.pwrite(second.fileno(), b"second writer", 5 << 20)
                data[5 << 20:(5 << 20) + 13] = b"second writer"
                assert os.pread(watcher.fileno(), 13, 5 << 20) == b"second writer"
                assert os.pread(watcher.fileno(), 4096, 30 << 20) == data[30 << 20:(30 << 20) + 4096]
        assert path.read_bytes() == data
        assert (big / "HomePool/Videos/log.bin").read_bytes() == data
    with reader(state_dir) as pool:
        assert [d.label for d, _ in pool.replicas("Videos/log.bin")] == ["big"]
        assert_clean(pool)


@contextmanager
def _live_file_on_a_filling_drive(state_dir: Path, loop_drives, copies: int = 1) -> Iterator[tuple]:
    """In process (the mount's operations without FUSE): a small drive and `copies` big ones
    made to look fuller (ballast, gone once the file is made), a file in Videos (`copies`
    copies) created with 1 MiB on the small drive. Yields (pool, ops, ctx, inode, handle,
    drives)."""
    from homepool.fuse.ops import PoolOperations
    from homepool.fuse.session import Ctx

    small, *big = loop_drives(32, *[128] * copies)
    with Pool.create(state_dir) as pool:
        for i, d in enumerate((small, *big)):
            pool.add_drive(d, label=f"d{i}")
        pool.set_copies("Videos", copies)
    ballasts = [d / "ballast" for d in big]
    for b in ballasts:
        with open(b, "wb") as f:
            st = os.statvfs(b.parent)
            f.write(b"\0" * (st.f_bavail * st.f_frsize - (16 << 20)))
    pool = Pool.open(state_dir)
    try:
        pool.go_live()
        ops = PoolOperations(pool)
        ctx = Ctx(0, 0, os.getpid())
        folder = pool.child(1, "Videos")
        assert folder is not None
        attr, first = ops.create(ctx, folder.id, b"log.bin", 0o644, os.O_RDWR)
        ops.write(first.fh, 0, memoryview(b"a" * (1 << 20)))
        assert (small / "HomePool/Videos/log.bin").exists()
        for b in ballasts:
            b.unlink()
        yield pool, ops, ctx, attr.ino, first, [small, *big]
    finally:
        pool.close()


@pytest.mark.parametrize("copies", [1, 2])
@pytest.mark.parametrize("through", ["another handle", "the same handle"])
def test_a_write_made_while_the_file_moves_waits_for_the_move(state_dir: Path, loop_drives,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              copies: int, through: str) -> None:
    """In process, to catch the moment: a write that comes while a full drive's copy is being
    moved to another drive (through another handle, or in parallel through the same one, as
    asynchronous direct I/O does) waits, then lands on every copy. Before, it went to the old
    copy after that part of it had been copied (lost), or, through the same handle, to the
    other copies only (the copies then differed under one hash) or to none (EIO)."""
    with _live_file_on_a_filling_drive(state_dir, loop_drives, copies) as (pool, ops, ctx, ino, first, drives):
        second = ops.open(ctx, ino, os.O_RDWR) if through == "another handle" else first
        written: list[threading.Thread] = []
        look_at_room = type(pool)._look_at_room

        def move_and_write_meanwhile(self: Pool, drives: list) -> list:
            if not written:  # the move begins
                # A write past its start (`will_change`, under the pool's lock) when the move began.
                t = threading.Thread(target=ops._files[second.fh].write, args=(b"meanwhile", 10))
                written.append(t)
                t.start()
                t.join(timeout=1)  # it waits for the move (without the gate it is done at once)
            return look_at_room(self, drives)

        monkeypatch.setattr(type(pool), "_look_at_room", move_and_write_meanwhile)
        ops.write(first.fh, 1 << 20, memoryview(b"b" * (40 << 20)))  # past what the small drive holds
        written[0].join(timeout=20)
        assert not written[0].is_alive()
        for fh in {first.fh, second.fh}:
            ops.flush(fh)
            ops.release(fh)
    assert not (drives[0] / "HomePool/Videos/log.bin").exists()
    contents = [p.read_bytes() for p in copies_on_disk(drives, "Videos/log.bin")]
    assert len(contents) == copies
    for content in contents:
        assert content[10:19] == b"meanwhile" and len(content) == 41 << 20
    with reader(state_dir) as pool:
        assert_clean(pool)


def test_a_handle_closed_while_the_file_moves_records_the_moved_copy(state_dir: Path, loop_drives,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: a handle released while another handle's write moves the file off a full
    drive (its last look at the copies and its close run outside the pool's lock) waits for
    the move, and records the copies where they are. Before, it recorded the moved copy's
    drive as stale: the catalog dropped that copy's row, and owed its removal."""
    with _live_file_on_a_filling_drive(state_dir, loop_drives) as (pool, ops, ctx, ino, first, drives):
        second = ops.open(ctx, ino, os.O_RDWR)
        ops.write(second.fh, 0, memoryview(b"second"))
        closing = ops._files.pop(second.fh)
        finished: dict[str, object] = {}
        look_at_room = type(pool)._look_at_room

        def move_and_close_meanwhile(self: Pool, drives: list) -> list:
            if not finished:  # the move begins
                # `ops.release` of the second handle, after the write that fills the drive began:
                # its part under the lock (between that write's start and its failure)...
                pool.releasing(closing, closing=True)
                # ...and the rest, outside the lock, now.
                t = threading.Thread(target=lambda: finished.setdefault("result", closing.finish()))
                finished["thread"] = t
                t.start()
                t.join(timeout=1)  # it waits for the move
            return look_at_room(self, drives)

        monkeypatch.setattr(type(pool), "_look_at_room", move_and_close_meanwhile)
        ops.write(first.fh, 1 << 20, memoryview(b"b" * (40 << 20)))  # past what the small drive holds
        thread = finished["thread"]
        assert isinstance(thread, threading.Thread)
        thread.join(timeout=20)
        pool.release_file(closing, finished["result"])  # type: ignore[arg-type]
        ops.flush(first.fh)
        ops.release(first.fh)
        assert [r.drive_id for r in pool.cat.replicas(ino)] == [pool.drives()[1].id]
        assert pool.cat.owed(pool.drives()[1].id) == []
    content = (drives[1] / "HomePool/Videos/log.bin").read_bytes()
    assert content[:6] == b"second" and len(content) == 41 << 20
    with reader(state_dir) as pool:
        assert_clean(pool)


def test_a_killed_mount_leaves_a_consistent_pool(state_dir: Path, dir_pool: Pool, tmp_path: Path,
                                                 dir_drives: list[Path]) -> None:
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, proc):
        (mnt / "Documents/done.txt").write_bytes(b"finished")
        (mnt / "Documents/gone.txt").write_bytes(b"deleted")
        os.unlink(mnt / "Documents/gone.txt")
        os.rename(mnt / "Documents/done.txt", mnt / "Documents/moved.txt")
        # Kept as a program keeps a rename: by syncing its folder (else the kill may undo the
        # last few milliseconds' renames and deletes, each whole; test_grouped_changes.py).
        folder = os.open(mnt / "Documents", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        f = open(mnt / "Documents/half.bin", "wb")  # noqa: SIM115 - left open on purpose
        f.write(os.urandom(1 << 20))
        f.flush()
        g = open(mnt / "Videos/half.mkv", "wb")  # noqa: SIM115 - one copy: written by the kernel itself
        g.write(os.urandom(1 << 20))
        g.flush()
        os.fchmod(f.fileno(), 0o604)  # recorded only at close: the repair takes it from the copy
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for h in (f, g):
            with pytest.raises(OSError):
                h.close()
    # Opening the pool for writing finishes what the mount was doing.
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/moved.txt") == b"finished"
        assert pool.lookup("Documents/done.txt") is None and pool.lookup("Documents/gone.txt") is None
        for gone in ("Documents/done.txt", "Documents/gone.txt"):
            assert copies_on_disk(dir_drives, gone) == []
        for half in ("Documents/half.bin", "Videos/half.mkv"):
            node = pool.stat(half)
            data = pool.read_bytes(half)
            assert node.size == len(data) == 1 << 20 and node.hash == blake3.blake3(data).hexdigest()
        assert stat.S_IMODE(pool.stat("Documents/half.bin").mode) == 0o604
        assert pool.cat.journal() == []
        assert_clean(pool)


def test_one_copy_files_are_read_and_written_by_the_kernel(state_dir: Path, dir_pool: Pool, tmp_path: Path,
                                                          dir_drives: list[Path]) -> None:
    """Passthrough: the kernel does a 1-copy file's reads and writes on its drive (they never
    reach the mount), and the mount still records what was written at each close, even a
    write through a dup()ed descriptor after another one's close."""
    dir_pool.close()
    data = os.urandom(4 << 20)
    # The capped test drives have less room than a writer normally needs to be passed through.
    with mount_pool(state_dir, tmp_path, env={"HOMEPOOL_PASSTHROUGH_ROOM": "0"}) as (mnt, proc):
        p = mnt / "Videos/clip.mkv"
        p.write_bytes(data)
        fd = os.open(p, os.O_RDWR)
        got: list[bytes] = []
        os.kill(proc.pid, signal.SIGSTOP)  # the mount answers nothing now...
        try:
            t = threading.Thread(target=lambda: got.append(os.pread(fd, len(data), 0)))
            t.start()
            t.join(timeout=20)
            assert not t.is_alive(), "a read of a 1-copy file waited for the mount"
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert got == [data]  # ...yet the open file's reads went on
        os.pwrite(fd, b"new", 0)
        os.pwrite(fd, b"tail", len(data))
        assert p.stat().st_size == len(data) + 4  # the mount looks at the copy while it is written
        # A setattr's answer has the size as written too (the kernel takes it): one that
        # changes nothing (tar's chown to the owner it has), and one that does.
        os.fchown(fd, os.getuid(), os.getgid())
        assert os.fstat(fd).st_size == len(data) + 4
        os.fchmod(fd, 0o640)
        assert os.fstat(fd).st_size == len(data) + 4
        fd2 = os.dup(fd)
        os.close(fd)  # recorded at this close...
        expected = b"new" + data[3:] + b"tail"
        with reader(state_dir) as pool:
            assert pool.stat("Videos/clip.mkv").hash == blake3.blake3(expected).hexdigest()
        os.pwrite(fd2, b"NEW", 0)  # ...and a write through the other descriptor after it
        os.close(fd2)
        expected = b"NEW" + expected[3:]
        assert p.read_bytes() == expected
    served = next(line for line in (tmp_path / "mnt.log").read_text().splitlines() if "requests served" in line)
    assert not re.search(r"\b(READ|WRITE) \d", served), served  # none of the data went through the mount
    (copy,) = copies_on_disk(dir_drives, "Videos/clip.mkv")
    assert copy.read_bytes() == expected
    with reader(state_dir) as pool:
        node = pool.stat("Videos/clip.mkv")
        assert node.size == len(expected) and node.hash == blake3.blake3(expected).hexdigest()
        assert pool.cat.journal() == []
        assert_clean(pool)


def test_a_write_no_copy_took_leaves_no_trace_in_the_hash(tmp_path: Path) -> None:
    """A big write to two copies is hashed while the copies are written; when neither copy
    takes it, the hash so far is dropped (the content is hashed again at close), or the next
    write would be recorded on top of data no copy has."""
    paths = [tmp_path / "a", tmp_path / "b"]
    fds = {i: os.open(p, os.O_RDWR | os.O_CREAT) for i, p in enumerate(paths)}
    refusing = {i: os.open(p, os.O_RDONLY) for i, p in enumerate(paths)}
    f = LiveFile(1, "x", dict(fds), 0, True)
    f.journal_id = 1  # written through the mount
    try:
        assert len(f.write(b"y" * (1 << 20), 0, refusing)) == 2  # EBADF on both
        assert f.write(b"z" * (1 << 20), 1 << 20) == []
        size, _, digest = f.finish() or (0, 0, "")
        content = paths[0].read_bytes()
        assert content == paths[1].read_bytes() == bytes(1 << 20) + b"z" * (1 << 20)
        assert (size, digest) == (len(content), blake3.blake3(content).hexdigest())
    finally:
        for fd in refusing.values():
            os.close(fd)


@pytest.mark.parametrize("folder", ["Documents", "Videos"])
def test_a_writer_alone_on_a_file_keeps_every_view_of_it_coherent(mnt: Path, state_dir: Path, dir_drives: list[Path],
                                                                 folder: str) -> None:
    """A handle open for writing with no other handle on the file skips the page cache (its
    writes go straight to the copies). A shared mapping of it, a reader opened meanwhile and
    a reader opened after it all see every write, whichever way it came, as on ext4; and the
    copies and the catalog agree at the end."""
    path = mnt / f"{folder}/db.bin"
    data = bytearray(os.urandom(3 << 20))
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        with mmap.mmap(fd, len(data)) as m:  # shared: SQLite maps its -shm file this way
            m[100:104] = b"MMAP"
            data[100:104] = b"MMAP"
            assert os.pread(fd, 4, 100) == b"MMAP"  # what the mapping wrote, read by the handle
            os.pwrite(fd, b"PWRITE", 200)
            data[200:206] = b"PWRITE"
            assert m[200:206] == b"PWRITE"  # what the handle wrote, seen in the mapping
            with open(path, "rb", buffering=0) as other:  # opened while the writer is open
                assert other.read(300)[100:] == bytes(data[100:300])
                os.pwrite(fd, b"AGAIN", 250)
                data[250:255] = b"AGAIN"
                other.seek(250)
                assert other.read(5) == b"AGAIN"
            m.flush()
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    copies = copies_on_disk(dir_drives, f"{folder}/db.bin")
    assert len(copies) == (2 if folder == "Documents" else 1) and all(c.read_bytes() == data for c in copies)
    with reader(state_dir) as pool:
        node = pool.stat(f"{folder}/db.bin")
        assert (node.size, node.hash) == (len(data), blake3.blake3(data).hexdigest())

"""Adding drives: what is accepted, and every refusal (one line, nothing changed)."""

from __future__ import annotations

import errno
import os
import shutil
import stat as stat_
import subprocess
from pathlib import Path

import blake3
import pytest

from homepool.check import check
from homepool.drives import read_identity
from homepool.errors import BadDrive
from homepool.pool import Pool

from .conftest import LoopFactory
from .helpers import assert_clean


def snapshot(pool: Pool) -> list[tuple[str, str]]:
    return [(d.uuid, d.path) for d in pool.cat.drives()]


def refused(pool: Pool, path: Path, match: str, **kw: object) -> None:
    before = snapshot(pool)
    with pytest.raises(BadDrive, match=match) as exc:
        pool.add_drive(path, **kw)  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)
    assert snapshot(pool) == before


def test_real_drives_of_different_sizes(loop_pool: tuple[Pool, list[Path]]) -> None:
    pool, mounts = loop_pool
    infos = pool.drive_infos()
    assert [i.fstype for i in infos] == ["ext4"] * 3
    sizes = [i.size for i in infos]
    assert sizes[0] < sizes[1] < sizes[2]
    for m in mounts:
        ident = read_identity(m)
        assert ident is not None and ident.pool_id == pool.config.pool_id
    assert_clean(pool)


def test_refuses_missing_paths_and_files(dir_pool: Pool, tmp_path: Path) -> None:
    refused(dir_pool, tmp_path / "nope", "no such directory")
    f = tmp_path / "file"
    f.write_text("x")
    refused(dir_pool, f, "not a directory")


def test_refuses_the_same_drive_twice(dir_pool: Pool, dir_drives: list[Path]) -> None:
    refused(dir_pool, dir_drives[0], "already in the pool", allow_shared_device=True)


def test_refuses_paths_inside_or_above_a_member(dir_pool: Pool, dir_drives: list[Path], tmp_path: Path) -> None:
    inner = dir_drives[0] / "sub"
    inner.mkdir()
    refused(dir_pool, inner, "inside or above", allow_shared_device=True)
    refused(dir_pool, tmp_path, "inside or above|state directory", allow_shared_device=True)


def test_refuses_a_second_directory_on_the_same_disk(dir_pool: Pool, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    refused(dir_pool, other, "same filesystem")


def test_refuses_the_state_directory(dir_pool: Pool, state_dir: Path) -> None:
    refused(dir_pool, state_dir, "state directory", allow_shared_device=True)


def test_refuses_a_read_only_drive(state_dir: Path, loop_drives: LoopFactory) -> None:
    (m,) = loop_drives(64)
    subprocess.run(["mount", "-o", "remount,ro", str(m)], check=True)
    with Pool.create(state_dir) as pool:
        refused(pool, m, "read-only")
    subprocess.run(["mount", "-o", "remount,rw", str(m)], check=True)


def test_refuses_a_drive_of_another_pool_unless_adopted(tmp_path: Path, loop_drives: LoopFactory) -> None:
    a, b = loop_drives(64, 64)
    with Pool.create(tmp_path / "other") as other:
        other.add_drive(a, label="theirs")
        other.write_bytes("Photos/cat.jpg", b"meow")
        other.write_bytes("Documents/shared.txt", b"theirs")
    with Pool.create(tmp_path / "mine") as mine:
        mine.add_drive(b, label="mine")
        mine.write_bytes("Documents/shared.txt", b"mine!")
        refused(mine, a, "another pool")
        mine.add_drive(a, adopt=True)
        assert mine.read_bytes("Photos/cat.jpg") == b"meow"
        assert mine.read_bytes("Documents/shared.txt") == b"mine!"
        assert mine.read_bytes("Documents/shared (conflict theirs).txt") == b"theirs"
        assert read_identity(a).pool_id == mine.config.pool_id  # type: ignore[union-attr]
        # Adopted files have one copy each; the check finds that and repair makes the second.
        assert {p.check for p in check(mine)} == {"copies_met"}
        check(mine, repair=True)
        assert_clean(mine)


def test_capacity_cap_is_respected_by_placement(state_dir: Path, loop_drives: LoopFactory) -> None:
    small, big = loop_drives(64, 128)
    with Pool.create(state_dir) as pool:
        pool.add_drive(small, label="small")
        pool.add_drive(big, label="big", max_size=4 << 20)
        for i in range(6):
            pool.write_bytes(f"Videos/{i}.bin", os.urandom(1 << 20))
        on_big = sum(1 for f in (big / "HomePool/Videos").iterdir())
        assert on_big <= 4
        info = {i.label: i for i in pool.drive_infos()}
        assert info["big"].size == 4 << 20
        assert_clean(pool)


def test_a_moved_drive_is_found_again(state_dir: Path, loop_drives: LoopFactory, tmp_path: Path) -> None:
    (m,) = loop_drives(64)
    with Pool.create(state_dir) as pool:
        pool.add_drive(m, label="roaming")
        pool.write_bytes("Videos/a.bin", b"a")
    new = tmp_path / "moved"
    new.mkdir()
    subprocess.run(["mount", "--move", str(m), str(new)], check=True)
    try:
        with Pool.open(state_dir) as pool:
            assert [d.row.state for d in pool.drives()] == ["missing"]
            pool.add_drive(new)
            assert pool.read_bytes("Videos/a.bin") == b"a"
            assert_clean(pool)
    finally:
        subprocess.run(["mount", "--move", str(new), str(m)], check=True)


def test_a_drive_added_back_at_a_new_path_takes_the_steps_it_missed_at_once(dir_pool: Pool, dir_drives: list[Path],
                                                                            tmp_path: Path) -> None:
    """A drive that was away while a file was renamed is owed the rename. Added back at a new
    path (while mounted, the pool then goes on in the same process), it gets it at once, before
    anything else looks at it, not at the next open of the pool (found by a review)."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    away = dir_pool.replicas("Documents/a.txt")[0][0]
    moved = tmp_path / "moved"
    os.rename(away.root, moved)  # unplugged, and plugged in somewhere else later
    dir_pool.rename("Documents/a.txt", "Documents/b.txt")
    assert [step["op"] for _, step in dir_pool.cat.owed(away.id)] == ["rename"]
    dir_pool.add_drive(moved)
    assert (moved / "HomePool/Documents/b.txt").read_bytes() == b"A"
    assert not (moved / "HomePool/Documents/a.txt").exists()
    assert dir_pool.cat.owed(away.id) == []


def test_a_drive_reaches_paths_past_path_max(dir_pool: Pool) -> None:
    """Drive I/O by pool path works at any depth: here 9,000 bytes, where the kernel refuses
    the whole path, so each call goes through descriptors of folders on the way (and leaves
    none open)."""
    d = dir_pool.drives()[0]
    deep = "Videos/" + "/".join(["n" * 200] * 45)
    open_before = len(os.listdir("/proc/self/fd"))
    d.makedirs(deep)
    fd = d.open(f"{deep}/f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"deep")
    os.close(fd)
    with pytest.raises(OSError) as e:
        os.lstat(d.full(f"{deep}/f"))
    assert e.value.errno == errno.ENAMETOOLONG  # the whole path, as the kernel sees it
    assert d.lstat(f"{deep}/f").st_size == 4 and d.lexists(f"{deep}/f") and d.is_dir(deep)
    assert d.hash(f"{deep}/f") == blake3.blake3(b"deep").hexdigest()
    d.rename(f"{deep}/f", f"{deep}/g")
    assert d.listdir(deep) == ["g"] and not d.lexists(f"{deep}/f")
    assert d.unlink(f"{deep}/g") and not d.unlink(f"{deep}/g")
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_a_drive_makes_missing_folders_as_os_makedirs_does(dir_pool: Pool) -> None:
    """`Drive.makedirs`: the folders on the way get the default mode and the last one its own;
    a file in the way is an error; the drive's HomePool folder, if someone removed it, is made
    again, but never in the mount point of a drive that is not there."""
    d = dir_pool.drives()[0]
    umask = os.umask(0o022)
    try:
        d.makedirs("Videos/a/b/c", 0o1700)
        assert [stat_.S_IMODE(d.lstat(p).st_mode) for p in ("Videos/a", "Videos/a/b", "Videos/a/b/c")] \
            == [0o755, 0o755, 0o1700]
        d.makedirs("Videos/a/b/c", 0o700)  # there already: nothing to do
        fd = d.open("Videos/a/file", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        with pytest.raises(FileExistsError):
            d.makedirs("Videos/a/file")
        with pytest.raises(NotADirectoryError):
            d.makedirs("Videos/a/file/below")
        shutil.rmtree(d.tree)
        d.makedirs("Videos/x")
        assert d.is_dir("Videos/x")
        shutil.rmtree(d.tree)
        os.rename(d.meta, d.root / "unplugged")  # as an empty mount point would look
        try:
            with pytest.raises(FileNotFoundError):
                d.makedirs("Videos/x")
            assert not d.tree.exists()
        finally:
            os.rename(d.root / "unplugged", d.meta)
    finally:
        os.umask(umask)

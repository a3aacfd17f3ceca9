"""The pool API on directory drives (no root needed)."""

from __future__ import annotations

import os
import random
import sqlite3
import stat as stat_
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from homepool import catalog
from homepool.catalog import Node
from homepool.errors import (
    AlreadyExists,
    BadCopies,
    DirectoryNotEmpty,
    FolderExists,
    HomepoolError,
    NewerPool,
    NoPool,
    NotAPool,
    NotFound,
    NotInFolder,
    PoolBusy,
    PoolExists,
)
from homepool.pool import DEFAULT_FOLDERS, Pool

from .helpers import assert_clean, copies_on_disk


def test_create_makes_the_prescriptive_folders(dir_pool: Pool) -> None:
    infos = {f.name: f.copies for f in dir_pool.folder_infos()}
    assert infos == DEFAULT_FOLDERS
    assert infos["Photos"] == 2 and infos["Videos"] == 1


def test_every_drive_shows_the_folders_and_carries_its_identity(dir_pool: Pool, dir_drives: list[Path]) -> None:
    for d in dir_drives:
        assert (d / ".homepool" / "drive.toml").is_file()
        assert sorted(os.listdir(d / "HomePool")) == sorted(DEFAULT_FOLDERS)
    assert_clean(dir_pool)


def test_create_twice_is_refused(dir_pool: Pool, state_dir: Path) -> None:
    with pytest.raises(PoolExists):
        Pool.create(state_dir)


def test_open_missing_and_foreign_state_dirs(tmp_path: Path) -> None:
    with pytest.raises(NoPool):
        Pool.open(tmp_path / "nothing")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "x").write_text("not a pool")
    with pytest.raises(NotAPool):
        Pool.open(junk)


def test_open_refuses_a_newer_catalog(dir_pool: Pool, state_dir: Path) -> None:
    dir_pool.close()
    db = sqlite3.connect(state_dir / "catalog.db")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_rev'", (str(catalog.CURRENT_REV + 1),))
    db.commit()
    db.close()
    with pytest.raises(NewerPool, match="newer homepool"):
        Pool.open(state_dir)


def test_a_second_writer_is_refused_while_one_holds_the_pool(dir_pool: Pool, state_dir: Path) -> None:
    with pytest.raises(PoolBusy, match=str(os.getpid())):
        Pool.open(state_dir, write=True)
    reader = Pool.open(state_dir, write=False)  # readers do not need the lock
    reader.close()


def test_two_copy_folder_writes_identical_plain_files_on_two_drives(dir_pool: Pool, dir_drives: list[Path]) -> None:
    data = os.urandom(300_000)
    dir_pool.makedirs("Photos/2010")
    dir_pool.write_bytes("Photos/2010/beach.jpg", data, mode=0o640, mtime_ns=1_300_000_000_123_456_789)
    on_disk = copies_on_disk(dir_drives, "Photos/2010/beach.jpg")
    assert len(on_disk) == 2
    for p in on_disk:
        assert p.read_bytes() == data
        st = p.stat()
        assert st.st_mtime_ns == 1_300_000_000_123_456_789
        assert st.st_mode & 0o777 == 0o640
    assert dir_pool.read_bytes("Photos/2010/beach.jpg") == data
    assert_clean(dir_pool)


def test_one_copy_folder_writes_one_copy(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Videos/film.mkv", b"x" * 1000)
    assert len(copies_on_disk(dir_drives, "Videos/film.mkv")) == 1
    assert_clean(dir_pool)


def test_large_file_streams_through_the_threaded_path(dir_pool: Pool, dir_drives: list[Path]) -> None:
    data = os.urandom(20 << 20)  # above the inline threshold: writer threads per drive
    dir_pool.write_bytes("Music/big.flac", data)
    assert [p.read_bytes() == data for p in copies_on_disk(dir_drives, "Music/big.flac")] == [True, True]
    assert_clean(dir_pool)


def test_overwrite_replaces_every_copy(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"old")
    dir_pool.write_bytes("Documents/a.txt", b"new content")
    copies = copies_on_disk(dir_drives, "Documents/a.txt")
    assert [p.read_bytes() for p in copies] == [b"new content", b"new content"]
    assert dir_pool.stat("Documents/a.txt").size == 11
    assert_clean(dir_pool)


def test_no_temp_files_are_left_behind(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"abc")
    for d in dir_drives:
        assert os.listdir(d / ".homepool" / "tmp") == []


def test_files_must_live_in_a_folder(dir_pool: Pool) -> None:
    with pytest.raises(NotInFolder):
        dir_pool.write_bytes("loose.txt", b"x")


def test_writing_into_a_missing_directory_fails(dir_pool: Pool) -> None:
    with pytest.raises(NotFound):
        dir_pool.write_bytes("Photos/nope/a.jpg", b"x")


def test_listdir_and_stat(dir_pool: Pool) -> None:
    dir_pool.makedirs("Photos/2011")
    dir_pool.write_bytes("Photos/2011/a.jpg", b"1")
    dir_pool.write_bytes("Photos/2011/b.jpg", b"22")
    assert [n.name for n in dir_pool.listdir("Photos/2011")] == ["a.jpg", "b.jpg"]
    assert dir_pool.stat("/Photos//2011/b.jpg").size == 2
    assert dir_pool.stat("photos/2011/b.jpg").size == 2  # folders match as Windows would
    with pytest.raises(NotFound):
        dir_pool.stat("Photos/2011/c.jpg")


def test_folder_names_clash_case_insensitively(dir_pool: Pool) -> None:
    with pytest.raises(FolderExists, match="Photos"):
        dir_pool.add_folder("PHOTOS")


def test_copies_must_be_sensible(dir_pool: Pool) -> None:
    for bad in (0, -1, 99):
        with pytest.raises(BadCopies):
            dir_pool.add_folder("Backups", bad)
    assert "Backups" not in {f.name for f in dir_pool.folder_infos()}


def test_more_copies_than_drives_is_a_recorded_shortfall(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.add_folder("Precious", 4)
    dir_pool.write_bytes("Precious/will.pdf", b"last will")
    assert len(copies_on_disk(dir_drives, "Precious/will.pdf")) == 3
    info = {f.name: f for f in dir_pool.folder_infos()}["Precious"]
    assert info.short == 1


def test_set_copies_adds_and_removes_copies(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Videos/a.mkv", b"a" * 5000)
    assert len(copies_on_disk(dir_drives, "Videos/a.mkv")) == 1
    assert dir_pool.set_copies("Videos", 3) == []
    assert len(copies_on_disk(dir_drives, "Videos/a.mkv")) == 3
    dir_pool.set_copies("Videos", 1)
    assert len(copies_on_disk(dir_drives, "Videos/a.mkv")) == 1
    assert dir_pool.read_bytes("Videos/a.mkv") == b"a" * 5000
    assert_clean(dir_pool)


def test_a_file_changed_while_its_new_copy_is_made_keeps_its_new_content(dir_pool: Pool,
                                                                         dir_drives: list[Path]) -> None:
    """The mount copies a new copy's data without its lock (`unlocked_io`), so other requests
    go on meanwhile; one that changes the file then must not see the old data switched in."""
    dir_pool.write_bytes("Videos/a.mkv", b"old" * 5000)

    @contextmanager
    def meanwhile() -> Iterator[None]:
        yield
        dir_pool.unlocked_io = nullcontext  # once
        dir_pool.write_bytes("Videos/a.mkv", b"new" * 4000)  # another request, while unlocked

    dir_pool.unlocked_io = meanwhile
    dir_pool.set_copies("Videos", 2)
    # The old data copied meanwhile was thrown away (no temp file is left: assert_clean); the
    # new version was written to the two copies its folder now wants.
    assert [c.read_bytes() for c in copies_on_disk(dir_drives, "Videos/a.mkv")] == [b"new" * 4000] * 2
    assert dir_pool.read_bytes("Videos/a.mkv") == b"new" * 4000
    assert_clean(dir_pool)


def test_rename_within_a_folder_moves_every_copy(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.rename("Documents/a.txt", "Documents/b.txt")
    assert len(copies_on_disk(dir_drives, "Documents/b.txt")) == 2
    assert copies_on_disk(dir_drives, "Documents/a.txt") == []
    assert dir_pool.read_bytes("Documents/b.txt") == b"A"
    assert_clean(dir_pool)


def test_rename_replaces_an_existing_file(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.write_bytes("Documents/b.txt", b"B")
    dir_pool.rename("Documents/a.txt", "Documents/b.txt")
    assert dir_pool.read_bytes("Documents/b.txt") == b"A"
    assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/b.txt")] == [b"A", b"A"]
    assert_clean(dir_pool)


def test_rename_across_folders_follows_the_new_folders_copies(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Videos/clip.mp4", b"v" * 100)
    dir_pool.rename("Videos/clip.mp4", "Photos/clip.mp4")
    assert len(copies_on_disk(dir_drives, "Photos/clip.mp4")) == 2
    assert_clean(dir_pool)


def test_rename_a_directory_with_its_files(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.makedirs("Photos/2010/summer")
    dir_pool.write_bytes("Photos/2010/summer/a.jpg", b"a")
    dir_pool.rename("Photos/2010", "Photos/Year 2010")
    assert dir_pool.read_bytes("Photos/Year 2010/summer/a.jpg") == b"a"
    assert len(copies_on_disk(dir_drives, "Photos/Year 2010/summer/a.jpg")) == 2
    assert not any((d / "HomePool/Photos/2010").exists() for d in dir_drives)
    assert_clean(dir_pool)


def test_rename_a_folder_into_itself_is_refused(dir_pool: Pool) -> None:
    dir_pool.makedirs("Photos/a")
    with pytest.raises(AlreadyExists):
        dir_pool.rename("Photos/a", "Photos/a/b")


def test_delete_removes_every_copy(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.delete("Documents/a.txt")
    assert copies_on_disk(dir_drives, "Documents/a.txt") == []
    with pytest.raises(NotFound):
        dir_pool.stat("Documents/a.txt")
    assert_clean(dir_pool)


def test_delete_a_non_empty_directory_is_refused(dir_pool: Pool) -> None:
    dir_pool.makedirs("Documents/sub")
    dir_pool.write_bytes("Documents/sub/a.txt", b"A")
    with pytest.raises(DirectoryNotEmpty):
        dir_pool.delete("Documents/sub")
    dir_pool.delete("Documents/sub/a.txt")
    dir_pool.delete("Documents/sub")
    assert_clean(dir_pool)


@pytest.mark.expect_errors
def test_read_falls_over_to_the_other_copy(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"precious")
    first, second = copies_on_disk(dir_drives, "Documents/a.txt")
    first.chmod(0)  # unreadable for a non-root reader; for root, remove it
    if os.geteuid() == 0:
        first.unlink()
    assert dir_pool.read_bytes("Documents/a.txt") == b"precious"
    bad = [state for _, state in dir_pool.replicas("Documents/a.txt")]
    assert sorted(bad) == ["bad", "ok"]


def test_files_open_below_a_moved_directory_follow_it(dir_pool: Pool) -> None:
    """The mount finds an open file's copies, journal row and owed steps by its path: a move of
    a directory above it must update it (found by a review: only the moved node's own handles
    were)."""
    dir_pool.makedirs("Documents/d/sub")
    dir_pool.go_live()
    sub = dir_pool.stat("Documents/d/sub").id
    _, f = dir_pool.create_file(sub, "open.txt", 0o644, 0, 0)
    docs = dir_pool.stat("Documents").id
    dir_pool.move(docs, "d", docs, "e", noreplace=False)
    assert f.path == "Documents/e/sub/open.txt"
    dir_pool.releasing(f, closing=True)
    dir_pool.release_file(f, f.finish())
    assert dir_pool.read_bytes("Documents/e/sub/open.txt") == b""
    assert_clean(dir_pool)


def consistent(pool: Pool) -> None:
    """The nodes and paths the catalog keeps in memory are what it holds."""
    cat = pool.cat
    for i, n in list(cat._nodes.items()):
        row = cat.db.execute(f"SELECT {cat._NODE_COLS} FROM nodes WHERE id = ?", (i,)).fetchone()
        assert row is not None and Node(*row) == n, (i, n, row)
    for i, p in list(cat._paths.items()):
        row = cat.db.execute("SELECT parent_id, name FROM nodes WHERE id = ?", (i,)).fetchone()
        assert row is not None, (i, p)
        fresh = [row[1]]
        while row[0] != catalog.ROOT_ID:
            row = cat.db.execute("SELECT parent_id, name FROM nodes WHERE id = ?", (row[0],)).fetchone()
            fresh.insert(0, row[1])
        assert "/".join(fresh) == p, (i, p)


def random_change(pool: Pool, rnd: random.Random, dirs: list[int], names: list[str]) -> None:
    """One random change through the mount's API; errors a local filesystem gives are fine."""
    p, name = rnd.choice(dirs), rnd.choice(names)
    op = rnd.choice(["create", "link", "unlink", "move", "move", "move", "mkdir", "rmdir", "symlink", "attr"])
    kids = [c.name for c in pool.cat.children(p)]
    if op in ("unlink", "rmdir", "move", "attr") and kids:
        name = rnd.choice(kids)
    try:
        if op == "create":
            _, f = pool.create_file(p, name, 0o644, 0, 0)
            f.write(b"x" * rnd.randint(0, 5), 0)
            pool.releasing(f, closing=True)
            pool.release_file(f, f.finish())
        elif op == "symlink":
            pool.make_node(p, name, stat_.S_IFLNK | 0o777, 0, 0, target="t")
        elif op == "link" and (row := pool.cat.child(rnd.choice(dirs), rnd.choice(names))) is not None:
            pool.make_link(pool.cat.resolve(row).id, p, name)
        elif op in ("unlink", "rmdir"):
            pool.remove(p, name, rmdir=op == "rmdir")
        elif op == "mkdir":
            dirs.append(pool.make_dir(p, name, 0o755, 0, 0).id)
        elif op == "move":
            pool.move(p, name, rnd.choice(dirs), rnd.choice(names), noreplace=False)
        elif op == "attr" and (row := pool.cat.child(p, name)) is not None:
            node = pool.cat.resolve(row)
            pool.set_attrs(node.id, mode=0o600, mtime_ns=5, size=3 if node.is_file and rnd.random() < .5 else None)
    except (OSError, HomepoolError):
        pass


@pytest.mark.parametrize("seed", range(4))
def test_what_the_mount_keeps_in_memory_matches_the_catalog(dir_pool: Pool, seed: int) -> None:
    """Random changes through the live API (files, hard links, moves across folders, folders,
    symlinks, attributes): after each, every node and path the mount keeps in memory is what
    the catalog holds; at the end every link count and reference is right."""
    rnd = random.Random(seed)
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.go_live()
    dirs = [dir_pool.stat("Documents").id, dir_pool.stat("Videos").id, catalog.ROOT_ID]
    names = [f"n{i}" for i in range(20)]
    for _ in range(250):
        random_change(dir_pool, rnd, dirs, names)
        dirs[:] = [d for d in dirs if (n := dir_pool.cat.node_or_none(d)) is not None and n.is_dir]
        for i in range(1, 80):  # read everything back into memory
            if dir_pool.cat.node_or_none(i) is not None:
                dir_pool.cat.path_of(i)
        consistent(dir_pool)
    dir_pool.copy_moved_files()
    dir_pool.catch_up()
    assert dir_pool.cat.wrong_link_counts() == []
    assert dir_pool.cat.db.execute("PRAGMA foreign_key_check").fetchall() == []
    assert_clean(dir_pool)


def test_files_moved_into_another_folder_get_its_copies_after_the_rename(dir_pool: Pool,
                                                                        dir_drives: list[Path]) -> None:
    """A file or a whole directory moved by the mount into a folder with more copies: the
    rename returns at once, and the mount's own thread makes the copies (a big file's copy
    would hold the kernel's rename locks otherwise)."""
    dir_pool.write_bytes("Videos/one.mkv", b"1")
    dir_pool.makedirs("Videos/dir")
    dir_pool.write_bytes("Videos/dir/two.mkv", b"2")  # Videos: 1 copy, Documents: 2
    dir_pool.go_live()
    videos, documents = dir_pool.stat("Videos").id, dir_pool.stat("Documents").id
    dir_pool.move(videos, "one.mkv", documents, "one.mkv", noreplace=False)
    dir_pool.move(videos, "dir", documents, "dir", noreplace=False)
    moved = ["Documents/one.mkv", "Documents/dir/two.mkv"]
    assert [len(copies_on_disk(dir_drives, p)) for p in moved] == [1, 1]
    assert all(dir_pool.copies_pending(dir_pool.stat(p).id) for p in moved)  # `check` leaves them be
    dir_pool.copy_moved_files()  # what the mount's thread does every second
    assert [len(copies_on_disk(dir_drives, p)) for p in moved] == [2, 2]
    assert_clean(dir_pool)

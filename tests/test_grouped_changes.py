"""Renames and deletes of files through the mount, committed a group at a time
(`Pool.group_steps`): seen at once, on the drives after their group's commit, and a crash
keeps each group whole or not at all."""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from homepool import check as check_mod
from homepool import mount as mount_mod
from homepool.catalog import ROOT_ID, Catalog, Node
from homepool.config import CATALOG_FILE
from homepool.drives import Drive, fsync_dir
from homepool.errors import AlreadyExists
from homepool.fuse.ops import PoolOperations
from homepool.fuse.session import Ctx
from homepool.pool import LiveFile, Pool, newfiles
from homepool.pool import glance as glance_mod
from homepool.pool.live import Looked

from .helpers import assert_clean, copies_on_disk, mount_dies, reader
from .mounting import mount_pool, wait_for
from .test_fuse_ops import _Holder, _live_ops, _Stuck
from .test_hard_links import unplug

MiB = 1 << 20
BEFORE = {"a.txt": b"A" * 10, "b.txt": b"B" * 20, "c.txt": b"C" * 30, "d.txt": b"D" * 40}
# a.txt renamed, b.txt deleted, c.txt renamed over d.txt
AFTER = {"a2.txt": BEFORE["a.txt"], "d.txt": BEFORE["c.txt"]}


def _pool(state_dir: Path, drives: list[Path]) -> Pool:
    """A pool on directory drives with BEFORE in Documents (2 copies), serving a mount."""
    pool = Pool.create(state_dir)
    for p in drives:
        pool.add_drive(p, label=p.name, max_size=64 * MiB, allow_shared_device=True)
    for name, data in BEFORE.items():
        pool.write_bytes(f"Documents/{name}", data)
    pool.go_live()
    pool.group_steps()
    return pool

def _killed(pool: Pool) -> None:
    """The process dies: its connection goes with what it did not commit, and its lock."""
    pool.cat.db.close()
    assert pool.lock is not None
    pool.lock.release()


def _change(pool: Pool) -> None:
    docs = pool.cat.child(ROOT_ID, "Documents")
    assert docs is not None
    pool.move(docs.id, "a.txt", docs.id, "a2.txt", noreplace=False)
    pool.remove(docs.id, "b.txt", rmdir=False)
    pool.move(docs.id, "c.txt", docs.id, "d.txt", noreplace=False)


def _committed_names(state_dir: Path) -> set[str]:
    """Documents' entries as another program reading the catalog sees them."""
    db = sqlite3.connect(f"{(state_dir / CATALOG_FILE).as_uri()}?mode=ro", uri=True)
    try:
        return {n for (n,) in db.execute("SELECT name FROM nodes WHERE parent_id = "
                                         "(SELECT id FROM nodes WHERE parent_id = ? AND name = 'Documents')",
                                         (ROOT_ID,))}
    finally:
        db.close()


def _on_drives(drives: list[Path]) -> dict[str, list[bytes]]:
    return {name: [p.read_bytes() for p in copies_on_disk(drives, f"Documents/{name}")]
            for name in sorted({*BEFORE, *AFTER})}


def _as_files(files: dict[str, bytes | None]) -> dict[str, list[bytes]]:
    """Each file on two drives (None: on none), nothing else."""
    return {name: [d] * 2 if (d := files.get(name)) is not None else [] for name in sorted({*BEFORE, *AFTER})}


def test_renames_and_deletes_reach_the_drives_with_their_groups_commit(state_dir: Path,
                                                                       dir_drives: list[Path]) -> None:
    pool = _pool(state_dir, dir_drives)
    try:
        _change(pool)
        # The pool shows them at once...
        assert {e.name: e.size for e in pool.listdir("Documents")} == {n: len(d) for n, d in AFTER.items()}
        # ...the catalog on disk and the drives once the group is committed.
        assert _committed_names(state_dir) == set(BEFORE)
        assert _on_drives(dir_drives) == _as_files(BEFORE)
        pool.settle_steps()
        assert _committed_names(state_dir) == set(AFTER)
        assert _on_drives(dir_drives) == _as_files(AFTER)
        pool.catch_up()  # (as the mount does every second: the finished steps' journal rows go)
        assert_clean(pool)
    finally:
        pool.close()


def test_a_change_on_the_drives_runs_the_steps_waiting_first(state_dir: Path, dir_drives: list[Path]) -> None:
    """A new file where one was just deleted or renamed away: the drives get the steps in order."""
    pool = _pool(state_dir, dir_drives)
    try:
        _change(pool)
        pool.write_bytes("Documents/b.txt", b"new b")  # (an import: it looks at the drives)
        assert not pool.cat.group_open
        assert _on_drives(dir_drives) == _as_files({**AFTER, "b.txt": b"new b"})
        pool.catch_up()
        assert_clean(pool)
    finally:
        pool.close()


@pytest.mark.parametrize("committed", [False, True], ids=["before-the-commit", "after-the-commit"])
def test_a_crash_keeps_a_group_whole_or_not_at_all(state_dir: Path, dir_drives: list[Path], committed: bool) -> None:
    pool = _pool(state_dir, dir_drives)
    _change(pool)
    if committed:
        pool.cat.commit_group()  # the crash comes between the commit and the drive steps
    _killed(pool)
    with Pool.open(state_dir) as pool:  # finishes what the journal says was under way
        files = AFTER if committed else BEFORE
        assert {e.name: pool.read_bytes(f"Documents/{e.name}") for e in pool.listdir("Documents")} == files
        assert _on_drives(dir_drives) == _as_files(files)
        assert pool.cat.journal() == []
        assert_clean(pool)


def test_through_the_mount_steps_on_one_name_keep_their_order(state_dir: Path, dir_drives: list[Path],
                                                               tmp_path: Path) -> None:
    _pool(state_dir, dir_drives).close()
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        docs = mnt / "Documents"
        os.unlink(docs / "b.txt")
        os.rename(docs / "a.txt", docs / "b.txt")  # where a delete waits
        os.rename(docs / "b.txt", docs / "e.txt")  # and on from there
        os.rename(docs / "c.txt", docs / "d.txt")  # over another file
        (docs / "a.txt").write_bytes(b"new a")  # where a rename left
        os.rename(docs / "e.txt", docs / "a.txt")  # over the new file
        fsync_dir(docs)  # an fsync of the folder waits for the drive steps
        assert _on_drives(dir_drives) == _as_files({"a.txt": BEFORE["a.txt"], "d.txt": BEFORE["c.txt"]})
        assert sorted(os.listdir(docs)) == ["a.txt", "d.txt"]
    with reader(state_dir) as pool:
        assert_clean(pool)


def _moved_and_killed(dir_pool: Pool, src: str = "Videos", dst: str = "Documents") -> int:
    """`src`/a.bin moved into `dst` (Documents: 2 copies, Videos: 1) by the mount, which dies
    before it gives the file its new folder's copies (`copy_moved_files`, a second later);
    the file's id."""
    dir_pool.write_bytes(f"{src}/a.bin", b"data")
    dir_pool.go_live()
    dir_pool.move(dir_pool.stat(src).id, "a.bin", dir_pool.stat(dst).id, "a.bin", noreplace=False)
    node_id = dir_pool.stat(f"{dst}/a.bin").id
    dir_pool._reconcile_soon.clear()  # the mount dies now
    mount_dies(dir_pool)
    return node_id


@pytest.mark.parametrize(("src", "dst", "copies"), [("Videos", "Documents", 2), ("Documents", "Videos", 1)],
                         ids=["a-copy-more", "a-copy-less"])
def test_copies_a_killed_mount_still_owed_are_made_at_the_next_mount(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], tmp_path: Path, src: str, dst: str,
        copies: int) -> None:
    """The next mount gives a file moved into another folder the copies a killed one owed it
    (as every file not at its folder's copies whose copies are all on drives that are there).
    Found by a kill -9 stress: they waited for `check --repair`."""
    _moved_and_killed(dir_pool, src, dst)
    assert len(copies_on_disk(dir_drives, f"{dst}/a.bin")) == 3 - copies
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        wait_for(lambda: len(copies_on_disk(dir_drives, f"{dst}/a.bin")) == copies, what="the copies owed")
        assert (mnt / f"{dst}/a.bin").read_bytes() == b"data"
    with reader(state_dir) as pool:
        assert_clean(pool)


def test_a_copy_the_mount_drops_goes_at_the_next_opening_after_a_crash(state_dir: Path, dir_drives: list[Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder's copies lowered while mounted: an extra copy is recorded gone first, then
    removed from its drive. Killed in between, the next opening removes it. Found by a crash
    stress: the replay took the file still at that path for something newer and left the
    copy on the drive, unknown to the catalog."""
    pool = _pool(state_dir, dir_drives)
    pool.change_copies("Documents", 1)

    def killed(*a: object) -> None:
        raise KeyboardInterrupt  # stands in for kill -9 here
    monkeypatch.setattr(pool, "_take_steps", killed)
    with pytest.raises(KeyboardInterrupt):
        pool.reconcile_unless_open(pool.stat("Documents/a.txt").id)
    _killed(pool)
    assert len(copies_on_disk(dir_drives, "Documents/a.txt")) == 2
    with Pool.open(state_dir) as pool:
        assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/a.txt")] == [BEFORE["a.txt"]]
        assert pool.cat.journal() == []
        assert {p.path for p in check_mod.check(pool)} == {"Documents/b.txt", "Documents/c.txt", "Documents/d.txt"}
        check_mod.check(pool, repair=True)  # (the change of copies cut short: a mount finishes it by itself)
        assert_clean(pool)


def test_a_file_short_of_copies_with_one_on_a_drive_away_waits_for_it(state_dir: Path, dir_pool: Pool,
                                                                      dir_drives: list[Path]) -> None:
    """Its copies are not made again elsewhere by a mount (the drive may be back tomorrow):
    `check --repair` does that when asked."""
    node_id = _moved_and_killed(dir_pool)
    plug_back = unplug(copies_on_disk(dir_drives, "Documents/a.bin")[0].parents[2])
    try:
        with Pool.open(state_dir) as pool:
            pool.go_live()
            assert pool.queue_for_their_copies(pool.not_at_their_copies()) == []
            pool.live = False
    finally:
        plug_back()
    with Pool.open(state_dir) as pool:
        pool.go_live()
        assert pool.queue_for_their_copies(pool.not_at_their_copies()) == [node_id]
        pool.live = False


def test_a_killed_mount_keeps_the_renames_and_deletes_in_order(state_dir: Path, dir_drives: list[Path],
                                                               tmp_path: Path) -> None:
    """Killed with a group open (it may be committed, whole or in part, by the every-second
    round): what the pool has after is the renames and deletes up to some point, each whole,
    on the drives as in the catalog, nothing lost that was not deleted, and every new file
    written before the kill, whole."""
    pool = _pool(state_dir, dir_drives)
    for i in range(20):
        pool.write_bytes(f"Documents/f{i:02d}", b"%d" % i)
    pool.close()
    # (each rename, then each delete: their order is the order the pool must keep)
    changes = [("rename", i) for i in range(10)] + [("delete", i) for i in range(10, 20)]
    with mount_pool(state_dir, tmp_path, env={"HOMEPOOL_SETTLE_AFTER": "60"}) as (mnt, proc):
        for what, i in changes:
            if what == "rename":
                os.rename(mnt / f"Documents/f{i:02d}", mnt / f"Documents/g{i:02d}")
            else:
                os.unlink(mnt / f"Documents/f{i:02d}")
        for i in range(10):
            (mnt / f"Documents/h{i:02d}").write_bytes(b"new %d" % i)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Pool.open(state_dir) as pool:
        for i in range(10):
            assert pool.read_bytes(f"Documents/h{i:02d}") == b"new %d" % i
            assert [p.read_bytes() for p in copies_on_disk(dir_drives, f"Documents/h{i:02d}")] == [b"new %d" % i] * 2
        names = {e.name for e in pool.listdir("Documents")}
        done = [f"f{i:02d}" not in names for _, i in changes]
        kept = done.index(False) if False in done else len(done)
        assert done == [True] * kept + [False] * (len(done) - kept), names  # a prefix of them, in order
        for what, i in changes:
            name = f"g{i:02d}" if what == "rename" and f"f{i:02d}" not in names else f"f{i:02d}"
            if what == "delete" and f"f{i:02d}" not in names:
                assert copies_on_disk(dir_drives, f"Documents/{name}") == []
                continue
            assert pool.read_bytes(f"Documents/{name}") == b"%d" % i
            assert [p.read_bytes() for p in copies_on_disk(dir_drives, f"Documents/{name}")] == [b"%d" % i] * 2
        assert pool.cat.journal() == []
        assert_clean(pool)


class FailingCommit:
    """The catalog's connection, with its next COMMIT failing (a full state drive, say)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.armed = False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


@contextmanager
def _failing_pool(state_dir: Path, drives: list[Path]) -> Iterator[tuple[Pool, FailingCommit]]:
    """`_pool`, its connection wrapped in a `FailingCommit` (armed by the test), closed after."""
    pool = _pool(state_dir, drives)
    fail = FailingCommit(pool.cat.db)
    pool.cat.db = fail  # type: ignore[assignment]
    try:
        yield pool, fail
    finally:
        pool.cat.db = fail._db  # type: ignore[assignment]
        pool.close()


def _flushed(pool: Pool, f: LiveFile) -> None:
    """A close(2) of `f` (FLUSH: the file recorded, in the open group); the handle stays open."""
    pool.releasing(f)
    pool.record_file(f, f.settle())

def _closed(pool: Pool, *handles: LiveFile) -> None:
    """close(2) and RELEASE of each handle."""
    for f in handles:
        pool.releasing(f, closing=True)
        pool.release_file(f, f.finish())

def _new_file(pool: Pool, name: str, data: bytes, uid: int = os.getuid(), gid: int = os.getgid()) -> Node:
    """Documents/NAME made, written and closed in the open group."""
    node, f = pool.create_file(_docs(pool), name, 0o640, uid, gid)
    f.write(data, 0)
    _flushed(pool, f)
    _closed(pool, f)
    return node


def _written_and_flushed(pool: Pool, folder: str = "Documents") -> tuple[Node, LiveFile]:
    """A new file with b"hello" in it, open, after its first close(2) (FLUSH)."""
    parent = pool.cat.child(ROOT_ID, folder)
    assert parent is not None
    node, f = pool.create_file(parent.id, "new.bin", 0o644, os.getuid(), os.getgid())
    if folder == "Videos":
        pool.pass_through(f, node)
        os.pwrite(f.read_fd, b"hello", 0)  # (the kernel writes a passed-through file)
    else:
        f.write(b"hello", 0)
    _flushed(pool, f)
    return node, f


def _commit_fails(pool: Pool, fail: FailingCommit) -> None:
    fail.armed = True
    with pytest.raises(sqlite3.OperationalError):
        pool.settle_steps()


def _docs(pool: Pool) -> int:
    docs = pool.cat.child(ROOT_ID, "Documents")
    assert docs is not None
    return docs.id


@pytest.mark.expect_errors
def test_a_failed_commit_undoes_its_group_and_runs_none_of_its_steps(state_dir: Path,
                                                                               dir_drives: list[Path]) -> None:
    """A transaction of another change settles the group first; if its COMMIT fails (a full
    state drive: `FailingCommit`), the group is undone and none of its drive steps runs."""
    with _failing_pool(state_dir, dir_drives) as (pool, fail):
        docs = _docs(pool)
        pool.remove(docs, "b.txt", rmdir=False)  # grouped: queued
        fail.armed = True
        with pytest.raises(sqlite3.OperationalError):
            pool.make_dir(docs, "sub", 0o755, 0, 0)  # its transaction commits the group first: fails
        # The catalog has b.txt again (the group was undone)...
        assert pool.lookup("Documents/b.txt") is not None
        pool.settle_steps()  # (the settle thread, 5 ms later)
        # ...and so is the drive step of its delete.
        assert len(copies_on_disk(dir_drives, "Documents/b.txt")) == 2, "b.txt's copies were deleted"


@pytest.mark.expect_errors
def test_a_failed_commit_keeps_the_steps_of_a_group_committed_before(state_dir: Path,
                                                                          dir_drives: list[Path]) -> None:
    """Group 1 committed (by an open of a file, say) with its steps still waiting; group 2's
    COMMIT fails: group 1's steps still run, group 2's do not."""
    with _failing_pool(state_dir, dir_drives) as (pool, fail):
        docs = _docs(pool)
        pool.move(docs, "a.txt", docs, "a2.txt", noreplace=False)  # group 1
        pool.cat.commit_group()  # (as an open does: the steps wait)
        pool.remove(docs, "c.txt", rmdir=False)  # group 2 (other paths: no settle)
        _commit_fails(pool, fail)
        assert pool.lookup("Documents/a2.txt") is not None  # group 1 stands in the catalog
        assert pool.read_bytes("Documents/a2.txt") == BEFORE["a.txt"]


@pytest.mark.expect_errors
def test_a_failed_commit_keeps_the_finished_journal_rows_it_was_to_remove(state_dir: Path,
                                                                             dir_drives: list[Path]) -> None:
    """A group's first transaction removes the journal rows of finished steps; if the group's
    COMMIT fails they are held back again, or the next open would replay a long-finished
    rename, whose removal of the file it replaced would remove a newer one."""
    pool = Pool.create(state_dir, folders={"Documents": 1})
    d1, d2 = dir_drives[:2]
    pool.add_drive(d1, label="d1", max_size=64 << 20, allow_shared_device=True)
    pool.add_drive(d2, label="d2", max_size=64 << 20, allow_shared_device=True)
    # c.txt on d1 only, d.txt and e.txt on d2 only (mfs: the emptier drive)
    pool.write_bytes("Documents/c.txt", b"C" * 8000)
    pool.write_bytes("Documents/d.txt", b"D" * 10)
    pool.write_bytes("Documents/e.txt", b"E" * 10)
    pool.write_bytes("Documents/x.txt", b"X")
    where = {n: {r.drive_id for r in pool.cat.replicas(pool.stat(f"Documents/{n}.txt").id)} for n in "cde"}
    assert where["c"] != where["d"] and where["e"] == where["d"], f"placement changed: {where}"
    pool.go_live()
    pool.group_steps()
    fail = FailingCommit(pool.cat.db)
    pool.cat.db = fail  # type: ignore[assignment]
    docs = _docs(pool)
    pool.move(docs, "c.txt", docs, "d.txt", noreplace=False)  # moves=[c's], unlink_dst=[d's]
    pool.settle_steps()  # done: its row goes with the next commit
    pool.remove(docs, "x.txt", rmdir=False)  # a new group: its first transaction deletes that row
    fail.armed = True
    with pytest.raises(sqlite3.OperationalError):
        pool.settle_steps()
    pool.cat.db = fail._db  # type: ignore[assignment]
    pool.move(docs, "e.txt", docs, "d.txt", noreplace=False)  # d.txt is now e's data, on d2
    pool.settle_steps()
    pool.catch_up()
    assert pool.cat.journal() == []
    pool.close()
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/d.txt") == b"E" * 10


class Crash(BaseException):
    pass


@pytest.mark.expect_errors
def test_a_change_at_a_name_a_rename_left_settles_the_rename_before_its_commit(state_dir: Path, dir_drives: list[Path],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """rename a -> a2 (grouped), then mkdir a: the rename's drive steps run before make_dir's
    commit. Otherwise, killed in between, the replay would find something at a.txt
    (`_taken_since`) and leave the rename's drive steps undone."""
    pool = _pool(state_dir, dir_drives)
    docs = _docs(pool)
    pool.move(docs, "a.txt", docs, "a2.txt", noreplace=False)

    def crash(*_: object) -> None:
        raise Crash

    monkeypatch.setattr(pool, "_dir_on_drives", crash)
    with pytest.raises(Crash):
        pool.make_dir(docs, "a.txt", 0o755, 0, 0)
    pool.cat.db.close()  # killed
    assert pool.lock is not None
    pool.lock.release()
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/a2.txt") == BEFORE["a.txt"]
        assert_clean(pool)


def _music_changed(pool: Pool, monkeypatch: pytest.MonkeyPatch, *more: str) -> tuple[PoolOperations, Ctx, Node]:
    """In process, the mount's operations with song.ogg deleted and old.ogg renamed new.ogg
    in Music (in the open group); `more` files there too. Returns them and Music."""
    for name, data in (("song.ogg", b"la"), ("old.ogg", b"lo"), *((n, b"ot") for n in more)):
        pool.write_bytes(f"Music/{name}", data * 500)
    ops, ctx = _live_ops(pool, monkeypatch)
    pool.group_steps()
    music = pool.child(1, "Music")
    assert music is not None
    ops.unlink(ctx, music.id, b"song.ogg")
    ops.rename(ctx, music.id, b"old.ogg", music.id, b"new.ogg", 0)
    return ops, ctx, music


def test_looks_past_a_stall_see_the_renames_and_deletes_that_returned(dir_pool: Pool,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """unlink and rename returned (grouped); then a change holds the lock (an open for reading
    on a drive that hangs: it does not wait for other files' steps, but commits the group).
    Lookups past the stall do not see the deleted file again, nor the renamed one under its
    old name."""
    ops, ctx, music = _music_changed(dir_pool, monkeypatch, "other.ogg")
    other = dir_pool.child(music.id, "other.ogg")
    assert other is not None
    reading = ops.open(ctx, other.id, os.O_RDONLY)  # what the stuck change would be doing
    assert not dir_pool.cat.group_open and dir_pool._queued  # committed: the steps may wait
    ops.release(reading.fh)
    stuck = _Holder(ops)
    try:
        seen = {"song.ogg": ops.lookup(ctx, music.id, b"song.ogg") is not None,
                "old.ogg": ops.lookup(ctx, music.id, b"old.ogg") is not None,
                "new.ogg": ops.lookup(ctx, music.id, b"new.ogg") is not None}
    finally:
        stuck.go()
    ops.close()
    assert seen == {"song.ogg": False, "old.ogg": False, "new.ogg": True}, seen


@pytest.mark.expect_errors
def test_a_symlink_made_where_a_rename_left_is_never_moved_over_the_file(
        state_dir: Path, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """rename a -> a2 (grouped), then symlink a: the rename's steps run and their journal rows
    go before the symlink is made on the drives (before its commit). Otherwise, killed
    before that commit, the replay of the rename would move the symlink over a2."""
    pool = _pool(state_dir, dir_drives)
    docs = _docs(pool)
    pool.move(docs, "a.txt", docs, "a2.txt", noreplace=False)

    def killed(*_: object, **__: object) -> int:
        raise Crash  # the daemon dies after the drive steps, before the commit

    monkeypatch.setattr(pool.cat, "add_node", killed)
    with pytest.raises(Crash):
        pool.make_node(docs, "a.txt", 0o120777, 0, 0, target="elsewhere")
    pool.cat.db.close()
    assert pool.lock is not None
    pool.lock.release()
    with Pool.open(state_dir) as pool:
        on_drives = [p.is_symlink() or p.read_bytes() for d in dir_drives
                     if (p := d / "HomePool/Documents/a2.txt").is_symlink() or p.exists()]
        assert on_drives == [BEFORE["a.txt"]] * 2, on_drives


def test_a_check_while_mounted_finds_the_renames_and_deletes_on_the_drives(state_dir: Path, dir_drives: list[Path],
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`check --repair` in the mount lets the lock go between files: a rename or delete made
    meanwhile is on the drives before it looks (not a copy missing, nor a stray to take in)."""
    pool = _pool(state_dir, dir_drives)
    ops = PoolOperations(pool)
    try:
        docs = _docs(pool)
        real = check_mod.check_replicas_match

        def meanwhile(*args: object) -> list[check_mod.Problem]:
            with ops.lock:  # requests served between two of the check's holds
                pool.move(docs, "a.txt", docs, "a2.txt", noreplace=False)
                pool.remove(docs, "b.txt", rmdir=False)
            return real(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(check_mod, "check_replicas_match", meanwhile)
        answer = mount_mod.answer(pool, ops, {"op": "check", "repair": True})
        assert [(p["check"], p["detail"]) for p in answer["problems"]] == []
        assert pool.lookup("Documents/b.txt") is None and copies_on_disk(dir_drives, "Documents/b.txt") == []
        node = pool.lookup("Documents/a2.txt")
        assert node is not None and len(pool.cat.replicas(node.id)) == 2
    finally:
        ops.close()


def test_a_rename_waiting_on_a_drive_holds_up_no_look_at_other_files(dir_pool: Pool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete is in the open group; a rename then hangs on a drive (its look for something
    in the way) holding the lock: lookups in other folders go on past it, and the deleted
    file is not seen again (a lookup in its folder waits)."""
    dir_pool.write_bytes("Music/gone.ogg", b"la" * 10)
    dir_pool.write_bytes("Photos/x.jpg", b"x")
    dir_pool.write_bytes("Videos/film.mkv", b"f" * 10)
    ops, ctx = _live_ops(dir_pool, monkeypatch)
    dir_pool.group_steps()
    music, photos, videos = (dir_pool.child(1, n) for n in ("Music", "Photos", "Videos"))
    assert music is not None and photos is not None and videos is not None
    ops.unlink(ctx, music.id, b"gone.ogg")
    assert dir_pool.cat.group_open
    stuck = _Stuck()
    monkeypatch.setattr(Drive, "lexists", stuck.hang(Drive.lexists))
    renaming = stuck.run(lambda: ops.rename(ctx, photos.id, b"x.jpg", photos.id, b"y.jpg", 0))
    seen: dict[str, object] = {}
    looking = threading.Thread(target=lambda: seen.update(other=_looked_up(ops, ctx, videos.id, b"film.mkv")))
    gone = threading.Thread(target=lambda: seen.update(gone=_looked_up(ops, ctx, music.id, b"gone.ogg")))
    looking.start()
    gone.start()
    looking.join(10)
    gone.join(1)
    waited = looking.is_alive()
    stuck.go.set()
    renaming.join(10)
    looking.join(10)
    gone.join(10)
    ops.close()
    assert not waited, "a lookup in another folder waited for the stuck rename"
    assert seen == {"other": True, "gone": False}, seen


def _looked_up(ops: PoolOperations, ctx: Ctx, parent: int, name: bytes) -> bool:
    return ops.lookup(ctx, parent, name) is not None


@pytest.mark.expect_errors
@pytest.mark.parametrize("folder", ["Documents", "Videos"], ids=["through-the-mount", "passed-through"])
def test_a_failed_commit_of_a_close_is_recorded_at_the_next(state_dir: Path, dir_drives: list[Path],
                                                              folder: str) -> None:
    """A file's record at a close is undone with its group (a full state drive): it is recorded
    again at the next close, and the catalog has what the file holds."""
    with _failing_pool(state_dir, dir_drives) as (pool, fail):
        node, f = _written_and_flushed(pool, folder)
        _commit_fails(pool, fail)
        _closed(pool, f)
        pool.catch_up()
        assert pool.node(node.id).size == 5
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes(f"{folder}/new.bin") == b"hello"
        assert_clean(pool)


@pytest.mark.expect_errors
def test_a_group_sqlite_undid_by_itself_keeps_no_later_change_apart(state_dir: Path, dir_drives: list[Path]) -> None:
    """SQLite rolls a transaction back by itself after some errors (an I/O error): the changes
    after that are a group of their own, their steps run with their commit."""
    pool = _pool(state_dir, dir_drives)
    try:
        docs = _docs(pool)
        pool.remove(docs, "b.txt", rmdir=False)
        pool.cat.db.execute("ROLLBACK")  # what SQLite does itself after such an error
        pool.move(docs, "a.txt", docs, "a2.txt", noreplace=False)
        pool.settle_steps()
        assert pool.lookup("Documents/b.txt") is not None and pool.lookup("Documents/a2.txt") is not None
        assert _on_drives(dir_drives) == _as_files({**BEFORE, "a2.txt": BEFORE["a.txt"], "a.txt": None})
        pool.catch_up()
        assert_clean(pool)
    finally:
        pool.close()


class GivesUp:
    """The catalog's connection, with planned statements failing as on a full state drive:
    each (start of a statement, whether SQLite undoes the whole transaction itself first)."""

    def __init__(self, db: sqlite3.Connection, plan: list[tuple[str, bool]]) -> None:
        self._db, self.plan = db, plan

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if self.plan and sql.lstrip().startswith(self.plan[0][0]):
            _, whole = self.plan.pop(0)
            if whole and self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise sqlite3.OperationalError("database or disk is full")
        return self._db.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self._db, name)


@pytest.mark.expect_errors
def test_a_new_file_recorded_again_after_sqlite_undid_its_group_is_recorded_whole_or_not_at_all(
        state_dir: Path, dir_drives: list[Path]) -> None:
    """SQLite undoes a whole group by itself in a later create's savepoint: the new file of the
    group is recorded again (`creates_undone`) in a transaction of its own, which a failure
    undoes whole (found by review: it ran as if nested in the failed one, statement by
    statement, and left the file recorded with no copy)."""
    pool = _pool(state_dir, dir_drives)
    try:
        docs = _docs(pool)
        node, f = pool.create_file(docs, "new.bin", 0o640, os.getuid(), os.getgid())
        f.write(b"hello", 0)
        real = pool.cat.db
        pool.cat.db = GivesUp(real, [("INSERT INTO nodes", True), ("INSERT INTO replicas", False)])  # type: ignore[assignment]
        try:
            with pytest.raises(sqlite3.OperationalError):
                pool.create_file(docs, "second.bin", 0o640, os.getuid(), os.getgid())
        finally:
            pool.cat.db = real
        other = sqlite3.connect(f"{(state_dir / CATALOG_FILE).as_uri()}?mode=ro", uri=True)
        try:
            committed = other.execute("SELECT count(*) FROM nodes WHERE id = ?", (node.id,)).fetchone()[0]
            copies = other.execute("SELECT count(*) FROM replicas WHERE node_id = ?", (node.id,)).fetchone()[0]
        finally:
            other.close()
        assert (committed, copies) in ((0, 0), (1, 2))
        _closed(pool, f)
    finally:
        pool.close()
    with Pool.open(state_dir) as pool:  # (the file's note takes it in if it was not recorded)
        assert pool.read_bytes("Documents/new.bin") == b"hello"
        assert_clean(pool)


@pytest.mark.expect_errors
def test_a_look_from_before_a_group_was_undone_is_not_trusted(state_dir: Path, dir_drives: list[Path]) -> None:
    """A rename or delete records what the mount looked up for it (`Looked`: the name a
    rename replaces, a deleted file's copies) without asking the catalog again, but only
    while no group has been undone since the look. Here the look says that a rename of a.txt
    to d.txt replaces nothing (d.txt is deleted in the open group), and SQLite then undoes the
    group by itself: d.txt is back, and the rename replaces it."""
    pool = _pool(state_dir, dir_drives)
    try:
        docs = _docs(pool)
        a, d = pool.cat.child(docs, "a.txt"), pool.cat.child(docs, "d.txt")
        assert a is not None and d is not None
        moves, had = [r.drive_id for r in pool.cat.replicas(a.id)], [r.drive_id for r in pool.cat.replicas(d.id)]
        pool.remove(docs, "d.txt", rmdir=False)
        looked = Looked(pool.groups_undone, old=None)  # as the mount's rename would see d.txt now
        pool.cat.db.execute("ROLLBACK")  # what SQLite does itself after an I/O error
        with pool.cat.transaction(grouped=True):  # (the next transaction finds the group undone)
            pass
        payload = {"src": "Documents/a.txt", "dst": "Documents/d.txt", "kind": "file", "moves": moves,
                   "unlink_dst": [i for i in had if i not in moves], "id": a.id, "dparent": docs}
        pool._run_grouped("rename", payload, looked)
        pool.settle_steps()
        assert pool.lookup("Documents/a.txt") is None and pool.read_bytes("Documents/d.txt") == BEFORE["a.txt"]
        assert _on_drives(dir_drives) == _as_files({**BEFORE, "a.txt": None, "d.txt": BEFORE["a.txt"]})
        pool.catch_up()
        assert_clean(pool)
    finally:
        pool.close()


def test_a_listing_past_a_stall_shows_the_renames_and_deletes_that_returned(dir_pool: Pool,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A listing read past a stall, with a rename and a delete in the open group: it waits
    rather than list the names as they were."""
    ops, ctx, music = _music_changed(dir_pool, monkeypatch)
    assert dir_pool.cat.group_open
    stuck = _Holder(ops)
    seen: list[str] = []
    listing = threading.Thread(target=lambda: seen.extend(n.decode() for n, *_ in ops.readdir(music.id, 0, 100)))
    listing.start()
    listing.join(1)  # (past LOOK_WAIT: it would have answered from the catalog by now)
    stuck.go()
    listing.join(10)
    ops.close()
    assert sorted(seen) == ["new.ogg"], seen


def test_a_look_past_a_stall_never_reads_a_snapshot_older_than_its_doubts(dir_pool: Pool,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The lock holder commits the open group (and empties what it changed) between the two
    reads of a lookup past a stall: the second read is still doubted, so the size the file
    was closed with is shown, not the one before."""
    ops, ctx = _live_ops(dir_pool, monkeypatch)
    dir_pool.group_steps()
    music = dir_pool.child(1, "Music")
    assert music is not None
    node, f = dir_pool.create_file(music.id, "new.bin", 0o644, os.getuid(), os.getgid())
    dir_pool.cat.commit_group()  # (the create is committed: only its close is in the open group)
    f.write(b"hello", 0)
    _closed(dir_pool, f)  # close(2) returned: recorded in the open group
    assert dir_pool.cat.group_open and node.id in dir_pool.group_touched
    stuck = _Holder(ops)
    real = glance_mod.named
    once = []

    def named(cat: Catalog, parent: int, name: str) -> Node | None:
        found = real(cat, parent, name)  # (the glance's snapshot is taken here)
        if not once:
            once.append(1)
            stuck.go(dir_pool.cat.commit_group)  # the holder commits meanwhile (then hangs on a drive, say)
        return found

    monkeypatch.setattr(glance_mod, "named", named)
    ops._held_up = True
    try:
        attr = ops.lookup(ctx, music.id, b"new.bin")
    finally:
        if not once:
            stuck.go()
    ops.close()
    assert attr is not None and attr.size == 5, attr


@pytest.mark.expect_errors
def test_a_close_whose_flush_and_release_a_failed_commit_undid_is_recorded(state_dir: Path,
                                                                           dir_drives: list[Path]) -> None:
    """close(2): FLUSH records (grouped), RELEASE follows in the same group; the group's
    COMMIT fails: the record is made again at once (the handle is gone)."""
    with _failing_pool(state_dir, dir_drives) as (pool, fail):
        node, f = _written_and_flushed(pool)
        _closed(pool, f)  # RELEASE, same group
        _commit_fails(pool, fail)
        pool.catch_up()
        assert pool.node(node.id).size == 5, (pool.node(node.id), pool.cat.journal())


@pytest.mark.expect_errors
def test_a_failed_commit_keeps_what_was_set_while_the_file_was_open(state_dir: Path, dir_drives: list[Path]) -> None:
    """tar: write, fchmod, close. FLUSH's record (grouped) fails to commit: the handle gets its
    journal row and what was set on it back, and RELEASE records both."""
    with _failing_pool(state_dir, dir_drives) as (pool, fail):
        docs = _docs(pool)
        node, f = pool.create_file(docs, "new.bin", 0o644, os.getuid(), os.getgid())
        f.write(b"hello", 0)
        pool.set_attrs(node.id, mode=0o600, handle=f)  # (fchmod)
        assert pool.node(node.id).mode & 0o7777 == 0o600
        _flushed(pool, f)
        _commit_fails(pool, fail)
        _closed(pool, f)
        pool.catch_up()
        got = pool.node(node.id)
        assert (got.size, got.mode & 0o7777) == (5, 0o600), got



def test_a_create_joins_the_group_and_leaves_the_steps_of_other_files_waiting(
        state_dir: Path, dir_drives: list[Path]) -> None:
    """A new file is recorded in the open group and its copies are made at once, noted until
    the group's commit (pool/newfiles.py); the drive steps of other files' renames and
    deletes go on waiting for the settle thread, so that a drive hung under one of them holds
    up no create, nor an open for writing."""
    pool = _pool(state_dir, dir_drives)
    try:
        docs, videos = _docs(pool), pool.cat.child(ROOT_ID, "Videos")
        assert videos is not None
        _, g = pool.create_file(videos.id, "film.mkv", 0o644, os.getuid(), os.getgid())
        pool.settle_steps()
        pool.remove(docs, "b.txt", rmdir=False)  # grouped: its steps wait
        _, f = pool.create_file(docs, "new.txt", 0o644, os.getuid(), os.getgid())
        assert pool.cat.group_open
        assert pool.lookup("Documents/new.txt") is not None
        assert _committed_names(state_dir) == set(BEFORE)
        assert len(copies_on_disk(dir_drives, "Documents/new.txt")) == 2
        assert [n.path for n in newfiles.read(state_dir)] == ["Documents/new.txt"]
        pool.may_pass_through(g)  # (an open for writing of a 1-copy file asks for the drives' room)
        assert len(copies_on_disk(dir_drives, "Documents/b.txt")) == 2, "b.txt's delete did not wait"
        _closed(pool, f, g)
        pool.settle_steps()  # (the settle thread)
        assert _committed_names(state_dir) == {"a.txt", "c.txt", "d.txt", "new.txt"}
        assert newfiles.read(state_dir) == []
        assert copies_on_disk(dir_drives, "Documents/b.txt") == []
        pool.catch_up()
        assert_clean(pool)
    finally:
        pool.close()


def test_a_create_of_a_name_taken_meanwhile_is_refused_and_changes_nothing(state_dir: Path,
                                                                          dir_drives: list[Path]) -> None:
    """A create comes for a name the kernel found free; the name was taken meanwhile (by a
    command, say): the catalog's insert refuses it, in the open group, before anything is
    noted or made on a drive; the file there keeps its content, and the group commits."""
    pool = _pool(state_dir, dir_drives)
    try:
        first = _new_file(pool, "taken.txt", b"kept")
        with pytest.raises(AlreadyExists):
            pool.create_file(_docs(pool), "taken.txt", 0o600, os.getuid(), os.getgid())
        assert [n.path for n in newfiles.read(state_dir)] == ["Documents/taken.txt"]  # the first one's only
        pool.settle_steps()
        assert pool.lookup("Documents/taken.txt") == pool.node(first.id)
        assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/taken.txt")] == [b"kept", b"kept"]
        assert_clean(pool)
    finally:
        pool.close()


def test_a_create_where_a_delete_waits_runs_the_delete_first(state_dir: Path, dir_drives: list[Path]) -> None:
    """rm b.txt, then a new b.txt: the delete's steps run before the new copies are made (the
    new file is not put aside as a stranger, nor deleted with the old one)."""
    pool = _pool(state_dir, dir_drives)
    try:
        docs = _docs(pool)
        pool.remove(docs, "b.txt", rmdir=False)
        _new_file(pool, "b.txt", b"new b")
        pool.settle_steps()
        assert _on_drives(dir_drives)["b.txt"] == [b"new b"] * 2
        assert not [p for d in dir_drives for p in (d / "HomePool" / "Documents").iterdir() if "conflict" in p.name]
        pool.catch_up()
        assert_clean(pool)
    finally:
        pool.close()


@pytest.mark.expect_errors
def test_a_new_file_a_failed_commit_undid_is_recorded_again_as_it_was(state_dir: Path,
                                                                      dir_drives: list[Path]) -> None:
    """Its copies are there and being written: the file is recorded again at once, with its
    inode number and journal row, and its close records what was written."""
    with _failing_pool(state_dir, dir_drives) as (pool, fail):
        docs = _docs(pool)
        pool.remove(docs, "b.txt", rmdir=False)
        node, f = pool.create_file(docs, "new.txt", 0o644, os.getuid(), os.getgid())
        f.write(b"written", 0)
        _commit_fails(pool, fail)
        assert pool.lookup("Documents/b.txt") is not None  # the delete is undone
        assert pool.stat("Documents/new.txt").id == node.id  # the new file is not
        _flushed(pool, f)
        _closed(pool, f)
        pool.settle_steps()
        assert pool.read_bytes("Documents/new.txt") == b"written"
        assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/new.txt")] == [b"written"] * 2
        pool.catch_up()
        assert pool.cat.journal() == []
        assert_clean(pool)
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/new.txt") == b"written"



def test_a_crash_before_its_commit_keeps_a_new_file_from_its_copies(state_dir: Path, dir_drives: list[Path]) -> None:
    """Killed with a new file written and closed in the open group: the next opening takes
    its copies in (noted in new-files), whole, and the rest of the group is undone."""
    pool = _pool(state_dir, dir_drives)
    docs = _docs(pool)
    pool.remove(docs, "b.txt", rmdir=False)
    _new_file(pool, "new.txt", b"kept")
    assert pool.cat.group_open
    _killed(pool)
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/new.txt") == b"kept"
        assert pool.read_bytes("Documents/b.txt") == BEFORE["b.txt"]
        assert len(pool.cat.replicas(pool.stat("Documents/new.txt").id)) == 2
        assert newfiles.read(state_dir) == []
        assert_clean(pool)


def test_a_rename_replayed_after_a_crash_leaves_a_new_file_where_it_was(state_dir: Path,
                                                                        dir_drives: list[Path]) -> None:
    """rename a -> a2 (committed, its steps done, its journal row still there until the next
    commit), then a new a.txt, uncommitted, and a crash: the new file is taken in before the
    journal is finished, so the rename, replayed, does not move it over a2."""
    pool = _pool(state_dir, dir_drives)
    docs = _docs(pool)
    pool.move(docs, "a.txt", docs, "a2.txt", noreplace=False)
    _new_file(pool, "a.txt", b"new a")  # (runs the rename's steps first)
    db = sqlite3.connect(f"{(state_dir / CATALOG_FILE).as_uri()}?mode=ro", uri=True)
    assert [op for (op,) in db.execute("SELECT op FROM journal")] == ["rename"]  # (as committed)
    db.close()
    _killed(pool)
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/a2.txt") == BEFORE["a.txt"]
        assert pool.read_bytes("Documents/a.txt") == b"new a"
        assert _on_drives(dir_drives)["a.txt"] == [b"new a"] * 2
        assert pool.cat.journal() == []
        assert_clean(pool)


def test_a_note_of_a_new_file_committed_takes_nothing_in(state_dir: Path, dir_drives: list[Path]) -> None:
    """Killed between a commit and the emptying of the note: the file is the catalog's."""
    pool = _pool(state_dir, dir_drives)
    _, f = pool.create_file(_docs(pool), "new.txt", 0o644, os.getuid(), os.getgid())
    _closed(pool, f)
    pool.cat.commit_group()
    assert newfiles.read(state_dir) == []
    (state_dir / newfiles.NEW_FILES).write_text('{"path": "Documents/new.txt", "drives": [1, 2, 3]}\n')
    _killed(pool)
    with Pool.open(state_dir) as pool:
        assert [e.name for e in pool.listdir("Documents")].count("new.txt") == 1
        assert not [p for d in dir_drives for p in (d / "HomePool" / "Documents").iterdir() if "conflict" in p.name]
        assert newfiles.read(state_dir) == []
        assert_clean(pool)



@pytest.mark.expect_errors
@pytest.mark.parametrize("then", ["rename", "delete", "rename-after-a-failed-create"])
def test_a_crash_after_a_commit_left_its_note_takes_nothing_in(state_dir: Path, dir_drives: list[Path],
                                                               monkeypatch: pytest.MonkeyPatch, then: str) -> None:
    """A new file renamed or deleted in its own group; the group is committed and the process
    killed before the note is emptied (the drive steps not taken either): the note's group
    was committed, so the journal, not the note, says what became of the file. Also when a
    create before it failed in its group's first transaction (its number's record undone)."""
    pool = _pool(state_dir, dir_drives)
    if then == "rename-after-a-failed-create":
        assert pool._new_files is not None
        note = pool._new_files.note

        def full(*args: object) -> None:
            monkeypatch.setattr(pool._new_files, "note", note)
            raise OSError(28, "No space left on device")  # the state drive, full for a moment

        monkeypatch.setattr(pool._new_files, "note", full)
        with pytest.raises(OSError):
            pool.create_file(_docs(pool), "x.txt", 0o644, os.getuid(), os.getgid())
    _new_file(pool, "new.txt", b"payload")
    if then.startswith("rename"):
        pool.move(_docs(pool), "new.txt", _docs(pool), "moved.txt", noreplace=False)
    else:
        pool.remove(_docs(pool), "new.txt", rmdir=False)
    assert pool._new_files is not None
    monkeypatch.setattr(pool._new_files, "committed", lambda: None)  # killed just after the COMMIT
    pool.cat.commit_group()
    assert [n.path for n in newfiles.read(state_dir)] == ["Documents/new.txt"]
    _killed(pool)
    with Pool.open(state_dir) as pool:
        names = {e.name for e in pool.listdir("Documents")}
        assert "new.txt" not in names
        if then.startswith("rename"):
            assert pool.read_bytes("Documents/moved.txt") == b"payload"
        assert copies_on_disk(dir_drives, "Documents/new.txt") == []
        assert_clean(pool)


def test_a_note_for_a_drive_away_is_kept_until_it_is_back(state_dir: Path, dir_drives: list[Path]) -> None:
    """Killed with a new file uncommitted, its drives away at the next opening, and at a mount
    after it: taken in once they are back."""
    pool = _pool(state_dir, dir_drives)
    _new_file(pool, "new.txt", b"payload")
    [note] = newfiles.read(state_dir)
    targets = note.drives
    roots = {row.id: Path(row.path) for row in pool.cat.drives()}
    _killed(pool)
    away = [roots[i] for i in targets]
    for root in away:
        root.rename(root.with_name(root.name + ".away"))
    Pool.open(state_dir).close()
    assert len(newfiles.read(state_dir)) == 2
    pool = Pool.open(state_dir)  # a mount that makes nothing
    pool.go_live()
    pool.group_steps()
    pool.close()
    for root in away:
        root.with_name(root.name + ".away").rename(root)
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/new.txt") == b"payload"
        assert newfiles.read(state_dir) == []
        assert_clean(pool)


def test_a_new_file_taken_in_keeps_its_owner_and_mode(state_dir: Path, dir_drives: list[Path]) -> None:
    pool = _pool(state_dir, dir_drives)
    _new_file(pool, "new.txt", b"mine", uid=1234, gid=1234)
    _killed(pool)
    with Pool.open(state_dir) as pool:
        node = pool.stat("Documents/new.txt")
        assert (node.uid, node.gid, node.mode & 0o7777) == (1234, 1234, 0o640)


@pytest.mark.expect_errors
def test_a_new_file_taken_in_gets_the_copies_its_folder_wants(state_dir: Path, dir_drives: list[Path],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Its second copy could not be made (a drive error): taken in, it is made."""
    pool = _pool(state_dir, dir_drives)
    real, made = pool._create_copy, []

    def second_fails(d: Drive, *args: object) -> int:
        made.append(d.id)
        if len(made) == 2:
            raise OSError(5, "Input/output error")
        return real(d, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pool, "_create_copy", second_fails)
    _new_file(pool, "new.txt", b"payload")
    _killed(pool)
    with Pool.open(state_dir) as pool:
        assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/new.txt")] == [b"payload"] * 2
        assert_clean(pool)


@pytest.mark.parametrize("second", [b"first and more", b"other"], ids=["ahead", "different"])
def test_new_copies_that_differ_at_a_crash_lose_nothing(state_dir: Path, dir_drives: list[Path],
                                                        second: bytes) -> None:
    """Killed between the writes to a new file's two copies: a copy that holds the other and
    more is the file (made again on the other drive); copies that differ otherwise are both
    kept, one under a conflict name, each with its two copies."""
    pool = _pool(state_dir, dir_drives)
    _, f = pool.create_file(_docs(pool), "new.txt", 0o644, os.getuid(), os.getgid())
    f.write(b"first", 0)
    [note] = newfiles.read(state_dir)
    targets = note.drives
    os.pwrite(f.fds[targets[1]], second, 0)  # (the kill comes before the first copy gets it)
    _killed(pool)
    with Pool.open(state_dir) as pool:
        if second.startswith(b"first"):
            assert pool.read_bytes("Documents/new.txt") == second
            assert not [e.name for e in pool.listdir("Documents") if "conflict" in e.name]
        else:
            others = [e.name for e in pool.listdir("Documents") if "conflict" in e.name]
            assert len(others) == 1
            assert {pool.read_bytes("Documents/new.txt"), pool.read_bytes(f"Documents/{others[0]}")} \
                == {b"first", second}
        assert_clean(pool)


@pytest.mark.expect_errors
def test_a_note_of_a_new_file_a_failed_commit_recorded_again_takes_nothing_in(
        state_dir: Path, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Group 1's commit fails and its new file is recorded again at once; group 2 (no create:
    the file's close and a rename of it) commits, and the process is killed before the note
    is emptied: the note is of a file recorded, so the rename stands."""
    with _failing_pool(state_dir, dir_drives) as (pool, fail):
        _, f = pool.create_file(_docs(pool), "new.txt", 0o644, os.getuid(), os.getgid())
        f.write(b"payload", 0)
        _commit_fails(pool, fail)
        _flushed(pool, f)
        _closed(pool, f)
        pool.move(_docs(pool), "new.txt", _docs(pool), "moved.txt", noreplace=False)
        assert pool._new_files is not None
        monkeypatch.setattr(pool._new_files, "committed", lambda: None)  # killed just after the COMMIT
        pool.cat.commit_group()
        _killed(pool)
        monkeypatch.setattr(pool, "close", lambda: None)
    with Pool.open(state_dir) as pool:
        assert "new.txt" not in {e.name for e in pool.listdir("Documents")}
        assert pool.read_bytes("Documents/moved.txt") == b"payload"
        assert_clean(pool)


def test_a_copy_on_a_drive_that_was_away_is_an_old_mirror_once_the_file_is_taken_in(
        state_dir: Path, dir_drives: list[Path]) -> None:
    """Killed with a new file uncommitted; one of its two drives is away at the next opening:
    taken in from the other. Deleted then; when the drive is back its copy does not bring
    the file back."""
    pool = _pool(state_dir, dir_drives)
    _new_file(pool, "new.txt", b"payload")
    [note] = newfiles.read(state_dir)
    roots = {row.id: Path(row.path) for row in pool.cat.drives()}
    _killed(pool)
    away = roots[note.drives[1]]
    away.rename(away.with_name(away.name + ".away"))
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/new.txt") == b"payload"
        pool.delete("Documents/new.txt")
    away.with_name(away.name + ".away").rename(away)
    with Pool.open(state_dir) as pool:
        assert "new.txt" not in {e.name for e in pool.listdir("Documents")}
        assert copies_on_disk(dir_drives, "Documents/new.txt") == []
        assert newfiles.read(state_dir) == []
        assert_clean(pool)

"""Renames and deletes of files through the mount, committed a group at a time
(`Pool.group_steps`): seen at once, on the drives after their group's commit, and a crash
keeps each group whole or not at all."""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path

import pytest

from homepool.catalog import ROOT_ID
from homepool.config import CATALOG_FILE
from homepool.pool import Pool

from .helpers import assert_clean, copies_on_disk, reader, sync_dir
from .mounting import mount_pool

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


def _as_files(files: dict[str, bytes]) -> dict[str, list[bytes]]:
    """Each file on two drives, nothing else."""
    return {name: [files[name]] * 2 if name in files else [] for name in sorted({*BEFORE, *AFTER})}


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
    # The process dies: its connection goes with what it did not commit, and its lock.
    pool.cat.db.close()
    assert pool.lock is not None
    pool.lock.release()
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
        sync_dir(docs)  # an fsync of the folder waits for the drive steps
        assert _on_drives(dir_drives) == _as_files({"a.txt": BEFORE["a.txt"], "d.txt": BEFORE["c.txt"]})
        assert sorted(os.listdir(docs)) == ["a.txt", "d.txt"]
    with reader(state_dir) as pool:
        assert_clean(pool)


def test_a_killed_mount_keeps_the_renames_and_deletes_in_order(state_dir: Path, dir_drives: list[Path],
                                                               tmp_path: Path) -> None:
    """Killed with a group open (it may be committed, whole or in part, by the every-second
    round): what the pool has after is the changes up to some point, each whole, on the
    drives as in the catalog, and nothing lost that was not deleted."""
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
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with Pool.open(state_dir) as pool:
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

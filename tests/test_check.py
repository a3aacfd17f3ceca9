"""Break things on purpose; `check` must find each, and `check --repair` fix it."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import BinaryIO

import pytest

from homepool import check as check_mod
from homepool import drives as drives_mod
from homepool.check import check
from homepool.drives import Drive
from homepool.errors import NoReadableCopy
from homepool.fuse.ops import PoolOperations
from homepool.mount import answer
from homepool.pool import Pool, core

from .helpers import assert_clean, copies_on_disk, mount_dies


def found(pool: Pool) -> set[str]:
    return {p.check for p in check(pool)}


def repair_then_clean(pool: Pool) -> None:
    check(pool, repair=True)
    assert_clean(pool)


def test_an_interrupted_write_is_finished(dir_pool: Pool, dir_drives: list[Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Crash after the journal row is written and the drives switched, before the catalog
    records it: repair must finish it (the new content wins)."""
    dir_pool.write_bytes("Documents/a.txt", b"old")

    def crash(*a: object) -> None:
        raise KeyboardInterrupt  # stands in for kill -9 at this point

    monkeypatch.setattr(dir_pool, "_record_write", crash)
    with pytest.raises(KeyboardInterrupt):
        dir_pool.write_bytes("Documents/a.txt", b"new!")
    monkeypatch.undo()
    assert "journal_empty" in found(dir_pool)
    repair_then_clean(dir_pool)
    assert dir_pool.read_bytes("Documents/a.txt") == b"new!"
    assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/a.txt")] == [b"new!", b"new!"]


def test_an_interrupted_write_before_the_switch_is_finished(dir_pool: Pool, dir_drives: list[Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*a: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(dir_pool, "_apply_write", crash)
    with pytest.raises(KeyboardInterrupt):
        dir_pool.write_bytes("Documents/b.txt", b"fresh")
    monkeypatch.undo()
    assert dir_pool.lookup("Documents/b.txt") is None  # not visible before repair
    assert copies_on_disk(dir_drives, "Documents/b.txt") == []
    repair_then_clean(dir_pool)
    assert dir_pool.read_bytes("Documents/b.txt") == b"fresh"


def test_an_interrupted_rename_is_finished(dir_pool: Pool, dir_drives: list[Path],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"A")
    real_apply = dir_pool._apply_rename

    def half(p: dict, drives: dict) -> None:  # the first drive renamed, then the crash
        first = {k: v for k, v in drives.items() if k == int(p["moves"][0])}
        real_apply(p, first)
        raise KeyboardInterrupt

    monkeypatch.setattr(dir_pool, "_apply_rename", half)
    with pytest.raises(KeyboardInterrupt):
        dir_pool.rename("Documents/a.txt", "Documents/b.txt")
    monkeypatch.undo()
    repair_then_clean(dir_pool)
    assert dir_pool.read_bytes("Documents/b.txt") == b"A"
    assert len(copies_on_disk(dir_drives, "Documents/b.txt")) == 2
    assert copies_on_disk(dir_drives, "Documents/a.txt") == []


def crash(*a: object) -> None:
    raise KeyboardInterrupt  # stands in for kill -9 at this point


@pytest.mark.parametrize("change", ["rename", "delete"])
def test_a_mount_change_recorded_before_its_drive_steps_is_finished(dir_pool: Pool, dir_drives: list[Path],
                                                                    monkeypatch: pytest.MonkeyPatch,
                                                                    change: str) -> None:
    """The mount records a rename or delete together with its journal row, in one commit, and
    then makes it on the drives: after a crash in between (the catalog has the change, the
    drives do not yet), repair makes the drive steps."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.go_live()
    monkeypatch.setattr(dir_pool, "_apply_rename" if change == "rename" else "_apply_drop", crash)
    with pytest.raises(KeyboardInterrupt):
        if change == "rename":
            dir_pool.rename("Documents/a.txt", "Documents/b.txt")
        else:
            dir_pool.delete("Documents/a.txt")
    monkeypatch.undo()
    assert dir_pool.lookup("Documents/a.txt") is None  # recorded...
    assert len(copies_on_disk(dir_drives, "Documents/a.txt")) == 2  # ...and not made yet
    assert "journal_empty" in found(dir_pool)
    repair_then_clean(dir_pool)
    assert copies_on_disk(dir_drives, "Documents/a.txt") == []
    if change == "rename":
        assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/b.txt")] == [b"A", b"A"]


def test_a_mount_changes_journal_row_goes_with_the_next_commit(dir_pool: Pool) -> None:
    """A finished rename's row is removed by the next commit (or within a second), not by one
    of its own: a crash before then only redoes steps already made."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.go_live()
    dir_pool.rename("Documents/a.txt", "Documents/b.txt")
    assert [e.op for e in dir_pool.cat.journal()] == ["rename"]
    repair_then_clean(dir_pool)  # redone: nothing to do, nothing lost
    assert dir_pool.read_bytes("Documents/b.txt") == b"A"
    dir_pool.rename("Documents/b.txt", "Documents/c.txt")
    dir_pool.makedirs("Documents/d")  # the next commit takes the row with it (and holds back its own)
    assert [e.op for e in dir_pool.cat.journal()] == ["mkdir"]
    dir_pool.delete("Documents/c.txt")
    dir_pool.catch_up()  # what the mount does every second
    assert dir_pool.cat.journal() == []


def test_a_held_back_rename_is_not_replayed_over_a_newer_name(dir_pool: Pool, dir_drives: list[Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """After a rename a -> b, a symlink made at a goes onto the drives before its commit. A crash
    then must not let the rename's journal row (held back for the next commit) move the symlink
    over b when it is finished."""
    dir_pool.write_bytes("Documents/a.txt", b"the file")
    dir_pool.go_live()
    parent = dir_pool.stat("Documents").id
    dir_pool.move(parent, "a.txt", parent, "b.txt", noreplace=False)
    monkeypatch.setattr(dir_pool.cat, "add_node", crash)  # the symlink's commit never comes
    with pytest.raises(KeyboardInterrupt):
        dir_pool.make_node(parent, "a.txt", 0o120777, 0, 0, target="elsewhere")
    monkeypatch.undo()
    check(dir_pool, repair=True)
    assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/b.txt")] == [b"the file"] * 2
    assert dir_pool.read_bytes("Documents/b.txt") == b"the file"


def test_a_held_back_row_is_never_replayed_over_a_newer_entry(dir_pool: Pool, dir_drives: list[Path]) -> None:
    """Defence in depth: should a held-back rename row outlive the next commit (a bug), its
    replay must leave alone what is now at its old path, on the drives and in the catalog."""
    dir_pool.write_bytes("Documents/a.txt", b"renamed")
    dir_pool.go_live()
    docs = dir_pool.stat("Documents").id
    dir_pool.move(docs, "a.txt", docs, "b.txt", noreplace=False)
    dir_pool.cat._done_later.clear()  # the bug: the next commit does not take the row
    dir_pool.write_bytes("Documents/a.txt", b"newer")
    dir_pool.live = False
    check(dir_pool, repair=True)
    assert dir_pool.cat.journal() == []
    assert dir_pool.read_bytes("Documents/a.txt") == b"newer"
    assert dir_pool.read_bytes("Documents/b.txt") == b"renamed"
    assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/b.txt")] == [b"renamed"] * 2
    assert_clean(dir_pool)


@pytest.mark.parametrize("what", ["file", "dir"])
@pytest.mark.expect_errors  # the crash leaves one copy: it is made again, with an error in the log
def test_a_file_open_across_a_crashed_rename_keeps_its_new_content(state_dir: Path, dir_pool: Pool,
                                                                   dir_drives: list[Path],
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   what: str) -> None:
    """A file open for writing (its journal row is older) is renamed, or its directory is, and
    the mount dies after the rename's commit, before its drive steps. Finishing the rename's
    row first puts the copies where the catalog says the file is, so the open file's row finds
    them there (found by a review: replayed the other way round, the file was dropped)."""
    dir_pool.makedirs("Documents/d")
    dir_pool.write_bytes("Documents/d/a.txt", b"old")
    dir_pool.go_live()
    f = dir_pool.open_file(dir_pool.stat("Documents/d/a.txt").id, write=True)
    dir_pool.will_change(f)
    assert f.write(b"new content", 0) == []
    monkeypatch.setattr(dir_pool, "_apply_rename", crash)
    with pytest.raises(KeyboardInterrupt):
        if what == "file":
            d = dir_pool.stat("Documents/d").id
            dir_pool.move(d, "a.txt", d, "b.txt", noreplace=False)
        else:
            docs = dir_pool.stat("Documents").id
            dir_pool.move(docs, "d", docs, "e", noreplace=False)
    monkeypatch.undo()
    f.close()  # the mount is gone: its descriptors close...
    mount_dies(dir_pool)  # ...and the next command opens the pool, finishing what was under way
    moved = "Documents/d/b.txt" if what == "file" else "Documents/e/a.txt"
    with Pool.open(state_dir) as pool:
        assert_clean(pool)
        assert pool.read_bytes(moved) == b"new content"
        assert [p.read_bytes() for p in copies_on_disk(dir_drives, moved)] == [b"new content"] * 2


@pytest.mark.expect_errors
def test_a_delete_a_drive_fails_is_owed_by_the_copys_record(dir_pool: Pool, dir_drives: list[Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A drive that fails to remove a deleted file's copy, and cannot even say what is there,
    is owed the removal by the copy's record: the deleted file must not come back as a stray."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.go_live()
    failing = dir_pool.replicas("Documents/a.txt")[0][0]
    real_unlink, real_lstat = Drive.unlink, os.lstat

    def unlink(d: Drive, path: str) -> None:
        if d.id == failing.id:
            raise OSError(errno.EIO, "injected")
        real_unlink(d, path)

    def lstat(path: str) -> os.stat_result:
        if str(path).startswith(str(failing.root)):
            raise OSError(errno.EIO, "injected")
        return real_lstat(path)

    monkeypatch.setattr(Drive, "unlink", unlink)
    monkeypatch.setattr(core.os, "lstat", lstat)
    dir_pool.delete("Documents/a.txt")
    monkeypatch.undo()
    assert [step["op"] for _, step in dir_pool.cat.owed(failing.id)] == ["unlink"]


@pytest.mark.expect_errors
@pytest.mark.parametrize("change", ["rename", "delete"])
def test_a_drive_that_fails_a_mount_change_is_owed_it(state_dir: Path, dir_pool: Pool, dir_drives: list[Path],
                                                      monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.go_live()
    failing = dir_pool.replicas("Documents/a.txt")[0][0]  # a drive with a copy
    real_rename, real_unlink = core.rename_on, Drive.unlink

    def rename_on(d: Drive, *a: object) -> None:
        if d.id == failing.id:
            raise OSError(errno.EIO, "injected")
        real_rename(d, *a)  # type: ignore[arg-type]

    def unlink(d: Drive, path: str) -> None:
        if d.id == failing.id:
            raise OSError(errno.EIO, "injected")
        real_unlink(d, path)

    monkeypatch.setattr(core, "rename_on", rename_on)
    monkeypatch.setattr(Drive, "unlink", unlink)
    if change == "rename":
        dir_pool.rename("Documents/a.txt", "Documents/b.txt")
    else:
        dir_pool.delete("Documents/a.txt")
    monkeypatch.undo()
    assert [step["op"] for _, step in dir_pool.cat.owed(failing.id)] == ["rename" if change == "rename" else "unlink"]
    assert len(copies_on_disk(dir_drives, "Documents/a.txt")) == 1  # left behind on the failing drive
    dir_pool.close()
    with Pool.open(state_dir) as pool:  # opening makes the owed steps
        assert_clean(pool)
        assert copies_on_disk(dir_drives, "Documents/a.txt") == []
        if change == "rename":
            assert len(copies_on_disk(dir_drives, "Documents/b.txt")) == 2


def test_orphan_temp_files_are_removed(dir_pool: Pool, dir_drives: list[Path]) -> None:
    (dir_drives[1] / ".homepool/tmp/deadbeef.part").write_bytes(b"half a file")
    assert found(dir_pool) == {"no_orphan_temps"}
    repair_then_clean(dir_pool)
    assert os.listdir(dir_drives[1] / ".homepool/tmp") == []


def test_temp_files_a_killed_process_left_go_at_the_next_opening(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], caplog: pytest.LogCaptureFixture) -> None:
    """Every process that writes temp files holds the pool's lock, so one that takes it finds
    only what a killed one left (a copy half made, say): it removes them. A reader leaves them."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.close()
    tmp = dir_drives[1] / ".homepool/tmp"
    (tmp / "deadbeef.part").write_bytes(b"half a file")
    with Pool.open(state_dir, write=False) as pool:
        assert found(pool) == {"no_orphan_temps"}
    with Pool.open(state_dir) as pool:
        assert os.listdir(tmp) == []
        assert_clean(pool)
    assert f"removed 1 unfinished temp file(s) on 'drive2' ({dir_drives[1]})" in caplog.text


def test_a_missing_copy_is_remade(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Photos/a.jpg", b"photo")
    copies_on_disk(dir_drives, "Photos/a.jpg")[0].unlink()
    assert found(dir_pool) == {"replicas_match"}
    repair_then_clean(dir_pool)
    assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Photos/a.jpg")] == [b"photo", b"photo"]


def test_a_copy_edited_behind_the_pools_back_is_kept_aside(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/letter.txt", b"Dear all")
    edited = copies_on_disk(dir_drives, "Documents/letter.txt")[0]
    edited.write_bytes(b"Dear nobody, edited directly on the drive")
    assert "replicas_match" in found(dir_pool)
    repair_then_clean(dir_pool)
    assert dir_pool.read_bytes("Documents/letter.txt") == b"Dear all"
    names = [n.name for n in dir_pool.listdir("Documents")]
    aside = [n for n in names if "conflict" in n]
    assert len(aside) == 1
    assert dir_pool.read_bytes(f"Documents/{aside[0]}") == b"Dear nobody, edited directly on the drive"


def test_the_only_copy_edited_on_the_drive_becomes_the_file(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Videos/notes.txt", b"v1")
    (copy,) = copies_on_disk(dir_drives, "Videos/notes.txt")
    copy.write_bytes(b"version 2")
    repair_then_clean(dir_pool)
    assert dir_pool.read_bytes("Videos/notes.txt") == b"version 2"


def test_a_touched_copy_with_the_same_content_is_just_re_timed(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"same", mtime_ns=1_000_000_000_000_000_000)
    os.utime(copies_on_disk(dir_drives, "Documents/a.txt")[0])
    assert found(dir_pool) == {"replicas_match"}
    repair_then_clean(dir_pool)
    assert all(p.stat().st_mtime_ns == 1_000_000_000_000_000_000
               for p in copies_on_disk(dir_drives, "Documents/a.txt"))


def test_stray_files_and_folders_are_taken_in(dir_pool: Pool, dir_drives: list[Path]) -> None:
    (dir_drives[2] / "HomePool/Music/New Album").mkdir()
    (dir_drives[2] / "HomePool/Music/New Album/01.mp3").write_bytes(b"song")
    (dir_drives[0] / "HomePool/Family Tree").mkdir()
    (dir_drives[0] / "HomePool/Family Tree/tree.ged").write_bytes(b"GEDCOM")
    for folder in ("Family Tree", "Music/New Album"):  # as someone put them there, kept as they are
        os.chmod(dir_drives[0 if folder == "Family Tree" else 2] / "HomePool" / folder, 0o750)
        os.chown(dir_drives[0 if folder == "Family Tree" else 2] / "HomePool" / folder, 1000, 100)
    assert "no_stray_files" in found(dir_pool)
    repair_then_clean(dir_pool)
    assert dir_pool.read_bytes("Music/New Album/01.mp3") == b"song"
    assert dir_pool.read_bytes("Family Tree/tree.ged") == b"GEDCOM"
    for folder in ("Family Tree", "Music/New Album"):
        node = dir_pool.stat(folder)
        assert (stat.S_IMODE(node.mode), node.uid, node.gid) == (0o750, 1000, 100)
    st = (dir_drives[0] / "HomePool/Family Tree").stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 100)
    assert len(copies_on_disk(dir_drives, "Music/New Album/01.mp3")) == 2  # Music wants 2


def test_a_shortfall_waits_for_a_drive_then_closes(dir_pool: Pool, dir_drives: list[Path], tmp_path: Path) -> None:
    dir_pool.add_folder("Vault", 4)
    dir_pool.write_bytes("Vault/key.txt", b"secret")
    problems = check(dir_pool, repair=True)
    assert [p.fixed for p in problems] == [False]
    fourth = tmp_path / "drive4"
    fourth.mkdir()
    dir_pool.add_drive(fourth, allow_shared_device=True, max_size=64 << 20)
    repair_then_clean(dir_pool)
    assert len(copies_on_disk([*dir_drives, fourth], "Vault/key.txt")) == 4


def test_a_missing_drive_is_reported_and_reads_use_the_other_copy(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Photos/a.jpg", b"photo")
    holder = copies_on_disk(dir_drives, "Photos/a.jpg")[0].parents[2]
    os.rename(holder / ".homepool", holder / ".homepool-unplugged")  # the drive is gone
    try:
        assert {"drives_present", "copies_met"} <= found(dir_pool)
        assert dir_pool.read_bytes("Photos/a.jpg") == b"photo"
    finally:
        os.rename(holder / ".homepool-unplugged", holder / ".homepool")
    assert_clean(dir_pool)


def test_check_while_a_copy_is_made_outside_the_lock_sees_no_orphan_temp(
        dir_pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount copies a file's data with its lock let go (`unlocked_io`): a check that takes
    the lock meanwhile must not call the copy's temp file an interrupted write."""
    dir_pool.write_bytes("Videos/v.bin", b"V" * 1000)  # Videos: 1 copy, Documents: 2
    dir_pool.go_live()
    seen: list[check_mod.Problem] = []
    real = core.copy_to

    def copy_to(*a: object, **kw: object) -> object:  # the mount's lock is free here: another thread's check runs now
        seen.extend(check_mod.check(dir_pool, repair=False))
        return real(*a, **kw)

    monkeypatch.setattr(core, "copy_to", copy_to)
    dir_pool.move(dir_pool.stat("Videos").id, "v.bin", dir_pool.stat("Documents").id, "v.bin", noreplace=False)
    dir_pool.copy_moved_files()  # what the mount does every second
    assert len(dir_pool.cat.replicas(dir_pool.stat("Documents/v.bin").id)) == 2  # the copy was made
    assert [p.line() for p in seen if p.check == "no_orphan_temps"] == []


def test_a_file_changed_while_its_new_copy_is_made_keeps_its_copy_good(dir_pool: Pool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The mount copies a file's data with its lock let go (`unlocked_io`): a change made
    meanwhile (a truncate here) is no sign of a bad copy, and the new copy is made again
    after it. Found by a stress test: the source was marked bad (its only copy: the next
    write through the mount got EIO)."""
    dir_pool.write_bytes("Videos/v.bin", b"V" * 100_000)  # Videos: 1 copy, Documents: 2
    dir_pool.go_live()
    node = dir_pool.stat("Videos/v.bin")
    real = core.copy_to

    def copy_to(*a: object, **kw: object) -> object:  # another thread's truncate(2) comes now
        monkeypatch.undo()
        dir_pool.truncate_file(node.id, 10)
        return real(*a, **kw)

    monkeypatch.setattr(core, "copy_to", copy_to)
    dir_pool.move(dir_pool.stat("Videos").id, "v.bin", dir_pool.stat("Documents").id, "v.bin", noreplace=False)
    dir_pool.copy_moved_files()  # what the mount does every second
    assert [r.state for r in dir_pool.cat.replicas(node.id)] == ["ok"]
    assert dir_pool.read_bytes("Documents/v.bin") == b"V" * 10
    dir_pool.copy_moved_files()  # a second later
    assert [r.state for r in dir_pool.cat.replicas(node.id)] == ["ok", "ok"]
    assert_clean(dir_pool)


@pytest.mark.parametrize("change", ["delete", "truncate"])
def test_a_change_of_copies_while_mounted_goes_on_past_a_file_changed_during_its_copy(
        dir_pool: Pool, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    """`folder set` while mounted: a file deleted while its new copy is made is passed over,
    one changed then waits for the copy thread, and the folder's other files get their copies.
    Found by a stress test: the command failed ("No such file or folder in the pool: #N") and
    left the rest short."""
    dir_pool.write_bytes("Videos/big.bin", b"B" * 100_000)  # Videos: 1 copy
    for name in ("a", "b", "c"):
        dir_pool.write_bytes(f"Videos/{name}.txt", name.encode())
    dir_pool.go_live()
    big = dir_pool.stat("Videos/big.bin")
    real = core.copy_to

    def copy_to(src: BinaryIO, *a: object, **kw: object) -> object:
        if os.fstat(src.fileno()).st_size == big.size:  # another request comes while big.bin is copied
            monkeypatch.undo()
            if change == "delete":
                dir_pool.delete("Videos/big.bin")
            else:
                dir_pool.truncate_file(big.id, 10)
        return real(src, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(core, "copy_to", copy_to)
    ops = PoolOperations(dir_pool)
    ops.session = SimpleNamespace(done=threading.Event(), mountpoint="/mnt")  # type: ignore[assignment]
    done = answer(dir_pool, ops, {"op": "set_copies", "folder": "Videos", "copies": 2})
    assert (done["short"], done["waiting"]) == ([], 0 if change == "delete" else 1)
    for name in ("a", "b", "c"):
        assert len(dir_pool.cat.replicas(dir_pool.stat(f"Videos/{name}.txt").id)) == 2
    dir_pool.copy_moved_files()  # the mount's copy thread, a second later
    assert_clean(dir_pool)


def test_check_while_mounted_leaves_out_a_file_open_for_writing_whose_copies_wait(dir_pool: Pool) -> None:
    """A folder's copies raised while one of its files is open for writing: the mount gives it
    its copy at release (`_reconcile_at_release`). Files open for writing are left out."""
    dir_pool.write_bytes("Videos/v.bin", b"V")
    dir_pool.go_live()
    node = dir_pool.stat("Videos/v.bin")
    f = dir_pool.open_file(node.id, write=True)
    _, _, files = dir_pool.change_copies("Videos", 2)
    assert [dir_pool.reconcile_unless_open(i) for i in files] == [None]  # waits for the release
    assert [p.line() for p in check_mod.check(dir_pool)] == []
    dir_pool.releasing(f, closing=True)
    dir_pool.release_file(f, f.finish())
    assert len(dir_pool.cat.replicas(node.id)) == 2


# While mounted, the lock is let go between files: the mount's changes come in between.

def test_a_stray_hard_link_of_a_file_renamed_during_the_check(dir_pool: Pool, dir_drives: list[Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorded copies by inode, filled at the first stray hard link, go stale when the
    mount renames a file between strays: the next stray must still become a name of it, not a
    file of its own sharing its copy."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.write_bytes("Documents/b.txt", b"B")
    drive = next(d for d in dir_drives if len({*copies_on_disk([d], "Documents/a.txt"),
                                               *copies_on_disk([d], "Documents/b.txt")}) == 2)
    docs = drive / "HomePool/Documents"
    os.link(docs / "b.txt", docs / "0.txt")  # walked first: fills the cache
    os.link(docs / "a.txt", docs / "s.txt")  # ln on the drive, behind the pool's back
    real = Pool.adopt_name

    def adopt_then_mount_renames(self: Pool, d: Drive, path: str, inodes: dict[int, str]) -> str | None:
        out = real(self, d, path, inodes)
        if path == "Documents/0.txt":  # the lock is let go here: the mount serves `mv a.txt c.txt`
            self.rename("Documents/a.txt", "Documents/c.txt")
        return out

    monkeypatch.setattr(Pool, "adopt_name", adopt_then_mount_renames)
    lines = [p.line() for p in check(dir_pool, repair=True)]
    assert os.path.samefile(docs / "s.txt", docs / "c.txt")  # one inode on the drive...
    assert dir_pool.lookup("Documents/s.txt").is_link, lines  # ...so one file in the pool


def test_the_kernel_hears_of_a_repaired_file_renamed_before_the_check_ends(
        dir_pool: Pool, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel is told of a repair by the ids noted when it is made: a file whose content a
    repair changed, renamed through the mount before the check ends, is still forgotten."""
    dir_pool.add_folder("Misc", 1)
    dir_pool.write_bytes("Misc/a.txt", b"A")
    node = dir_pool.stat("Misc/a.txt")
    (copy,) = copies_on_disk(dir_drives, "Misc/a.txt")
    copy.write_bytes(b"edited on the drive")  # the only copy: its content becomes the file's
    real = check_mod.check_names_linked

    def mount_renames_meanwhile(pool: Pool, *a: object, **k: object) -> list[check_mod.Problem]:
        pool.rename("Misc/a.txt", "Misc/b.txt")  # served between files (after a.txt's repair)
        return real(pool, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(check_mod, "check_names_linked", mount_renames_meanwhile)
    told: list[tuple] = []
    ops = PoolOperations(dir_pool)
    ops.session = SimpleNamespace(done=threading.Event(), mountpoint="/mnt",
                                  forget_entry=lambda parent, name: told.append(("entry", parent, name)),
                                  forget_inode=lambda ino: told.append(("inode", ino)))
    problems = answer(dir_pool, ops, {"op": "check", "repair": True})["problems"]
    assert any("took its new content" in p["detail"] for p in problems), problems
    assert ("inode", node.id) in told, told


def test_a_walked_file_replaced_by_a_symlink_is_not_taken_in(dir_pool: Pool, dir_drives: list[Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A file made through the mount after the stray check's snapshot and replaced by a symlink
    (ln -sf) after the walk listed it is no stray: taken in, the drive's symlink would have been
    followed out of the pool and copied to every drive."""
    outside = tmp_path / "secret"
    outside.write_bytes(b"outside the pool")
    dir_pool.add_folder("All", 3)  # a copy on every drive
    real = check_mod.scan_tree
    done = []

    def walk_while_mount_serves(root: Path) -> list[tuple[str, bool]]:
        if not done:
            done.append(1)
            dir_pool.write_bytes("All/x", b"x")  # created after the snapshot of known copies
            out = list(real(root))
            dir_pool.delete("All/x")  # then `ln -sf .../secret x` through the mount
            parent = dir_pool.stat("All")
            dir_pool.make_node(parent.id, "x", stat.S_IFLNK | 0o777, 0, 0, target=str(outside))
            return out
        return list(real(root))

    monkeypatch.setattr(check_mod, "scan_tree", walk_while_mount_serves)
    lines = [p.line() for p in check(dir_pool, repair=True)]
    assert not [line for line in lines if "All/x" in line], lines
    assert all(os.path.islink(d / "HomePool/All/x") for d in dir_drives)


def test_a_walked_file_replaced_by_a_fifo_does_not_block_the_check(dir_pool: Pool, dir_drives: list[Path],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    dir_pool.add_folder("All", 3)
    real = check_mod.scan_tree
    done = []

    def walk_while_mount_serves(root: Path) -> list[tuple[str, bool]]:
        if not done:
            done.append(1)
            dir_pool.write_bytes("All/p", b"x")
            out = list(real(root))
            dir_pool.delete("All/p")  # then `mkfifo p` through the mount
            dir_pool.make_node(dir_pool.stat("All").id, "p", stat.S_IFIFO | 0o644, 0, 0)
            return out
        return list(real(root))

    monkeypatch.setattr(check_mod, "scan_tree", walk_while_mount_serves)
    t = threading.Thread(target=check, args=(dir_pool,), kwargs={"repair": True}, daemon=True)
    t.start()
    t.join(5)
    blocked = t.is_alive()
    if blocked:  # let it go: a writer opens the FIFO
        os.close(os.open(dir_drives[0] / "HomePool/All/p", os.O_WRONLY | os.O_NONBLOCK))
        t.join(5)
    assert not blocked, "check --repair blocked in hash_file on a FIFO (under the mount's lock)"


@pytest.mark.expect_errors  # its tree cannot be read
def test_copies_of_a_drive_whose_tree_was_deleted_are_missing(dir_pool: Pool, dir_drives: list[Path]) -> None:
    """The drive is there (its identity file too), its HomePool/ removed with rm -rf: its copies
    are lost (only a drive that went away keeps its copies' records)."""
    dir_pool.add_folder("All", 3)
    dir_pool.write_bytes("All/a.txt", b"A")
    shutil.rmtree(dir_drives[0] / "HomePool")
    lines = [p.line() for p in check(dir_pool, repair=True)]
    assert any("All/a.txt" in line and "missing" in line for line in lines), lines


def test_stray_hard_links_to_files_outside_the_pool_look_at_the_drive_once(
        dir_pool: Pool, dir_drives: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Strays hard-linked to files outside HomePool/ (cp -al, backups): the recorded copies are
    looked up by inode once, not again for each stray."""
    dir_pool.add_folder("All", 3)
    for i in range(3):
        dir_pool.write_bytes(f"All/k{i}", b"k")
    outside = tmp_path / "outside"
    outside.mkdir()
    for i in range(5):
        (outside / f"s{i}").write_bytes(b"s%d" % i)
        os.link(outside / f"s{i}", dir_drives[0] / f"HomePool/All/s{i}")
    calls: list[int] = []
    real = dir_pool.cat.replicas_on
    monkeypatch.setattr(dir_pool.cat, "replicas_on", lambda d: calls.append(d) or real(d))
    check(dir_pool, repair=True)
    d0 = dir_pool.drives()[0].id
    assert calls.count(d0) <= 2, f"replicas_on(drive) called {calls.count(d0)} times for 5 strays"


def test_a_copy_replaced_by_a_symlink_is_missing_not_followed(dir_pool: Pool, dir_drives: list[Path],
                                                              tmp_path: Path) -> None:
    """A symlink in a copy's place: the copy is missing (made again), and the symlink, which
    leads out of the pool, is neither followed nor taken in."""
    dir_pool.add_folder("All", 3)
    dir_pool.write_bytes("All/a.txt", b"A")
    outside = tmp_path / "secret"
    outside.write_bytes(b"outside the pool")
    copy = dir_drives[0] / "HomePool/All/a.txt"
    copy.unlink()
    copy.symlink_to(outside)
    lines = [p.line() for p in check(dir_pool, repair=True)]
    assert any("All/a.txt: copy on" in line and "something else" in line for line in lines), lines
    assert [c.read_bytes() for c in copies_on_disk(dir_drives, "All/a.txt")] == [b"A", b"A", b"A"]
    assert_clean(dir_pool)


@pytest.mark.expect_errors  # a symlinked folder is kept aside
@pytest.mark.parametrize("where", ["the copy", "its folder"])
def test_an_only_copy_behind_a_symlink_is_not_followed_out_of_the_pool(dir_pool: Pool, dir_drives: list[Path],
                                                                       tmp_path: Path, where: str) -> None:
    """The only copy, or its folder, replaced by a symlink to something outside the pool: the
    copy is missing, and the file does not take on what is outside."""
    dir_pool.add_folder("Misc", 1)
    dir_pool.write_bytes("Misc/a.txt", b"A")
    (copy,) = copies_on_disk(dir_drives, "Misc/a.txt")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"outside the pool")
    copy.unlink()
    if where == "the copy":
        copy.symlink_to(outside / "a.txt")
    else:
        copy.parent.rmdir()
        copy.parent.symlink_to(outside)
    lines = [p.line() for p in check(dir_pool, repair=True)]
    why = "is missing: something else" if where == "the copy" else "is missing: folder Misc there is a symlink"
    assert any("Misc/a.txt: copy on" in line and why in line for line in lines), lines
    with pytest.raises(NoReadableCopy):  # its only copy is gone
        dir_pool.read_bytes("Misc/a.txt")
    assert (outside / "a.txt").read_bytes() == b"outside the pool"


def test_a_repaired_link_count_of_the_root_reaches_the_kernel(dir_pool: Pool) -> None:
    dir_pool.add_folder("Misc", 1)
    root = dir_pool.lookup("")
    with dir_pool.cat.transaction():
        dir_pool.cat.set_links(root.id, root.links + 5)
    told: list[tuple[object, ...]] = []
    ops = PoolOperations(dir_pool)
    ops.session = SimpleNamespace(done=threading.Event(), mountpoint="/mnt",
                                  forget_entry=lambda parent, name: told.append(("entry", parent, name)),
                                  forget_inode=lambda ino: told.append(("inode", ino)))
    problems = answer(dir_pool, ops, {"op": "check", "repair": True})["problems"]
    assert any(p["check"] == "link_counts" for p in problems), problems
    assert ("inode", root.id) in told, (problems, told)


def test_a_folder_in_a_copys_place_is_kept_aside_and_the_copy_made_again(dir_pool: Pool,
                                                                          dir_drives: list[Path]) -> None:
    dir_pool.add_folder("All", 3)
    dir_pool.write_bytes("All/a.txt", b"A")
    copy = dir_drives[0] / "HomePool/All/a.txt"
    copy.unlink()
    copy.mkdir()
    (copy / "inner").write_bytes(b"x")
    lines = [p.line() for p in check(dir_pool, repair=True)]
    assert any("copy on" in line and "a folder is in its place; kept the folder as" in line for line in lines), lines
    check(dir_pool, repair=True)  # the folder kept aside is taken in, with what is in it
    assert copy.read_bytes() == b"A"
    assert any(dir_pool.read_bytes(p) == b"x" for p, n in dir_pool.walk("All") if n.is_file and p.endswith("/inner"))
    assert_clean(dir_pool)


def test_a_hard_link_of_a_stray_kept_aside_is_a_name_of_it(dir_pool: Pool, dir_drives: list[Path]) -> None:
    """a.txt on a drive differs from the pool's (kept aside as a file of its own); b.txt there is
    a hard link of it: another name of that file, not a second file sharing its data."""
    dir_pool.add_folder("Misc", 1)
    dir_pool.write_bytes("Misc/a.txt", b"A")
    (copy,) = copies_on_disk(dir_drives, "Misc/a.txt")
    other = next(d for d in dir_drives if not str(copy).startswith(str(d) + "/"))
    (other / "HomePool/Misc").mkdir(parents=True, exist_ok=True)
    (other / "HomePool/Misc/a.txt").write_bytes(b"edited elsewhere")
    os.link(other / "HomePool/Misc/a.txt", other / "HomePool/Misc/b.txt")
    lines = [p.line() for p in check(dir_pool, repair=True)]
    b = dir_pool.lookup("Misc/b.txt")
    assert b is not None and b.is_link, lines
    assert dir_pool.read_bytes("Misc/b.txt") == b"edited elsewhere" and dir_pool.read_bytes("Misc/a.txt") == b"A"
    assert_clean(dir_pool)


@pytest.mark.expect_errors  # the symlink is kept aside
@pytest.mark.parametrize("to", ["outside the pool", "another folder"])
def test_a_folder_that_became_a_symlink_is_kept_aside_and_never_written_through(
        dir_pool: Pool, dir_drives: list[Path], tmp_path: Path, to: str) -> None:
    """A drive's folder replaced by a symlink (to somewhere outside the pool, or to another
    folder on the drive): its copies are missing; repair keeps the symlink aside and makes the
    copies again in a real folder, never writing through it."""
    dir_pool.add_folder("All", 3)
    dir_pool.add_folder("Other", 3)
    dir_pool.write_bytes("All/a.txt", b"A")
    dir_pool.write_bytes("Other/a.txt", b"other")
    target = tmp_path / "elsewhere" if to == "outside the pool" else dir_drives[0] / "HomePool/Other"
    target.mkdir(exist_ok=True)
    if to == "outside the pool":
        (target / "a.txt").write_bytes(b"outside the pool")
    folder = dir_drives[0] / "HomePool/All"
    shutil.rmtree(folder)
    folder.symlink_to(target)
    lines = [p.line() for p in check(dir_pool, repair=True)]
    assert any("folder All there is a symlink; kept the symlink as" in line for line in lines), lines
    assert (target / "a.txt").read_bytes() == (b"outside the pool" if to == "outside the pool" else b"other")
    assert not folder.is_symlink() and (folder / "a.txt").read_bytes() == b"A"
    assert dir_pool.read_bytes("Other/a.txt") == b"other"
    assert_clean(dir_pool)


def test_a_folder_kept_aside_at_a_name_a_dangling_symlink_has(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.add_folder("All", 3)
    dir_pool.write_bytes("All/a.txt", b"A")
    copy = dir_drives[0] / "HomePool/All/a.txt"
    copy.unlink()
    copy.mkdir()
    (copy.parent / "a (conflict drive1).txt").symlink_to("/nonexistent")
    lines = [p.line() for p in check(dir_pool, repair=True)]
    assert copy.read_bytes() == b"A", lines
    assert (copy.parent / "a (conflict drive1).txt").is_symlink()  # left as it was


def test_copies_made_outside_the_lock_keep_what_changed_meanwhile(dir_pool: Pool, dir_drives: list[Path],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A new copy is made with the mount's lock let go. A chmod meanwhile (a file made
    private) is not undone by the copy's switch-in, and a folder's copies lowered meanwhile
    get no extra copy; the extended attributes come along with the data."""
    dir_pool.write_bytes("Videos/v.bin", b"V" * 1000, mode=0o644)
    node = dir_pool.stat("Videos/v.bin")
    dir_pool.set_xattr(node.id, b"user.tag", b"holiday")
    dir_pool.go_live()
    real = core.copy_to
    during: list[Callable[[], object]] = []

    def copy_to(*a: object, **kw: object) -> object:  # the lock is let go here: another request runs
        while during:
            during.pop()()
        return real(*a, **kw)

    monkeypatch.setattr(core, "copy_to", copy_to)
    during.append(lambda: dir_pool.set_attrs(node.id, mode=0o600))
    dir_pool.change_copies("Videos", 2)
    assert dir_pool.reconcile_unless_open(node.id) == 1  # changed meanwhile: not switched in
    assert dir_pool.reconcile_unless_open(node.id) == 2  # the next round makes it
    assert stat.S_IMODE(dir_pool.stat("Videos/v.bin").mode) == 0o600
    copies = copies_on_disk(dir_drives, "Videos/v.bin")
    assert [stat.S_IMODE(c.stat().st_mode) for c in copies] == [0o600, 0o600]
    assert [os.getxattr(c, "user.tag") for c in copies] == [b"holiday", b"holiday"]
    dir_pool.change_copies("Videos", 3)
    during.append(lambda: dir_pool.change_copies("Videos", 2))  # a second `folder set` meanwhile
    assert dir_pool.reconcile_unless_open(node.id) == 2
    assert len(copies_on_disk(dir_drives, "Videos/v.bin")) == 2
    assert_clean(dir_pool)


def test_check_removes_the_copies_a_cut_short_change_left(dir_pool: Pool, dir_drives: list[Path]) -> None:
    """A folder's copies lowered, and the mount stopped (or killed) before it got to every
    file: the extra copies are found and removed."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    folder, _ = dir_pool.folder("Documents")
    with dir_pool.cat.transaction():  # what `change_copies` commits before it goes file by file
        dir_pool.cat.set_folder_copies(folder.id, 1)
    (p,) = check(dir_pool)
    assert p.line() == "[found] copies_met: Documents/a.txt: has 2 copies, its folder wants 1"
    (p,) = check(dir_pool, repair=True)
    assert p.fixed and len(copies_on_disk(dir_drives, "Documents/a.txt")) == 1
    assert_clean(dir_pool)


def test_a_stray_is_hashed_without_the_lock(dir_pool: Pool, dir_drives: list[Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`check --repair` while mounted takes a stray file in: its hash (a big file takes a
    while) is taken with the mount's lock let go, or every request would wait for it."""
    stray = dir_drives[0] / "HomePool/Videos/by-hand.mkv"
    stray.write_bytes(b"s" * 100_000)
    held: list[bool] = [False]
    hashed_held: list[str] = []

    @contextmanager
    def hold() -> Iterator[None]:
        held[0] = True
        try:
            yield
        finally:
            held[0] = False

    real = drives_mod.hash_file

    def hash_file(path: object) -> str:
        if held[0]:
            hashed_held.append(str(path))
        return real(path)  # type: ignore[arg-type]

    monkeypatch.setattr(drives_mod, "hash_file", hash_file)  # every hash of a copy (`Drive.hash`)
    (p,) = check(dir_pool, repair=True, hold=hold)
    assert p.check == "no_stray_files" and p.fixed
    assert hashed_held == []
    assert dir_pool.read_bytes("Videos/by-hand.mkv") == b"s" * 100_000


def test_repair_makes_the_copy_a_missing_drive_held(dir_pool: Pool, dir_drives: list[Path]) -> None:
    """A drive is gone: its copies do not count, and `--repair` makes them again elsewhere."""
    dir_pool.write_bytes("Photos/a.jpg", b"photo")  # Photos: 2 copies, on 2 of the 3 drives
    holder = copies_on_disk(dir_drives, "Photos/a.jpg")[0].parents[2]
    os.rename(holder / ".homepool", holder / ".homepool-unplugged")  # the drive is gone
    try:
        fixed = [p.line() for p in check(dir_pool, repair=True) if p.check == "copies_met"]
        assert fixed == ["[fixed] copies_met: Photos/a.jpg: has 1 of 2 copies; now 2"]
        others = [d for d in dir_drives if d != holder]
        assert len(copies_on_disk(others, "Photos/a.jpg")) == 2
    finally:
        os.rename(holder / ".homepool-unplugged", holder / ".homepool")


def test_a_file_opened_while_its_copy_is_made_gets_it_at_its_close(dir_pool: Pool, dir_drives: list[Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    dir_pool.write_bytes("Videos/v.bin", b"V" * 1000)
    node = dir_pool.stat("Videos/v.bin")
    dir_pool.go_live()
    real = core.copy_to
    opened = []

    def copy_to(*a: object, **kw: object) -> object:  # the lock is let go here: a program opens the file
        if not opened:
            opened.append(dir_pool.open_file(node.id, write=False))
        return real(*a, **kw)

    monkeypatch.setattr(core, "copy_to", copy_to)
    dir_pool.change_copies("Videos", 2)
    assert dir_pool.reconcile_unless_open(node.id) == 1  # not switched in: the file is open now
    (f,) = opened
    dir_pool.releasing(f, closing=True)
    dir_pool.release_file(f, f.finish())  # its last close: the copy is made then
    assert len(copies_on_disk(dir_drives, "Videos/v.bin")) == 2
    assert_clean(dir_pool)


def test_a_copys_owner_and_mode_changed_on_the_drive_are_given_back(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/tax.pdf", b"private", mode=0o600)
    copy = copies_on_disk(dir_drives, "Documents/tax.pdf")[0]
    os.chown(copy, 1234, 1234)
    os.chmod(copy, 0o644)
    (problem,) = check(dir_pool)
    assert (problem.check, problem.path) == ("replicas_match", "Documents/tax.pdf")
    assert "mode 0644 and owner 1234:1234, the pool shows 0600 and 0:0" in problem.detail
    repair_then_clean(dir_pool)
    assert [(st.st_mode & 0o7777, st.st_uid) for st in map(os.lstat, copies_on_disk(dir_drives, "Documents/tax.pdf"))] \
        == [(0o600, 0), (0o600, 0)]


def test_copies_with_other_extended_attributes_are_made_like_the_one_shown(dir_pool: Pool,
                                                                           dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"a")
    node = dir_pool.lookup("Documents/a.txt")
    assert node is not None
    copies = copies_on_disk(dir_drives, "Documents/a.txt")
    for c in copies:
        os.setxattr(c, "user.tag", b"kept")
    shown = dir_pool.copy_xattrs(node.id)
    # Changed behind the pool's back on one copy: a value, and one attribute more.
    os.setxattr(copies[1], "user.tag", b"changed")
    os.setxattr(copies[1], "user.extra", b"1")
    problems = check(dir_pool)
    assert problems and all(p.check == "replicas_match" for p in problems)
    assert any("extended attributes user.extra, user.tag" in p.detail for p in problems)
    repair_then_clean(dir_pool)
    now = dir_pool.copy_xattrs(node.id)
    views = [{n: os.getxattr(c, n) for n in os.listxattr(c)} for c in copies]
    assert views[0] == views[1] == {os.fsdecode(n): v for n, v in now.items()}
    assert now in (shown, {b"user.tag": b"changed", b"user.extra": b"1"})  # as the copy the pool read them from


def test_a_folder_made_on_a_drive_later_has_the_pools_owner_and_mode(dir_pool: Pool, dir_drives: list[Path],
                                                                    tmp_path: Path) -> None:
    dir_pool.add_folder("Private", copies=1, mode=0o700, uid=1234, gid=1234)
    dir_pool.mkdir("Private/sub", mode=0o750)
    dir_pool.write_bytes("Private/sub/a", b"a")
    new = tmp_path / "drive4"
    new.mkdir()
    dir_pool.add_drive(new, label="drive4", max_size=512 * 1024 * 1024, allow_shared_device=True)
    dir_pool.set_copies("Private", 2)  # the second copy goes to the new drive, which has the most room
    assert (new / "HomePool/Private/sub/a").read_bytes() == b"a"
    top, sub = os.lstat(new / "HomePool/Private"), os.lstat(new / "HomePool/Private/sub")
    assert (top.st_mode & 0o7777, top.st_uid, top.st_gid) == (0o700, 1234, 1234)
    assert (sub.st_mode & 0o7777, sub.st_uid) == (0o750, 0)
    assert_clean(dir_pool)


def test_a_folders_owner_mode_and_xattrs_changed_on_a_drive_are_given_back(dir_pool: Pool,
                                                                           dir_drives: list[Path]) -> None:
    dir_pool.mkdir("Documents/shared", mode=0o755)
    on = [d / "HomePool/Documents/shared" for d in dir_drives]
    assert all(p.is_dir() for p in on)  # (a folder is made on every drive)
    os.chmod(on[1], 0o777)
    os.setxattr(on[2], "user.note", b"added on the drive")
    problems = check(dir_pool)
    assert {(p.check, p.path) for p in problems} == {("folders_match", "Documents/shared")}
    assert len(problems) == 2
    repair_then_clean(dir_pool)
    assert [os.lstat(p).st_mode & 0o7777 for p in on] == [0o755] * 3
    assert [os.listxattr(p) for p in on] == [[]] * 3


@pytest.mark.expect_errors  # (what was in the symlink's place is kept aside)
def test_a_symlink_or_fifo_lost_or_changed_on_a_drive_is_made_again(dir_pool: Pool, dir_drives: list[Path]) -> None:
    docs = dir_pool.stat("Documents").id
    dir_pool.make_node(docs, "link", stat.S_IFLNK | 0o777, 0, 0, target="../elsewhere/x")
    dir_pool.make_node(docs, "pipe", stat.S_IFIFO | 0o640, 0, 0)
    link, pipe = ([d / "HomePool/Documents" / name for d in dir_drives] for name in ("link", "pipe"))
    assert [os.readlink(p) for p in link] == ["../elsewhere/x"] * 3  # on every drive
    assert [stat.S_IMODE(os.lstat(p).st_mode) for p in pipe] == [0o640] * 3
    assert_clean(dir_pool)
    link[0].unlink()
    link[1].unlink()
    link[1].symlink_to("/etc/passwd")  # another target: never followed, kept aside
    os.chmod(pipe[2], 0o666)
    problems = check(dir_pool)
    assert sorted(p.line() for p in problems) == [
        f"[found] entries_match: Documents/link: symlink is missing on 'drive1' ({dir_drives[0]})",
        f"[found] entries_match: Documents/link: symlink is something else there on 'drive2' ({dir_drives[1]})",
        f"[found] entries_match: Documents/pipe: special file on 'drive3' ({dir_drives[2]}) has mode 0666 and "
        "owner 0:0, the pool shows 0640 and 0:0"]
    repair_then_clean(dir_pool)
    assert [os.readlink(p) for p in link] == ["../elsewhere/x"] * 3
    assert [stat.S_IMODE(os.lstat(p).st_mode) for p in pipe] == [0o640] * 3
    aside = [n.name for n in dir_pool.listdir("Documents") if "conflict" in n.name]
    assert len(aside) == 1 and os.readlink(dir_drives[1] / "HomePool/Documents" / aside[0]) == "/etc/passwd"


def test_a_symlink_made_on_a_drive_is_taken_in_and_put_on_the_others(dir_pool: Pool, dir_drives: list[Path]) -> None:
    (dir_drives[0] / "HomePool/Music/links").mkdir(parents=True)
    os.symlink("../../Photos/cover.jpg", dir_drives[0] / "HomePool/Music/links/cover")
    os.mkfifo(dir_drives[0] / "HomePool/Music/links/fifo", 0o600)
    assert {(p.check, p.path) for p in check(dir_pool)} == {("no_stray_files", "Music/links"),
                                                           ("no_stray_files", "Music/links/cover"),
                                                           ("no_stray_files", "Music/links/fifo")}
    repair_then_clean(dir_pool)
    node = dir_pool.lookup("Music/links/cover")
    assert node is not None and node.kind == "symlink" and node.target == "../../Photos/cover.jpg"
    fifo = dir_pool.lookup("Music/links/fifo")
    assert fifo is not None and stat.S_ISFIFO(fifo.mode) and stat.S_IMODE(fifo.mode) == 0o600
    assert [os.readlink(d / "HomePool/Music/links/cover") for d in dir_drives] == ["../../Photos/cover.jpg"] * 3
    assert all(stat.S_ISFIFO(os.lstat(d / "HomePool/Music/links/fifo").st_mode) for d in dir_drives)


def test_a_drive_added_later_gets_the_symlinks(dir_pool: Pool, dir_drives: list[Path], tmp_path: Path) -> None:
    dir_pool.mkdir("Documents/deep")
    dir_pool.make_node(dir_pool.stat("Documents/deep").id, "link", stat.S_IFLNK | 0o777, 0, 0, target="x")
    new = tmp_path / "drive4"
    new.mkdir()
    dir_pool.add_drive(new, label="drive4", allow_shared_device=True)
    assert os.readlink(new / "HomePool/Documents/deep/link") == "x"
    assert_clean(dir_pool)


def test_owners_are_not_compared_on_a_drive_that_keeps_none(dir_pool: Pool, dir_drives: list[Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A FAT or NTFS drive shows the owner and mode its mount options give every file (no
    mkfs.vfat here: the filesystem type is what the check is told)."""
    real = check_mod.mount_of
    monkeypatch.setattr(check_mod, "mount_of",
                        lambda p: ("/fat", "vfat", "/dev/sdz1") if p == dir_drives[0] else real(p))
    check_mod._keeps_owners.cache_clear()
    dir_pool.set_copies("Music", 3)  # (a copy on every drive, the "FAT" one too)
    dir_pool.write_bytes("Music/a.flac", b"a", mode=0o644)
    dir_pool.write_bytes("Music/b.flac", b"b", mode=0o644)
    for d in dir_drives:
        for copy in (d / "HomePool/Music").glob("*.flac"):
            os.chmod(copy, 0o755)  # as a FAT drive mounted with fmask=0022 shows every file
    assert len(copies_on_disk(dir_drives, "Music/a.flac")) == 3
    flagged = {p.detail.split(" on ")[1].split(" has ")[0] for p in check(dir_pool)}
    assert len(flagged) == 2 and not any(str(dir_drives[0]) in f for f in flagged)
    check_mod._keeps_owners.cache_clear()


def test_a_symlinks_extended_attributes_are_shown_and_checked(dir_pool: Pool, dir_drives: list[Path]) -> None:
    """A symlink is on every drive, as a folder is: its xattrs are read from the first drive
    with it (Linux allows only trusted.* on a symlink, and only to root)."""
    docs = dir_pool.stat("Documents").id
    link = dir_pool.make_node(docs, "link", stat.S_IFLNK | 0o777, 0, 0, target="x")
    dir_pool.set_xattr(link.id, b"trusted.tag", b"v")
    assert dir_pool.copy_xattrs(link.id) == {b"trusted.tag": b"v"}
    os.setxattr(dir_drives[2] / "HomePool/Documents/link", "trusted.tag", b"changed", follow_symlinks=False)
    (problem,) = check(dir_pool)
    assert problem.check == "entries_match" and "extended attributes trusted.tag" in problem.detail
    repair_then_clean(dir_pool)
    assert os.getxattr(dir_drives[2] / "HomePool/Documents/link", "trusted.tag", follow_symlinks=False) == b"v"

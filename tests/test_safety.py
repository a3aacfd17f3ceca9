"""Regression tests for data-safety findings of the first review (each names the failure it
guards against). Directory drives; the failures are provoked by hand."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from homepool import importer
from homepool.catalog import CURRENT_REV, ROOT_ID
from homepool.check import check
from homepool.cli import main
from homepool.errors import BadDrive
from homepool.pool import Pool
from homepool.recover import recover

from .helpers import as_older_catalog, assert_clean, copies_on_disk, listed_a_page_at_a_time, mount_dies


def break_tmp(drive: Path) -> Path:
    """Make every new temp file on `drive` fail to open (like a drive gone bad)."""
    tmp = drive / ".homepool" / "tmp"
    shutil.rmtree(tmp)
    tmp.write_text("not a directory")
    return tmp


def mend_tmp(tmp: Path) -> None:
    tmp.unlink()
    tmp.mkdir()


def unplug(drive: Path) -> None:
    os.rename(drive / ".homepool", drive / ".homepool-unplugged")


def plug(drive: Path) -> None:
    os.rename(drive / ".homepool-unplugged", drive / ".homepool")


def crash_after_journal(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*a: object, **k: object) -> None:
        raise KeyboardInterrupt  # stands in for kill -9 right after the journal commit

    monkeypatch.setattr(pool, "_apply_write", crash)
    monkeypatch.setattr(pool, "_apply_drop", crash)


def test_a_crashed_write_is_finished_before_newer_changes(state_dir: Path, dir_pool: Pool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    dir_pool.write_bytes("Documents/report.txt", b"v1")
    crash_after_journal(dir_pool, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        dir_pool.write_bytes("Documents/report.txt", b"v2-crashed")
    monkeypatch.undo()
    dir_pool.close()
    with Pool.open(state_dir) as pool:  # the next command finishes the crashed write first
        assert pool.cat.journal() == []
        pool.write_bytes("Documents/report.txt", b"v3-latest")
        check(pool, repair=True)
        assert pool.read_bytes("Documents/report.txt") == b"v3-latest"
        assert_clean(pool)


@pytest.mark.expect_errors
def test_fewer_copies_never_removes_the_only_real_one(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Photos/only.jpg", b"precious")
    a, b = copies_on_disk(dir_drives, "Photos/only.jpg")
    b.unlink()  # gone behind the pool's back; the catalog still lists it
    dir_pool.set_copies("Photos", 1)
    assert dir_pool.read_bytes("Photos/only.jpg") == b"precious"
    assert copies_on_disk(dir_drives, "Photos/only.jpg") == [a]


@pytest.mark.expect_errors
def test_an_overwrite_failing_on_an_old_copys_drive_never_serves_old_content(
        dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Photos/a.txt", b"OLD")
    holder = copies_on_disk(dir_drives, "Photos/a.txt")[0].parents[2]
    tmp = break_tmp(holder)
    dir_pool.write_bytes("Photos/a.txt", b"NEW")
    mend_tmp(tmp)
    assert dir_pool.read_bytes("Photos/a.txt") == b"NEW"
    assert all(state == "ok" for _, state in dir_pool.replicas("Photos/a.txt"))
    check(dir_pool, repair=True)  # the old content is kept aside, the second copy re-made
    assert_clean(dir_pool)
    assert dir_pool.read_bytes("Photos/a.txt") == b"NEW"
    assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Photos/a.txt")] == [b"NEW", b"NEW"]


@pytest.mark.expect_errors
def test_an_overwrite_whose_new_copy_is_lost_keeps_the_old_one(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Videos/v.mkv", b"old version")
    with dir_pool.batch() as b:
        staged = b.put("Videos/v.mkv", io.BytesIO(b"new version"), 11, 0o644, 1)
        for key, name in staged.targets.items():
            os.unlink(b.by_id[key].tmpdir / name)  # the drive loses it before the switch
    assert dir_pool.read_bytes("Videos/v.mkv") == b"old version"
    assert_clean(dir_pool)


@pytest.mark.expect_errors
def test_a_failing_target_does_not_mark_the_source_bad(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Videos/movie.mkv", b"movie")
    (src,) = copies_on_disk(dir_drives, "Videos/movie.mkv")
    broken = [break_tmp(d) for d in dir_drives if d != src.parents[2]]
    dir_pool.set_copies("Videos", 2)
    assert [s for _, s in dir_pool.replicas("Videos/movie.mkv")] == ["ok"]
    for t in broken:
        mend_tmp(t)
    check(dir_pool, repair=True)
    assert len(copies_on_disk(dir_drives, "Videos/movie.mkv")) == 2
    assert_clean(dir_pool)


@pytest.mark.expect_errors
def test_a_copy_wrongly_marked_bad_is_restored_by_check(dir_pool: Pool) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"fine")
    node = dir_pool.stat("Documents/a.txt")
    for drive, _ in dir_pool.replicas("Documents/a.txt"):
        dir_pool.mark_bad(node.id, drive.id)  # e.g. after "too many open files"
    assert {p.check for p in check(dir_pool)} == {"replicas_match", "copies_met"}
    check(dir_pool, repair=True)
    assert_clean(dir_pool)
    assert dir_pool.read_bytes("Documents/a.txt") == b"fine"


def test_deletes_and_renames_reach_a_drive_that_was_away(state_dir: Path, dir_pool: Pool,
                                                         dir_drives: list[Path]) -> None:
    dir_pool.makedirs("Photos/old")
    dir_pool.write_bytes("Photos/private.jpg", b"delete me")
    dir_pool.write_bytes("Photos/old/x.jpg", b"x")
    away = copies_on_disk(dir_drives, "Photos/private.jpg")[0].parents[2]
    unplug(away)
    dir_pool.delete("Photos/private.jpg")
    dir_pool.rename("Photos/old", "Photos/new")
    plug(away)
    dir_pool.close()
    with Pool.open(state_dir) as pool:
        check(pool, repair=True)
        assert pool.lookup("Photos/private.jpg") is None
        assert copies_on_disk(dir_drives, "Photos/private.jpg") == []
        assert not (away / "HomePool/Photos/old").exists()
        assert pool.read_bytes("Photos/new/x.jpg") == b"x"
        assert_clean(pool)


def test_a_subfolder_moved_to_the_top_becomes_a_folder_with_its_copies(dir_pool: Pool) -> None:
    dir_pool.makedirs("Photos/2010")
    dir_pool.write_bytes("Photos/2010/a.jpg", b"a")
    dir_pool.rename("Photos/2010", "Archive 2010")
    assert {f.name: f.copies for f in dir_pool.folder_infos()}["Archive 2010"] == 2
    dir_pool.write_bytes("Archive 2010/b.jpg", b"b")
    assert_clean(dir_pool)


@pytest.mark.expect_errors
def test_rename_and_delete_survive_a_read_only_drive(state_dir: Path, loop_drives) -> None:
    a, b = loop_drives(64, 64)
    with Pool.create(state_dir) as pool:
        pool.add_drive(a)
        pool.add_drive(b)
        pool.write_bytes("Photos/a.jpg", b"a")
        subprocess.run(["mount", "-o", "remount,ro", str(b)], check=True)
        try:
            pool.delete("Photos/a.jpg")  # no traceback; the journal is closed
            assert pool.cat.journal() == []
            assert pool.lookup("Photos/a.jpg") is None
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(b)], check=True)
    with Pool.open(state_dir) as pool:  # the step owed to b is made now
        assert not (b / "HomePool/Photos/a.jpg").exists()
        assert_clean(pool)


def test_recover_prefers_the_current_version_over_a_stale_drive(state_dir: Path, dir_pool: Pool,
                                                                 dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/thesis.txt", b"draft 1")
    stale = copies_on_disk(dir_drives, "Documents/thesis.txt")[0]
    kept = stale.read_bytes()
    dir_pool.write_bytes("Documents/thesis.txt", b"final version")
    stale.write_bytes(kept)  # a drive that was away still has the draft at the real name
    os.utime(stale, ns=(1, 1))
    dir_pool.close()
    shutil.rmtree(state_dir)
    recover(state_dir, dir_drives)
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/thesis.txt") == b"final version"


def test_recover_when_a_survivor_now_sits_where_a_dead_drive_was(state_dir: Path, dir_pool: Pool,
                                                                  dir_drives: list[Path], tmp_path: Path) -> None:
    d1, d2, _ = dir_drives
    dir_pool.write_bytes("Videos/a.bin", b"a")
    dir_pool.close()
    shutil.rmtree(state_dir)
    shutil.rmtree(d1)  # d1 died; d2 is mounted where d1 was
    os.rename(d2, d1)
    recover(state_dir, [d1])
    with Pool.open(state_dir) as pool:
        states = {d.label: d.row.state for d in pool.drives()}
        assert states == {"drive1": "missing", "drive2": "active", "drive3": "active"}  # drive3 never moved
        assert pool.read_bytes("Videos/a.bin") == b"a"


def test_adopting_a_folder_spelt_in_another_case(tmp_path: Path, dir_drives: list[Path]) -> None:
    mine, theirs = dir_drives[0], dir_drives[1]
    with Pool.create(tmp_path / "other", folders={"photos": 1}) as other:
        other.add_drive(theirs, allow_shared_device=True, max_size=64 << 20)
        other.write_bytes("photos/cat.jpg", b"meow")
    with Pool.create(tmp_path / "mine") as pool:
        pool.add_drive(mine, allow_shared_device=True, max_size=64 << 20)
        pool.add_drive(theirs, adopt=True, allow_shared_device=True)
        assert pool.read_bytes("Photos/cat.jpg") == b"meow"
        check(pool, repair=True)
        assert_clean(pool)


def test_unusable_names_on_a_drive_do_not_stop_check_or_recover(state_dir: Path, dir_pool: Pool,
                                                                 dir_drives: list[Path]) -> None:
    os.mkdir(dir_drives[0] / "HomePool" / "Backup: 2019")
    with open(os.path.join(os.fsencode(dir_drives[0] / "HomePool" / "Photos"), b"caf\xe9.jpg"), "wb") as f:
        f.write(b"latin-1 name")
    problems = check(dir_pool, repair=True)
    assert any("Backup: 2019" in p.path and not p.fixed for p in problems)
    dir_pool.close()
    shutil.rmtree(state_dir)
    recover(state_dir, dir_drives)


def test_labels_that_cannot_name_a_file_are_refused(dir_pool: Pool, tmp_path: Path) -> None:
    x = tmp_path / "x"
    x.mkdir()
    with pytest.raises(BadDrive, match="label"):
        dir_pool.add_drive(x, label="WD 1/2 TB", allow_shared_device=True)


def test_an_unreadable_source_file_is_reported_and_the_rest_imported(
        dir_pool: Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.txt", "b-private.txt", "c.txt"):
        (src / name).write_text(name)
    real_open = open

    def fake_open(p, *a, **k):  # root reads everything: stand in for another user's 0600 file
        if str(p).endswith("b-private.txt"):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(p, *a, **k)

    monkeypatch.setattr(importer, "open", fake_open, raising=False)
    result = importer.run(dir_pool, src, "Documents/")
    assert result.imported == 2 and "b-private.txt" in result.failed[0]
    assert sorted(p for p, _ in dir_pool.walk("Documents")) == ["Documents/a.txt", "Documents/c.txt"]


def test_a_damaged_catalog_is_one_clear_error(state_dir: Path, dir_pool: Pool, capsys) -> None:
    dir_pool.close()
    (state_dir / "catalog.db").write_bytes(b"garbage" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{state_dir / 'catalog.db'}{suffix}").unlink(missing_ok=True)
    assert main(["--pool", str(state_dir), "status"]) == 4
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "damaged" in err and "recover" in err


# -- second review ------------------------------------------------------------------------


def test_fewer_copies_never_removes_a_copy_edited_on_its_drive(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/thesis.txt", b"chapter 1 draft")
    edited = copies_on_disk(dir_drives, "Documents/thesis.txt")[-1]
    edited.write_bytes(b"chapter 1 final, three weeks of work")
    dir_pool.set_copies("Documents", 1)
    check(dir_pool, repair=True)
    contents = {p.read_bytes() for p in (d / "HomePool/Documents" for d in dir_drives) for p in p.iterdir()}
    assert b"chapter 1 final, three weeks of work" in contents


def test_an_older_catalog_is_upgraded(state_dir: Path, dir_pool: Pool, capsys) -> None:
    dir_pool.write_bytes("Documents/kept.txt", b"kept", mode=0o640)
    dir_pool.close()
    as_older_catalog(state_dir, """
        DROP TABLE owed;
        CREATE TABLE nodes_rev1 (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES nodes(id),
            name TEXT NOT NULL, kind TEXT NOT NULL CHECK (kind IN ('dir', 'file')),
            size INTEGER NOT NULL DEFAULT 0, mode INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, hash TEXT,
            UNIQUE (parent_id, name));
        INSERT INTO nodes_rev1 SELECT id, parent_id, name, kind, size, mode, mtime_ns, hash FROM nodes;
        DROP TABLE nodes;
        ALTER TABLE nodes_rev1 RENAME TO nodes;
        UPDATE meta SET value = '1' WHERE key = 'schema_rev'
    """)
    assert main(["--pool", str(state_dir), "status"]) == 0  # a reader upgrades too
    with Pool.open(state_dir) as pool:
        assert pool.cat.schema_rev() == CURRENT_REV == 8 and pool.cat.owed(1) == []
        indexes = {r[0] for r in pool.cat.db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"nodes_by_link", "nodes_by_parent", "nodes_by_place"} <= indexes
        node = pool.stat("Documents/kept.txt")
        assert (node.size, node.mode & 0o777, node.uid, node.ctime_ns, node.atime_ns) == \
            (4, 0o640, 0, node.mtime_ns, node.mtime_ns)
        assert pool.read_bytes("Documents/kept.txt") == b"kept"
        assert_clean(pool)


def test_a_revision_6_catalog_gets_places(state_dir: Path, dir_pool: Pool) -> None:
    """Revision 6 (one stop's catalogs) indexed listings by parent alone; revision 7 adds the
    places listings page by, revision 8 their index."""
    dir_pool.write_bytes("Documents/kept.txt", b"kept")
    dir_pool.close()
    as_older_catalog(state_dir, """
        DROP INDEX nodes_by_parent;
        DROP INDEX nodes_by_place;
        ALTER TABLE nodes DROP COLUMN place;
        CREATE INDEX nodes_by_parent ON nodes(parent_id);
        UPDATE meta SET value = '6' WHERE key = 'schema_rev'
    """)
    with Pool.open(state_dir) as pool:
        assert pool.cat.schema_rev() == CURRENT_REV == 8
        assert pool.cat.get_val("SELECT 1 FROM sqlite_master WHERE name = 'nodes_by_place'") == 1
        docs = pool.lookup("Documents")
        assert docs is not None
        assert [name for _, _, name, _, _ in pool.cat.listing(docs.id)] == ["kept.txt"]
        assert_clean(pool)


def test_a_revision_7_catalog_with_a_shared_place_is_repaired(state_dir: Path, dir_pool: Pool) -> None:
    """Revision 7 could give a node made outside the mount an id that another entry had as its
    place (see `Catalog._new_id`); two entries then shared a place and a listing read a page
    at a time skipped one. The upgrade to revision 8 lists such an entry at its own id."""
    dir_pool.write_bytes("Documents/a.txt", b"a")
    dir_pool.write_bytes("Documents/b.txt", b"b")
    dir_pool.close()
    as_older_catalog(state_dir, """
        DROP INDEX nodes_by_place;
        UPDATE nodes SET place = (SELECT id FROM nodes WHERE name = 'b.txt') WHERE name = 'a.txt';
        UPDATE meta SET value = '7' WHERE key = 'schema_rev'
    """)
    with Pool.open(state_dir) as pool:
        assert pool.cat.schema_rev() == CURRENT_REV == 8
        assert listed_a_page_at_a_time(pool, pool.stat("Documents").id) == ["a.txt", "b.txt"]
        assert_clean(pool)


def test_recover_into_a_state_dir_that_is_a_mount_point(state_dir: Path, dir_pool: Pool,
                                                        dir_drives: list[Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("LOUD SKIP: mounting a tmpfs needs root")
    dir_pool.write_bytes("Documents/a.txt", b"a")
    dir_pool.close()
    saved = state_dir.parent / "saved-state"
    shutil.copytree(state_dir, saved)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(state_dir)], check=True)
    try:
        for f in saved.iterdir():
            shutil.copy(f, state_dir / f.name)
        recover(state_dir, dir_drives, force=True)
        with Pool.open(state_dir) as pool:
            assert pool.read_bytes("Documents/a.txt") == b"a"
    finally:
        subprocess.run(["umount", str(state_dir)], check=True)


def test_a_folder_renamed_while_away_merges_into_what_the_drive_picked_up(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.makedirs("Videos/holiday")
    dir_pool.makedirs("Videos/2024")
    dir_pool.write_bytes("Videos/holiday/clip.mkv", b"clip")
    holder = copies_on_disk(dir_drives, "Videos/holiday/clip.mkv")[0].parents[3]
    unplug(holder)
    dir_pool.delete("Videos/2024")
    dir_pool.rename("Videos/holiday", "Videos/2024")
    plug(holder)
    (holder / "HomePool/Videos/2024").mkdir(exist_ok=True)
    (holder / "HomePool/Videos/2024/.DS_Store").write_bytes(b"finder")  # picked up on a Mac
    dir_pool.close()
    with Pool.open(state_dir) as pool:
        check(pool, repair=True)
        assert pool.read_bytes("Videos/2024/clip.mkv") == b"clip"
        assert_clean(pool)


def test_a_rename_made_while_away_keeps_what_was_edited_at_the_destination(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Videos/notes.txt", b"old notes")
    dir_pool.write_bytes("Videos/notes-new.txt", b"new notes")
    away = copies_on_disk(dir_drives, "Videos/notes.txt")[0].parents[2]
    if not (away / "HomePool/Videos/notes-new.txt").exists():
        pytest.skip("placement put the two files on different drives")  # mfs: same drive here
    unplug(away)
    (away / "HomePool/Videos/notes.txt").write_bytes(b"edited on a laptop")
    dir_pool.rename("Videos/notes-new.txt", "Videos/notes.txt")
    plug(away)
    dir_pool.close()
    with Pool.open(state_dir) as pool:
        check(pool, repair=True)
        contents = {p.read_bytes() for p in (away / "HomePool/Videos").iterdir()}
        assert b"edited on a laptop" in contents


def test_writes_owe_nothing_to_drives_that_are_there(dir_pool: Pool) -> None:
    dir_pool.write_bytes("Photos/x.jpg", b"v1")
    dir_pool.set_copies("Photos", 3)
    dir_pool.set_copies("Photos", 2)
    dir_pool.write_bytes("Photos/x.jpg", b"v2")
    assert all(dir_pool.cat.owed(d.id) == [] for d in dir_pool.drives())
    assert_clean(dir_pool)


@pytest.mark.expect_errors
def test_a_copy_marked_bad_is_kept_when_the_other_has_rotted(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Photos/a.jpg", b"the real photo")
    first, second = copies_on_disk(dir_drives, "Photos/a.jpg")
    node = dir_pool.stat("Photos/a.jpg")
    bad_drive = next(d for d, _ in dir_pool.replicas("Photos/a.jpg") if first.is_relative_to(d.root))
    dir_pool.mark_bad(node.id, bad_drive.id)  # a passing hiccup
    st = second.stat()
    second.write_bytes(b"the rotted pho")  # same size, same time: silent rot
    os.utime(second, ns=(st.st_atime_ns, st.st_mtime_ns))
    dir_pool.set_copies("Photos", 2)
    assert first.read_bytes() == b"the real photo"
    assert dir_pool.read_bytes("Photos/a.jpg") == b"the real photo"


def test_an_extra_copy_dropped_by_an_overwrite_leaves_the_catalog(dir_pool: Pool) -> None:
    dir_pool.write_bytes("Photos/x.jpg", b"same bytes", mtime_ns=10**18)
    dir_pool.set_copies("Photos", 3)
    with dir_pool.cat.transaction():  # folder back to 2 without reconciling: one extra copy
        dir_pool.cat.set_folder_copies(dir_pool.folder("Photos")[0].id, 2)
    dir_pool.write_bytes("Photos/x.jpg", b"same bytes", mtime_ns=2 * 10**18)
    assert len(dir_pool.replicas("Photos/x.jpg")) == 2
    assert_clean(dir_pool)


def test_a_folder_deleted_while_away_stays_deleted(state_dir: Path, dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.makedirs("Documents/Old taxes")
    unplug(dir_drives[0])
    dir_pool.delete("Documents/Old taxes")
    plug(dir_drives[0])
    dir_pool.close()
    with Pool.open(state_dir) as pool:
        check(pool, repair=True)
        assert pool.lookup("Documents/Old taxes") is None
        assert not (dir_drives[0] / "HomePool/Documents/Old taxes").exists()


def test_a_case_variant_folder_blocked_by_a_file_is_left_alone(dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Videos/2010", b"a file named like a folder")
    (dir_drives[0] / "HomePool/videos/2010").mkdir(parents=True)
    (dir_drives[0] / "HomePool/videos/2010/clip.mkv").write_bytes(b"clip")
    problems = check(dir_pool, repair=True)
    assert any("left alone" in p.detail for p in problems)


@pytest.mark.parametrize("killed_at", ["_record_attrs", "_set_on_copies"], ids=["recording", "on-the-copies"])
@pytest.mark.parametrize("change", ["mode", "owner", "times"])
def test_a_setattr_a_crash_cut_short_is_made_on_the_copies_at_the_next_opening(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch, change: str,
        killed_at: str) -> None:
    """The mount records a chmod, chown or utimens of a closed file with a journal row, then
    makes it on the copies: killed before the record, nothing changed; killed after it, the
    next opening makes it on the copies. Found by a crash stress: the copies had the change
    and the catalog did not (the mount showed one, `recover` would have brought back the
    other), and `check` could not tell."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.go_live()
    node = dir_pool.stat("Documents/a.txt")
    cols = {"mode": {"mode": 0o600}, "owner": {"uid": 1234, "gid": 1234}, "times": {"mtime_ns": 10**18}}[change]

    def killed(*a: object) -> None:
        raise KeyboardInterrupt  # stands in for kill -9 here
    monkeypatch.setattr(dir_pool, killed_at, killed)
    with pytest.raises(KeyboardInterrupt):
        dir_pool.set_attrs(node.id, **cols)  # type: ignore[arg-type]
    monkeypatch.undo()
    mount_dies(dir_pool)
    with Pool.open(state_dir) as pool:
        now = pool.stat("Documents/a.txt")
        want = {"mode": (0o600, 0, node.mtime_ns), "owner": (0o644, 1234, node.mtime_ns),
                "times": (0o644, 0, 10**18)}[change] if killed_at == "_set_on_copies" else (0o644, 0, node.mtime_ns)
        assert (now.mode & 0o7777, now.uid, now.mtime_ns) == want
        copies = [p.stat() for p in copies_on_disk(dir_drives, "Documents/a.txt")]
        assert [(st.st_mode & 0o7777, st.st_uid, st.st_mtime_ns) for st in copies] == [want] * 2
        assert pool.cat.journal() == []
        assert_clean(pool)


def _killed_before_the_drive_steps(state_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                   change: Callable[[Pool], object], steps: str = "_take_steps") -> None:
    """A mount makes `change`, recorded first, and is killed before its drive steps (the
    method `steps`): its catalog connection closes with nothing more committed, and its lock goes."""
    mounted = Pool.open(state_dir)
    mounted.go_live()

    def killed(*a: object) -> None:
        raise KeyboardInterrupt  # stands in for kill -9 here
    monkeypatch.setattr(mounted, steps, killed)
    with pytest.raises(KeyboardInterrupt):
        change(mounted)
    mounted.cat.db.close()
    assert mounted.lock is not None
    mounted.lock.release()


@pytest.mark.expect_errors
def test_a_delete_a_crash_cut_short_with_a_drive_away_at_the_next_opening_is_owed_to_it(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A delete through the mount is recorded, then made on the drives: killed in between,
    the next opening makes it on the drives there, and owes it to one that is away. Found by
    review: nothing was owed, and the copy on that drive came back as a file at `check --repair`."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.close()
    _killed_before_the_drive_steps(state_dir, monkeypatch, lambda pool: pool.delete("Documents/a.txt"))
    away = copies_on_disk(dir_drives, "Documents/a.txt")[0].parents[2]
    os.rename(away / ".homepool", away / ".homepool-unplugged")
    try:
        with Pool.open(state_dir) as pool:
            assert pool.lookup("Documents/a.txt") is None
            assert len(copies_on_disk(dir_drives, "Documents/a.txt")) == 1  # on the drive away
    finally:
        os.rename(away / ".homepool-unplugged", away / ".homepool")
    with Pool.open(state_dir) as pool:  # back: what it is owed first
        assert copies_on_disk(dir_drives, "Documents/a.txt") == []
        check(pool, repair=True)
        assert pool.lookup("Documents/a.txt") is None
        assert_clean(pool)


def test_a_symlinks_removal_a_crash_cut_short_is_made_at_the_next_opening(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A symlink removed through the mount is recorded first, then removed from the drives:
    killed in between, the next opening removes it there. Found by a crash stress: the
    drives went first, and the catalog kept a symlink no drive had."""
    dir_pool.go_live()
    docs = dir_pool.stat("Documents").id
    dir_pool.make_node(docs, "l", stat.S_IFLNK | 0o777, 0, 0, target="a.txt")
    dir_pool.close()
    _killed_before_the_drive_steps(state_dir, monkeypatch, lambda pool: pool.remove(docs, "l", rmdir=False))
    assert sum(os.path.lexists(d / "HomePool/Documents/l") for d in dir_drives) == 3
    with Pool.open(state_dir) as pool:
        assert pool.lookup("Documents/l") is None
        assert not any(os.path.lexists(d / "HomePool/Documents/l") for d in dir_drives)
        assert_clean(pool)


@pytest.mark.parametrize("where", ["Documents/d", "Projects"])
def test_a_mkdir_a_crash_cut_short_is_made_at_the_next_opening(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """mkdir through the mount (in a folder, or a new top-level folder) is recorded first,
    then made on every drive with its owner and mode: killed in between, the next opening
    makes it there. Found by a crash stress: the catalog had the folder and no drive did, a
    chmod of it then failed on each drive, and a file made in it had the folder made with the
    default owner and mode."""
    parent, _, name = where.rpartition("/")
    parent_id = dir_pool.stat(parent).id if parent else ROOT_ID
    dir_pool.close()
    _killed_before_the_drive_steps(state_dir, monkeypatch, steps="_dir_on_drives",
                                   change=lambda pool: pool.make_dir(parent_id, name, 0o2750, 1000, 100))
    assert not any((d / "HomePool" / where).exists() for d in dir_drives)
    with Pool.open(state_dir) as pool:
        assert pool.stat(where).is_dir
        for d in dir_drives:
            st = os.stat(d / "HomePool" / where)
            assert stat.S_ISDIR(st.st_mode)
            assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o2750, 1000, 100)
        assert pool.cat.journal() == []
        assert_clean(pool)


@pytest.mark.parametrize("removed", [False, True])
def test_an_extended_attributes_change_a_crash_cut_short_is_made_at_the_next_opening(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch,
        removed: bool) -> None:
    """setxattr or removexattr through the mount is journaled, then made on every copy: killed
    in between, the next opening makes it on the copies. Before, a crash half-way left the
    copies with different attributes, and which one a program saw depended on the copy read."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    for copy in copies_on_disk(dir_drives, "Documents/a.txt"):
        os.setxattr(copy, "user.tag", b"old")
    file_id = dir_pool.stat("Documents/a.txt").id
    dir_pool.close()
    value = None if removed else b"new"
    _killed_before_the_drive_steps(state_dir, monkeypatch, steps="_xattr_on_copies",
                                   change=lambda pool: pool.set_xattr(file_id, b"user.tag", value))
    copies = copies_on_disk(dir_drives, "Documents/a.txt")
    assert [os.getxattr(c, "user.tag") for c in copies] == [b"old", b"old"]  # killed before any copy had it
    with Pool.open(state_dir) as pool:
        assert pool.cat.journal() == []
        assert_clean(pool)
    if removed:
        assert not any("user.tag" in os.listxattr(c) for c in copies)
    else:
        assert [os.getxattr(c, "user.tag") for c in copies] == [b"new", b"new"]


def test_an_rmdir_a_crash_cut_short_is_made_at_the_next_opening(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """rmdir through the mount is recorded first, then made on every drive: killed in
    between, the next opening removes the folder there. Found by a crash stress: the drives
    went first, and a kill in between left the catalog with a folder no drive had."""
    dir_pool.makedirs("Documents/d")
    docs = dir_pool.stat("Documents").id
    dir_pool.close()
    _killed_before_the_drive_steps(state_dir, monkeypatch, steps="_rmdir_on",
                                   change=lambda pool: pool.remove(docs, "d", rmdir=True))
    assert all((d / "HomePool/Documents/d").is_dir() for d in dir_drives)
    with Pool.open(state_dir) as pool:
        assert pool.lookup("Documents/d") is None
        assert not any((d / "HomePool/Documents/d").exists() for d in dir_drives)
        assert pool.cat.journal() == []
        assert_clean(pool)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_symlinks_rename_a_crash_cut_short_is_made_at_the_next_opening(
        state_dir: Path, dir_pool: Pool, dir_drives: list[Path], monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """A symlink or FIFO renamed through the mount is recorded first, then renamed on the
    drives: killed in between, the next opening renames it there. Found by a crash stress:
    the drives went first, and a kill left the catalog with the old name, which no drive had."""
    dir_pool.go_live()
    docs = dir_pool.stat("Documents").id
    if kind == "symlink":
        dir_pool.make_node(docs, "l", stat.S_IFLNK | 0o777, 0, 0, target="a.txt")
    else:
        dir_pool.make_node(docs, "l", stat.S_IFIFO | 0o644, 0, 0)
    dir_pool.makedirs("Documents/sub")
    sub = dir_pool.stat("Documents/sub").id
    dir_pool.close()
    _killed_before_the_drive_steps(state_dir, monkeypatch, lambda pool: pool.move(docs, "l", sub, "m", noreplace=False))
    assert sum(os.path.lexists(d / "HomePool/Documents/l") for d in dir_drives) == 3
    with Pool.open(state_dir) as pool:
        assert pool.lookup("Documents/l") is None and pool.lookup("Documents/sub/m") is not None
        assert not any(os.path.lexists(d / "HomePool/Documents/l") for d in dir_drives)
        assert all(os.path.lexists(d / "HomePool/Documents/sub/m") for d in dir_drives)
        assert pool.cat.journal() == []
        assert_clean(pool)

"""`import` onto real ext4 loop drives of different sizes."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from homepool import importer
from homepool.check import check
from homepool.errors import ImportTooBig, NoSuchFolder, PoolFull, SourceVanished
from homepool.pool import Pool

from .conftest import LoopFactory, MiB
from .helpers import assert_clean, tree_files


def make_tree(root: Path, n: int, size: int, seed: int = 0) -> dict[str, bytes]:
    out = {}
    for i in range(n):
        rel = f"set{i % 4}/file{i:05d}.bin"
        data = (seed.to_bytes(4, "little") + i.to_bytes(4, "little")) * (size // 8) + os.urandom(size % 8)
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[rel] = data
    return out


def test_files_spill_over_when_a_drive_fills(state_dir: Path, loop_drives: LoopFactory, tmp_path: Path) -> None:
    small, big = loop_drives(64, 128)
    src = make_tree(tmp_path / "src", 40, 4 * MiB)  # 160 MiB: more than either drive
    with Pool.create(state_dir) as pool:
        pool.add_drive(small)
        pool.add_drive(big)
        result = importer.run(pool, tmp_path / "src", "Videos/")
        assert result.imported == 40
        on_small = tree_files(small / "HomePool/Videos")
        on_big = tree_files(big / "HomePool/Videos")
        assert on_small and on_big and not set(on_small) & set(on_big)
        assert {**on_small, **on_big} == src
        for info in pool.drive_infos():
            assert info.free >= 1 * MiB, "placement leaves a reserve on every drive"
        assert_clean(pool)


def test_two_copy_folder_gets_identical_copies_on_distinct_drives(
        loop_pool: tuple[Pool, list[Path]], tmp_path: Path) -> None:
    pool, mounts = loop_pool
    src = make_tree(tmp_path / "src", 30, 100_000)
    importer.run(pool, tmp_path / "src", "Photos/")
    for rel, data in src.items():
        holders = [m for m in mounts if (m / "HomePool/Photos" / rel).is_file()]
        assert len(holders) == 2
        assert all((m / "HomePool/Photos" / rel).read_bytes() == data for m in holders)
    assert_clean(pool)


def test_each_drive_alone_is_a_plain_readable_copy(loop_pool: tuple[Pool, list[Path]], tmp_path: Path) -> None:
    pool, mounts = loop_pool
    src = make_tree(tmp_path / "src", 30, 50_000)
    importer.run(pool, tmp_path / "src", "Videos/")
    importer.run(pool, tmp_path / "src", "Photos/")
    seen: dict[str, bytes] = {}
    for m in mounts:
        for rel, data in tree_files(m / "HomePool").items():  # no homepool involved: plain files
            folder, _, inner = rel.partition("/")
            assert data == src[inner], f"{m}: {rel} differs from its source"
            src_mtime = (tmp_path / "src" / inner).stat().st_mtime_ns
            assert (m / "HomePool" / rel).stat().st_mtime_ns == src_mtime
            seen[rel] = data
    assert len(seen) == 60


def test_import_resumes_and_skips_identical_files(loop_pool: tuple[Pool, list[Path]], tmp_path: Path) -> None:
    pool, _ = loop_pool
    make_tree(tmp_path / "src", 10, 1000)
    assert importer.run(pool, tmp_path / "src", "Documents/").imported == 10
    again = importer.run(pool, tmp_path / "src", "Documents/")
    assert (again.imported, again.skipped_same) == (0, 10)
    (tmp_path / "src/set1/file00001.bin").write_bytes(b"changed")
    third = importer.run(pool, tmp_path / "src", "Documents/")
    assert (third.imported, third.skipped_same) == (1, 9)
    assert pool.read_bytes("Documents/set1/file00001.bin") == b"changed"
    assert_clean(pool)


def test_symlinks_are_imported_as_links_and_special_files_skipped(loop_pool: tuple[Pool, list[Path]],
                                                                   tmp_path: Path) -> None:
    pool, drives = loop_pool
    make_tree(tmp_path / "src", 2, 100)
    (tmp_path / "src/latest").symlink_to("set1/file00001.bin")
    (tmp_path / "src/set0/outside").symlink_to("/etc")  # never followed: a link, not a copy of /etc
    os.mkfifo(tmp_path / "src/pipe")
    result = importer.run(pool, tmp_path / "src", "Documents/")
    assert (result.imported, result.links) == (2, 2)
    assert [line.split(": ")[1] for line in result.skipped_other] == ["special files (FIFOs, sockets, devices) are "
                                                                     "not imported"]
    latest, outside = pool.lookup("Documents/latest"), pool.lookup("Documents/set0/outside")
    assert latest is not None and latest.kind == "symlink" and latest.target == "set1/file00001.bin"
    assert outside is not None and outside.target == "/etc"
    for d in drives:  # on every drive, as links
        assert os.readlink(d / "HomePool/Documents/latest") == "set1/file00001.bin"
        assert os.readlink(d / "HomePool/Documents/set0/outside") == "/etc"
    again = importer.run(pool, tmp_path / "src", "Documents/")
    assert (again.imported, again.links, again.skipped_same) == (0, 0, 4)
    (tmp_path / "src/latest").unlink()
    (tmp_path / "src/latest").symlink_to("set0/file00000.bin")
    (tmp_path / "src/set1/file00001.bin").unlink()
    (tmp_path / "src/set1/file00001.bin").symlink_to("../latest")  # a file in the pool: not replaced by a link
    third = importer.run(pool, tmp_path / "src", "Documents/")
    assert third.links == 1  # the changed link, replaced as a changed file is
    assert [os.readlink(d / "HomePool/Documents/latest") for d in drives] == ["set0/file00000.bin"] * 3
    assert third.skipped_other[1].endswith("the pool has a file at Documents/set1/file00001.bin")
    assert_clean(pool)


def test_import_of_a_single_file(loop_pool: tuple[Pool, list[Path]], tmp_path: Path) -> None:
    pool, _ = loop_pool
    f = tmp_path / "will.pdf"
    f.write_bytes(b"pdf")
    importer.run(pool, f, "Documents/")
    importer.run(pool, f, "Documents/renamed.pdf")
    assert pool.read_bytes("Documents/will.pdf") == pool.read_bytes("Documents/renamed.pdf") == b"pdf"


def test_a_full_pool_refuses_before_writing_anything(loop_pool: tuple[Pool, list[Path]], tmp_path: Path) -> None:
    pool, mounts = loop_pool
    make_tree(tmp_path / "src", 60, 4 * MiB)  # 240 MiB x 2 copies > 448 MiB of drives
    before = [tree_files(m / "HomePool") for m in mounts]
    with pytest.raises(ImportTooBig, match="nothing was imported"):
        importer.run(pool, tmp_path / "src", "Photos/")
    assert [tree_files(m / "HomePool") for m in mounts] == before
    assert pool.cat.count_files() == (0, 0)
    assert_clean(pool)


def test_a_file_larger_than_any_drive_is_refused(loop_pool: tuple[Pool, list[Path]], tmp_path: Path) -> None:
    pool, _ = loop_pool
    big = tmp_path / "huge.img"
    with open(big, "wb") as f:
        f.truncate(300 * MiB)  # sparse: no time spent writing it
    with pytest.raises(PoolFull, match="most any drive can take"):
        importer.run(pool, big, "Software/")
    assert pool.cat.count_files() == (0, 0)


def test_unknown_destination_folder(loop_pool: tuple[Pool, list[Path]], tmp_path: Path) -> None:
    pool, _ = loop_pool
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(NoSuchFolder):
        importer.run(pool, tmp_path / "a", "Nope/")


@pytest.mark.parametrize("how", ["deleted", "changed"])
def test_a_source_that_vanishes_mid_way(loop_pool: tuple[Pool, list[Path]], tmp_path: Path, how: str) -> None:
    pool, _ = loop_pool
    src = make_tree(tmp_path / "src", 8, 2000)
    victim = tmp_path / "src/set3/file00007.bin"

    def meddle(_: int, f: importer.SourceFile) -> None:
        if f.src.name == "file00000.bin":
            if how == "deleted":
                victim.unlink()
            else:
                with open(victim, "ab") as fh:
                    fh.write(b"more")

    with pytest.raises(SourceVanished, match="file00007"):
        importer.run(pool, tmp_path / "src", "Documents/", progress=meddle)
    assert pool.lookup("Documents/set3/file00007.bin") is None
    for rel, data in src.items():  # everything else imported is complete
        node = pool.lookup(f"Documents/{rel}")
        if node is not None:
            assert pool.read_bytes(f"Documents/{rel}") == data
    assert_clean(pool)


def _catalog_files(state_dir: Path) -> int:
    db = sqlite3.connect(state_dir / "catalog.db", timeout=30)
    try:
        return int(db.execute("SELECT COUNT(*) FROM nodes WHERE kind = 'file'").fetchone()[0])
    finally:
        db.close()


@pytest.mark.expect_errors
@pytest.mark.parametrize("after_files", [0, 40, 400])
def test_kill_9_during_import_then_check_repair(state_dir: Path, loop_drives: LoopFactory, tmp_path: Path,
                                               after_files: int) -> None:
    mounts = loop_drives(128, 128, 256)
    with Pool.create(state_dir) as pool:
        for m in mounts:
            pool.add_drive(m)
    src = make_tree(tmp_path / "src", 1200, 20_000)
    for i in range(3):  # a few big ones too, so a kill can land mid-file
        (tmp_path / f"src/set0/big{i}.bin").write_bytes(os.urandom(12 * MiB))
    # Commits every 50 files, so "after 40/400 files" are points in the middle, whatever the speed.
    env = {**os.environ, "HOMEPOOL_POOL": str(state_dir), "HOMEPOOL_IMPORT_BATCH_FILES": "50"}
    proc = subprocess.Popen([sys.executable, "-m", "homepool", "import", "-q", str(tmp_path / "src"), "Photos/"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if after_files == 0:
                if any(os.listdir(m / ".homepool/tmp") for m in mounts):
                    break  # a write is under way
            elif _catalog_files(state_dir) >= after_files:
                break
            time.sleep(0.002)  # polling a condition, bounded by the deadline
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the import finished before it could be killed"
    with Pool.open(state_dir) as pool:
        check(pool, repair=True)
        assert_clean(pool)
        # Nothing partial is visible in the pool, and every file it shows is complete.
        for path, node in pool.walk("Photos"):
            if not node.is_dir:
                rel = path.removeprefix("Photos/")
                expected = src.get(rel) or (tmp_path / "src" / rel).read_bytes()
                assert pool.read_bytes(path) == expected
        # Nor on the drives: every plain file there is complete.
        for m in mounts:
            assert os.listdir(m / ".homepool/tmp") == []
            for rel, data in tree_files(m / "HomePool/Photos").items():
                assert data == (tmp_path / "src" / rel).read_bytes()
        # And the import resumes to the end.
        importer.run(pool, tmp_path / "src", "Photos/")
        assert pool.cat.count_files()[0] == 1203
        assert_clean(pool)


def test_an_import_by_a_user_other_than_root_is_recorded_as_theirs() -> None:
    """A pool run by a user (here: root acting as nobody, `seteuid`) records what it writes as
    that user's, as its copies are: the files of an import, and the folders. Before, the
    catalog said root's, and the mount showed them so."""
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="homepool-user-"))  # (pytest's folders are root's alone)
    try:
        os.chown(base, nobody, nobody)
        os.chmod(base, 0o755)
        (base / "src/2024").mkdir(parents=True)
        (base / "src/2024/a.jpg").write_bytes(b"photo")
        drives = [base / "d1", base / "d2"]
        os.setegid(nobody)
        os.seteuid(nobody)
        try:
            for d in drives:
                d.mkdir()
            with Pool.create(base / "state") as pool:
                for d in drives:
                    pool.add_drive(d, allow_shared_device=True)
                pool.set_copies("Photos", 2)
                importer.run(pool, base / "src", "Photos/")
        finally:
            os.seteuid(0)
            os.setegid(0)
        with Pool.open(base / "state", write=False) as pool:
            owners = {p: (n.uid, n.gid) for p in ("Photos", "Photos/2024", "Photos/2024/a.jpg")
                      for n in [pool.stat(p)]}
        assert set(owners.values()) == {(nobody, nobody)}, owners
        copies = [d / "HomePool/Photos/2024/a.jpg" for d in drives]
        assert [(c.stat().st_uid, c.read_bytes()) for c in copies] == [(nobody, b"photo")] * 2
    finally:
        shutil.rmtree(base)

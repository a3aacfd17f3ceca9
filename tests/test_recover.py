"""Losing the state directory loses nothing: `recover` rebuilds it from the drives."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from homepool import importer
from homepool.cli import main
from homepool.errors import RecoverRefused
from homepool.pool import Pool
from homepool.recover import recover

from .conftest import LoopFactory
from .helpers import assert_clean


def listing(state_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    assert main(["--pool", str(state_dir), "ls", "-R"]) == 0
    tree = capsys.readouterr().out
    assert main(["--pool", str(state_dir), "folder", "list"]) == 0
    return tree, capsys.readouterr().out


def test_delete_state_dir_then_recover_gives_the_same_pool(state_dir: Path, loop_drives: LoopFactory,
                                                           tmp_path: Path, capsys) -> None:
    mounts = loop_drives(64, 128, 256)
    src = tmp_path / "src"
    for year in (2010, 2011):
        (src / str(year)).mkdir(parents=True)
        for i in range(10):
            (src / str(year) / f"{i}.jpg").write_bytes(bytes([i]) * (1000 + i))
    with Pool.create(state_dir) as pool:
        for i, m in enumerate(mounts):
            pool.add_drive(m, label=f"Disk {i}", max_size=(200 << 20) if i == 2 else None)
        pool.add_folder("Scans", 3)
        pool.set_copies("Videos", 2)
        importer.run(pool, src, "Photos/")
        importer.run(pool, src / "2010", "Scans/")
        pool.makedirs("Documents/empty")
    before = listing(state_dir, capsys)
    with Pool.open(state_dir, write=False) as pool:
        nodes = {path: (n.kind, n.size, n.mode, n.mtime_ns, n.hash) for path, n in pool.walk()}
    shutil.rmtree(state_dir)
    lines = recover(state_dir, mounts)
    assert any("recovered 30 files" in line for line in lines)
    assert listing(state_dir, capsys) == before
    with Pool.open(state_dir, write=False) as pool:  # to the nanosecond, folders included
        assert {path: (n.kind, n.size, n.mode, n.mtime_ns, n.hash) for path, n in pool.walk()} == nodes
    with Pool.open(state_dir) as pool:
        assert {d.label: d.max_size for d in pool.cat.drives()} == {"Disk 0": None, "Disk 1": None,
                                                                     "Disk 2": 200 << 20}
        assert pool.read_bytes("Photos/2011/9.jpg") == bytes([9]) * 1009
        assert_clean(pool)


def test_recover_without_catalog_copies_uses_the_trees(state_dir: Path, loop_drives: LoopFactory) -> None:
    a, b = loop_drives(64, 64)
    with Pool.create(state_dir) as pool:
        pool.add_drive(a)
        pool.add_drive(b)
        pool.write_bytes("Photos/x.jpg", b"x")
    for m in (a, b):
        (m / ".homepool/catalog.db").unlink()
    shutil.rmtree(state_dir)
    recover(state_dir, [a, b])
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Photos/x.jpg") == b"x"
        assert len(pool.replicas("Photos/x.jpg")) == 2
        assert_clean(pool)


def test_recover_with_a_drive_left_out_marks_it_missing(state_dir: Path, loop_drives: LoopFactory) -> None:
    a, b = loop_drives(64, 64)
    with Pool.create(state_dir) as pool:
        pool.add_drive(a, label="A")
        pool.add_drive(b, label="B")
        pool.write_bytes("Photos/x.jpg", b"x")
    shutil.rmtree(state_dir)
    subprocess.run(["umount", str(b)], check=True)  # drive B is unplugged
    recover(state_dir, [a])
    with Pool.open(state_dir) as pool:
        states = {d.label: d.row.state for d in pool.drives()}
        assert states == {"A": "active", "B": "missing"}
        assert pool.read_bytes("Photos/x.jpg") == b"x"


def test_recover_refuses_drives_of_different_pools(tmp_path: Path, dir_drives: list[Path]) -> None:
    for i, d in enumerate(dir_drives[:2]):
        with Pool.create(tmp_path / f"p{i}") as pool:
            pool.add_drive(d)
    with pytest.raises(RecoverRefused, match="another pool"):
        recover(tmp_path / "new", dir_drives[:2])
    assert not (tmp_path / "new" / "pool.toml").exists()


def test_recover_force_keeps_the_old_state_aside(state_dir: Path, dir_pool: Pool, dir_drives: list[Path]) -> None:
    dir_pool.write_bytes("Documents/a.txt", b"a")
    dir_pool.close()
    recover(state_dir, dir_drives, force=True)
    assert any(p.name.startswith("catalog.db.before-recover-") for p in state_dir.iterdir())
    with Pool.open(state_dir) as pool:
        assert pool.read_bytes("Documents/a.txt") == b"a"


def test_recover_from_the_trees_keeps_symlinks_and_fifos(state_dir: Path, dir_pool: Pool,
                                                         dir_drives: list[Path]) -> None:
    docs = dir_pool.stat("Documents").id
    dir_pool.make_node(docs, "latest", stat.S_IFLNK | 0o777, 0, 0, target="reports/2026.pdf")
    dir_pool.make_node(docs, "queue", stat.S_IFIFO | 0o620, 0, 0)
    dir_pool.close()
    for d in dir_drives:
        (d / ".homepool/catalog.db").unlink()
    shutil.rmtree(state_dir)
    recover(state_dir, dir_drives)
    with Pool.open(state_dir) as pool:
        link, queue = pool.lookup("Documents/latest"), pool.lookup("Documents/queue")
        assert link is not None and link.target == "reports/2026.pdf"
        assert queue is not None and stat.S_ISFIFO(queue.mode) and stat.S_IMODE(queue.mode) == 0o620
        assert_clean(pool)

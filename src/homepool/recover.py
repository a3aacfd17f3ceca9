"""`homepool recover DRIVE...`: rebuild a lost state directory from the member drives.

Drives are the truth for data: every file under each drive's HomePool/ tree becomes a copy in
the new catalog. The settings (folders and their copies, drive labels and caps, placement) come
from the newest catalog copy that the pool keeps on every drive; its hashes are reused for files
whose size and time did not change, so recovery does not have to read everything. Drives named
in that copy but not given (and not mounted where they were) are recorded as missing. Nothing
on the drives is deleted or overwritten.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import time
from contextlib import suppress
from pathlib import Path

from .catalog import Catalog
from .config import CATALOG_FILE, CONFIG_FILE, PoolConfig, PoolLock
from .drives import CATALOG_COPY, META_DIR, read_identity
from .errors import RecoverRefused
from .pool import Pool

log = logging.getLogger(__name__)


def newest_copy(roots: list[Path]) -> Path | None:
    """The drive's `.homepool/` holding the most recently saved catalog copy."""
    best: tuple[float, Path] | None = None
    for root in roots:
        copy = root / META_DIR / CATALOG_COPY
        if not copy.exists():
            continue
        try:
            db = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
            try:
                saved = float(db.execute("SELECT value FROM meta WHERE key = 'saved_at'").fetchone()[0])
            finally:
                db.close()
        except (sqlite3.Error, TypeError, ValueError) as e:
            log.warning("catalog copy on %s is unreadable (%s); ignoring it", root, e)
            continue
        if best is None or saved > best[0]:
            best = (saved, root / META_DIR)
    return best[1] if best else None


def recover(state_dir: Path, drive_paths: list[Path], force: bool = False) -> list[str]:
    """Rebuild the pool's state in `state_dir` from `drive_paths`; returns what it found.

    The new state is built in a scratch directory beside `state_dir` and moved in only when
    complete, under the pool's lock: a failure half-way leaves `state_dir` as it was."""
    if not drive_paths:
        raise RecoverRefused(why="name at least one member drive")
    exists = (state_dir / CONFIG_FILE).exists() or (state_dir / CATALOG_FILE).exists()
    if exists and not force:
        raise RecoverRefused(why=f"a pool already exists at {state_dir}; add --force to rebuild its catalog "
                             "anyway (the old one is kept aside)")
    roots: dict[str, Path] = {}  # drive id -> where it is mounted now
    pool_id = None
    for p in drive_paths:
        root = Path(os.path.realpath(p))
        ident = read_identity(root)
        if ident is None:
            raise RecoverRefused(why=f"{p} is not a homepool drive (it has no {META_DIR}/drive.toml)")
        if pool_id is not None and ident.pool_id != pool_id:
            raise RecoverRefused(why=f"{p} belongs to another pool than {drive_paths[0]}")
        pool_id = ident.pool_id
        roots[ident.drive_id] = root
    assert pool_id is not None

    state_dir.mkdir(parents=True, exist_ok=True)
    lock = PoolLock(state_dir)
    lock.acquire()
    scratch = state_dir / f".recovering-{os.getpid()}"  # same filesystem: the moves below are renames
    shutil.rmtree(scratch, ignore_errors=True)
    moved: list[tuple[Path, Path]] = []
    try:
        lines = _rebuild(scratch, pool_id, roots)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in (CONFIG_FILE, CATALOG_FILE, CATALOG_FILE + "-wal", CATALOG_FILE + "-shm"):
            if (state_dir / name).exists():  # with --force: kept aside, never deleted
                aside = state_dir / f"{name}.before-recover-{stamp}"
                os.replace(state_dir / name, aside)
                moved.append((aside, state_dir / name))
        os.replace(scratch / CATALOG_FILE, state_dir / CATALOG_FILE)
        os.replace(scratch / CONFIG_FILE, state_dir / CONFIG_FILE)  # last: it marks a complete pool
    except BaseException:
        if moved:  # put the old state back: a failed recover leaves things as they were
            for name in (CONFIG_FILE, CATALOG_FILE):
                with suppress(FileNotFoundError):
                    os.unlink(state_dir / name)
            for aside, back in moved:
                os.replace(aside, back)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        lock.release()
    return lines


def _rebuild(scratch: Path, pool_id: str, roots: dict[str, Path]) -> list[str]:
    source = newest_copy(list(roots.values()))
    config = PoolConfig(pool_id=pool_id)
    if source is not None and (source / CONFIG_FILE).exists():
        loaded = PoolConfig.load(source)
        if loaded.pool_id == pool_id:
            config = loaded
    lines = []
    old: Catalog | None = None
    scratch.mkdir(parents=True)
    if source is not None:
        # Read a private copy: opening the drive's copy would leave WAL files on the drive.
        shutil.copyfile(source / CATALOG_COPY, scratch / "old.db")
        old = Catalog(scratch / "old.db")
        if old.meta("pool_id") != pool_id:
            old.close()
            old = None
    with Pool.create(scratch, folders={}, config=config) as pool:
        known: dict[str, tuple[int, int, str]] = {}
        dirs: dict[str, tuple[int, int]] = {}  # folder path -> (mode, mtime_ns) in the catalog copy
        given = dict(roots)
        taken = {str(r) for r in roots.values()}
        if old is not None:
            lines.append(f"settings from the catalog copy on {source.parent}")  # type: ignore[union-attr]
            for folder, copies in old.folders():
                pool.add_folder(folder.name, copies)
            with pool.cat.transaction():
                for row in old.drives():
                    now = given.pop(row.uuid, None)
                    if now is None:  # not given: missing, unless it is still mounted where it was
                        where = row.path if row.path not in taken else f"{row.path} (missing {row.uuid[:8]})"
                    else:
                        where = str(now)
                    pool.cat.add_drive(row.uuid, where, row.label, row.added_at, row.max_size, row.shared_device)
            for path, node in old.walk():
                if not node.is_dir and node.hash:
                    known[path] = (node.size, node.mtime_ns, node.hash)
                elif node.is_dir:
                    dirs[path] = (node.mode, node.mtime_ns)
            # Steps owed to drives (deletes and renames they missed) must survive too, or
            # deleted files would come back.
            uuids = {row.id: row.uuid for row in old.drives()}
            new_ids = {row.uuid: row.id for row in pool.cat.drives()}
            with pool.cat.transaction():
                owed = old.db.execute("SELECT drive_id, payload FROM owed ORDER BY id").fetchall() \
                    if old.has_table("owed") else []
                for drive_id, step in owed:
                    pool.cat.owe(new_ids[uuids[drive_id]], json.loads(step))
            old.close()
        else:
            lines.append("no catalog copy found on the drives: folders get default copies")
        with pool.cat.transaction():
            for uuid_, root in given.items():  # drives the copy does not know
                ident = read_identity(root)
                assert ident is not None
                pool.cat.add_drive(uuid_, str(root), ident.label, ident.added_at, None, False)
        drives = [d for d in pool.drives() if d.row.state == "active"]
        for d in pool.drives():
            if d.row.state != "active":
                lines.append(f"drive {d.name} is missing")
        for d in drives:
            lines += ["  " + line for line in pool.settle_owed(d)]
        # First the copies that are what the newest catalog says, then everything else: a drive
        # that was away while a file changed must not get its old version in under the real name.
        inodes: dict[int, dict[int, str]] = {d.id: {} for d in drives}  # hard links, by drive
        done = {d.id: pool.register_tree(d, known, only_known=True, inodes=inodes[d.id]) for d in drives}
        for d in drives:
            done[d.id] += pool.register_tree(d, known, inodes=inodes[d.id])
            lines.append(f"drive {d.name}: {len(done[d.id])} file copies")
            lines += ["  " + line for line in done[d.id] if "conflict" in line or "alone" in line]
        with pool.cat.transaction():  # folders keep the mode and time they had
            for path, node in pool.cat.walk():
                if node.is_dir and path in dirs:
                    pool.cat.update_dir(node.id, *dirs[path])
        files, _ = pool.cat.count_files()
        lines.append(f"recovered {files} files in {len(pool.cat.folders())} folders")
    return lines

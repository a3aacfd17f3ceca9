"""`homepool recover DRIVE...`: rebuild a lost state directory from the member drives.

Drives are the truth for data: every file under each drive's HomePool/ tree becomes a copy in
the new catalog. The settings (folders and their copies, drive labels and caps, placement) come
from the newest catalog copy that the pool keeps on every drive; its hashes are reused for files
whose size and time did not change, so recovery does not have to read everything. Drives named
in that copy but not given (and not mounted where they were) are recorded as missing. Nothing
on the drives is deleted or overwritten.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path

from .catalog import Catalog
from .config import CATALOG_FILE, CONFIG_FILE, PoolConfig
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
    if not drive_paths:
        raise RecoverRefused(why="name at least one member drive")
    exists = (state_dir / CONFIG_FILE).exists() or (state_dir / CATALOG_FILE).exists()
    if exists and not force:
        raise RecoverRefused(why=f"a pool already exists at {state_dir}; add --force to rebuild its catalog "
                             "anyway (the old one is kept aside)")
    roots = []
    pool_id = None
    for p in drive_paths:
        root = Path(os.path.realpath(p))
        ident = read_identity(root)
        if ident is None:
            raise RecoverRefused(why=f"{p} is not a homepool drive (it has no {META_DIR}/drive.toml)")
        if pool_id is not None and ident.pool_id != pool_id:
            raise RecoverRefused(why=f"{p} belongs to another pool than {drive_paths[0]}")
        pool_id = ident.pool_id
        roots.append(root)
    assert pool_id is not None

    if force:  # keep the old state aside, never delete it
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in (CONFIG_FILE, CATALOG_FILE, CATALOG_FILE + "-wal", CATALOG_FILE + "-shm"):
            if (state_dir / name).exists():
                os.replace(state_dir / name, state_dir / f"{name}.before-recover-{stamp}")

    source = newest_copy(roots)
    config = PoolConfig(pool_id=pool_id)
    if source is not None and (source / CONFIG_FILE).exists():
        loaded = PoolConfig.load(source)
        if loaded.pool_id == pool_id:
            config = loaded
    lines = []
    old: Catalog | None = None
    if source is not None:
        # Read a private copy: opening the drive's copy would leave WAL files on the drive.
        state_dir.mkdir(parents=True, exist_ok=True)
        scratch = state_dir / f"recover-source-{os.getpid()}.db"
        shutil.copyfile(source / CATALOG_COPY, scratch)
        old = Catalog(scratch)
        if old.meta("pool_id") != pool_id:
            old.close()
            old = None
    with Pool.create(state_dir, folders={}, config=config) as pool:
        known: dict[str, tuple[int, int, str]] = {}
        given = {read_identity(r).drive_id: r for r in roots}  # type: ignore[union-attr]
        if old is not None:
            lines.append(f"settings from the catalog copy on {source.parent}")  # type: ignore[union-attr]
            for folder, copies in old.folders():
                pool.add_folder(folder.name, copies)
            with pool.cat.transaction():
                for d in old.drives():
                    path = str(given.pop(d.uuid, d.path))
                    pool.cat.add_drive(d.uuid, path, d.label, d.added_at, d.max_size, d.shared_device)
            for path, node in old.walk():
                if not node.is_dir and node.hash:
                    known[path] = (node.size, node.mtime_ns, node.hash)
            old.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{scratch}{suffix}").unlink(missing_ok=True)
        else:
            lines.append("no catalog copy found on the drives: folders get default copies")
        with pool.cat.transaction():
            for uuid_, root in given.items():  # drives the copy does not know
                ident = read_identity(root)
                assert ident is not None
                pool.cat.add_drive(uuid_, str(root), ident.label, ident.added_at, None, False)
        for drive in pool.drives():
            if drive.row.state != "active":
                lines.append(f"drive {drive.name} is missing")
                continue
            done = pool.register_tree(drive, known)
            lines.append(f"drive {drive.name}: {len(done)} file copies")
            for line in done:
                if "conflict" in line or "alone" in line:
                    lines.append("  " + line)
        files, _ = pool.cat.count_files()
        lines.append(f"recovered {files} files in {len(pool.cat.folders())} folders")
    return lines

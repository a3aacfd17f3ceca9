"""Small helpers shared by the tests."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from homepool.check import check
from homepool.pool import Pool


def assert_clean(pool: Pool) -> None:
    """End of a test: the checker finds nothing (s3ql's `fsck` after every API test)."""
    problems = check(pool, repair=False)
    assert not problems, [p.line() for p in problems]


def out_of_memory(path: Path) -> None:
    """Drop a file's pages from the page cache (written to disk first): its next read asks the drive."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def copies_on_disk(drives: list[Path], pool_path: str) -> list[Path]:
    return [d / "HomePool" / pool_path for d in drives if (d / "HomePool" / pool_path).is_file()]


def tree_files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def reader(state_dir: Path) -> Pool:
    """The pool opened for reading (beside a mount, which is its writer)."""
    return Pool.open(state_dir, write=False)


def raises(errnum: int, fn: Callable[[], object]) -> None:
    """`fn()` fails with `errnum`."""
    with pytest.raises(OSError) as e:
        fn()
    assert e.value.errno == errnum, (errno.errorcode.get(e.value.errno or 0), errno.errorcode[errnum])


def listed_a_page_at_a_time(pool: Pool, dir_id: int) -> list[str]:
    """A directory's names as a program reading it one entry per page sees them."""
    names, after = [], 0
    while page := pool.cat.listing(dir_id, after, 1):
        (after, _, name, _, _), = page
        names.append(name)
    return names


def as_older_catalog(state_dir: Path, sql: str) -> None:
    """Make the pool's catalog what an older homepool left (`sql`, run in one transaction)."""
    import sqlite3

    db = sqlite3.connect(state_dir / "catalog.db", isolation_level=None)
    try:
        db.executescript(f"BEGIN; {sql}; COMMIT;")
    finally:
        db.close()


def mount_dies(pool: Pool) -> None:
    """The mount's process ends here, as a kill leaves it: what it held back (files open, a
    group of changes not yet committed) is not settled, and the next opening repairs it."""
    pool.live = False
    pool.close()

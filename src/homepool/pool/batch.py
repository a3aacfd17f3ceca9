"""`WriteBatch`: many new files written to temp files on their drives, then made durable and
switched into place together (one journal row, two flushes per drive). Part of the pool layer:
it changes drives and catalog together through `Pool`'s journal steps."""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from .. import paths, placement
from ..catalog import ROOT_ID, Node
from ..errors import DriveIOError, HasOtherNames, IsADirectory, NotFound, NotInFolder, PoolFull
from ..errors import NotADirectory as NotADir
from ..streams import Target, copy_to
from ..units import human

if TYPE_CHECKING:
    from .core import Pool

log = logging.getLogger(__name__)


@dataclass
class Staged:
    """A file fully written to temp files, waiting to be switched into place."""

    path: str
    targets: dict[int, str]  # drive id -> temp file name in that drive's .homepool/tmp/
    drop: list[int]  # drives whose old copy is to be removed
    size: int
    mode: int
    mtime_ns: int
    hash: str


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()


class WriteBatch:
    """Stage many new files, then switch them all into place with one flush per drive.

    `put` writes a file to temp files on its target drives; `commit` (on leaving the `with`
    block, or from `commit_if_full`) makes them durable and switches them in. With
    durability 'fsync' every file is fsynced on its own (for single writes); with 'syncfs'
    each drive is flushed once per batch (imports of many small files)."""

    def __init__(self, pool: Pool, durability: str, max_files: int, max_bytes: int, max_seconds: float) -> None:
        self.pool = pool
        self.durability = durability
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.staged: list[Staged] = []
        self.full: set[int] = set()  # drives that said ENOSPC
        self.drives = pool.drives()
        self.by_id = {d.id: d for d in self.drives}
        self.committed = 0
        # Per-file work must not grow with the pool: what placement needs is read once per
        # batch and then kept up to date with what the batch itself stages.
        self._dirs: dict[str, tuple[Node, int, str]] = {}  # parent path -> (node, copies, canonical path)
        self._parents: dict[str, Node] = {}  # staged path -> its parent's node
        self._snapshot()

    def _snapshot(self) -> None:
        self.used = self.pool.cat.bytes_by_drive()
        self.stats = {d.id: d.statvfs() for d in self.drives if d.row.state == "active"}
        self.devices = {d.id: d.device() for d in self.drives}
        self.reserved: dict[int, int] = {}  # bytes staged per drive since the snapshot
        self.staged_bytes = 0
        self.started = time.monotonic()

    def candidates(self) -> list[placement.Candidate]:
        out = []
        for d in self.drives:
            if d.row.state != "active" or d.id in self.full:
                continue
            r = self.reserved.get(d.id, 0)
            size, free = self.stats[d.id]
            out.append(placement.Candidate(d.id, d.room(self.used.get(d.id, 0) + r, (size, free - r)),
                                           self.devices[d.id]))
        return out

    def _parent(self, dir_path: str) -> tuple[Node, int, str]:
        hit = self._dirs.get(dir_path)
        if hit is None:
            pool = self.pool
            node = pool.lookup(dir_path)
            if node is None:
                raise NotFound(path=dir_path)
            if not node.is_dir:
                raise NotADir(path=dir_path)
            copies = pool.copies_wanted(node.id) if node.id != ROOT_ID else 1
            hit = self._dirs[dir_path] = (node, copies, pool.path_of(node.id))
        return hit

    def __enter__(self) -> WriteBatch:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Whatever stopped us, files already staged are complete: keep them.
        self.commit()

    def put(self, path: str, src: BinaryIO, size: int, mode: int, mtime_ns: int) -> Staged:
        pool = self.pool
        parts = paths.split(path)
        if len(parts) < 2:
            raise NotInFolder(path=paths.join(parts) or "/")
        parent, copies, parent_path = self._parent(paths.join(parts[:-1]))
        norm = f"{parent_path}/{parts[-1]}"
        if norm in self._parents:
            self.commit()
        node = pool.cat.child(parent.id, parts[-1])
        if node is not None and node.is_dir:
            raise IsADirectory(path=norm)
        if node is not None and (node.is_link or node.links):
            raise HasOtherNames(path=norm)  # a new copy here would part it from its other names
        by_id = self.by_id
        targets, drop = pool._targets_for(node, norm, size, copies, self.candidates())
        fds: list[Target] = []
        tmps: dict[int, str] = {}
        try:
            for drive_id in targets:
                d = by_id[drive_id]
                tmp = f"{d.tmpdir_s}/{d.new_tmp_name()}"
                try:
                    fds.append(Target(drive_id, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode & 0o777)))
                    tmps[drive_id] = tmp
                except OSError as e:
                    log.error("cannot write to %s: %s", d.name, e)
            fsync = self.durability == "fsync"
            n, digest = copy_to(src, fds, size, fsync=False)
            # Created with the final mode above; fchmod only where the umask or special bits
            # (setgid, sticky) would leave it different. Saves a syscall per small file.
            needs_chmod = (mode & 0o7777) != (mode & 0o777 & ~UMASK)
            for t in fds:
                if t.error is None:
                    try:
                        if needs_chmod:
                            os.fchmod(t.fd, mode & 0o7777)
                        os.utime(t.fd, ns=(mtime_ns, mtime_ns))
                        if fsync:
                            os.fsync(t.fd)
                    except OSError as e:
                        t.error = e
        except BaseException:
            for t in fds:
                os.close(t.fd)
            for tmp in tmps.values():
                with suppress(OSError):
                    os.unlink(tmp)
            raise
        ok: dict[int, str] = {}
        for t in fds:
            os.close(t.fd)
            if t.error is not None:
                d = by_id[t.key]
                log.error("writing %s to %s failed: %s", norm, d.name, t.error)
                with suppress(OSError):
                    os.unlink(tmps[t.key])
                if t.error.errno == errno.ENOSPC:
                    self.full.add(t.key)  # place nothing more there in this batch
            else:
                ok[t.key] = tmps[t.key].rpartition("/")[2]
                self.reserved[t.key] = self.reserved.get(t.key, 0) + n
        self.staged_bytes += n
        if not ok:
            err = fds[0].error if fds else None
            if err is not None and err.errno == errno.ENOSPC:
                raise PoolFull(path=norm, size=human(size), largest="less")
            raise DriveIOError(drive=", ".join(by_id[t].name for t in targets), op="write", path=norm,
                               err=err or "no drive could take it")
        staged = Staged(norm, ok, drop, n, stat_.S_IFREG | (mode & 0o7777), mtime_ns, digest)
        self.staged.append(staged)
        self._parents[norm] = parent
        return staged

    def commit_if_full(self) -> None:
        if (len(self.staged) >= self.max_files or self.staged_bytes >= self.max_bytes
                or time.monotonic() - self.started >= self.max_seconds):
            self.commit()

    def discard(self, staged: Staged) -> None:
        """Forget a staged file (its source turned out to have changed): delete its temps."""
        self.staged.remove(staged)
        del self._parents[staged.path]
        for key, name in staged.targets.items():
            with suppress(OSError):
                (self.by_id[key].tmpdir / name).unlink()

    def commit(self) -> None:
        if not self.staged:
            return
        pool = self.pool
        by_id = self.by_id
        touched = {by_id[k] for s in self.staged for k in [*s.targets, *s.drop] if k in by_id}
        if self.durability == "syncfs":
            for d in touched:
                d.syncfs()
        owner = os.geteuid(), os.getegid()  # (of the copies this process wrote)
        payloads = [{"path": s.path, "targets": {str(k): v for k, v in s.targets.items()}, "drop": s.drop,
                     "size": s.size, "mode": s.mode, "mtime_ns": s.mtime_ns, "hash": s.hash,
                     "uid": owner[0], "gid": owner[1]} for s in self.staged]
        with pool.cat.transaction():
            entry = pool.cat.journal_add("write", {"files": payloads})
        pool._changed = True
        made: set[tuple[int, str]] = set()
        results = [pool._apply_write(p, by_id, made) for p in payloads]
        for d in touched:
            if d.row.state == "active":
                if self.durability == "syncfs":
                    d.syncfs()
                else:
                    for s in self.staged:
                        if d.id in s.targets or d.id in s.drop:
                            with suppress(FileNotFoundError):
                                d.fsync_dir(s.path.rpartition("/")[0])
        with pool.cat.transaction():
            for p, done, s in zip(payloads, results, self.staged, strict=True):
                pool._record_write(p, done, self._parents[s.path], by_id)
            pool.cat.journal_done(entry)
        self.committed += len(self.staged)
        self.staged = []
        self._parents = {}
        self._snapshot()

"""The FUSE adapter: the pool as one local filesystem (pyfuse3 `Operations`).

It translates and never decides: every answer comes from the `Pool` API (inode numbers are the
catalog's node ids, the root is node 1 as FUSE expects), and every homepool error becomes an
errno in one place, `_errno`. Handlers run on the trio event loop; the catalog calls are short
and synchronous there, while file reads go to a worker thread (`trio.to_thread`), so one slow
drive never stalls the loop.

First slice (issue 3): a read-only view. Lookups, attributes, directory listings, reads from
the least busy copy that fall over to another copy on an I/O error, extended attributes (read
from the copies), and pool-wide `statfs`. Everything that would change the pool answers EROFS
until writes arrive.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pyfuse3
import trio

from .catalog import Node
from .errors import HomepoolError, NoReadableCopy, NotFound
from .pool import Pool

log = logging.getLogger(__name__)

ATTR_TIMEOUT = 1.0  # seconds the kernel may cache attributes and entries
BLOCK = 4096


@contextmanager
def _errno() -> Iterator[None]:
    """Map homepool errors to errno, the one place that does (handlers raise only FUSEError)."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except NotFound:
        raise pyfuse3.FUSEError(errno.ENOENT) from None
    except NoReadableCopy:
        raise pyfuse3.FUSEError(errno.EIO) from None
    except HomepoolError as e:
        log.error("%s", e)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except OSError as e:  # a drive's own error keeps its errno
        raise pyfuse3.FUSEError(e.errno or errno.EIO) from None


@dataclass
class _Open:
    """One open file: the node and a descriptor on the copy being read."""

    node_id: int
    fd: int
    drive_id: int
    failed: set[int] = field(default_factory=set)


class PoolOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self.pool = pool
        self._open: dict[int, _Open] = {}
        self._next_fh = 1
        self._readers: dict[int, int] = {}  # drive id -> open files reading from it
        self._cached: dict[int, str | None] = {}  # inode -> content hash when last opened

    # -- attributes ----------------------------------------------------------------------

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = pyfuse3.InodeT(node.id)
        a.generation = 0
        a.entry_timeout = ATTR_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        kind = stat_.S_IFDIR if node.is_dir else stat_.S_IFREG
        a.st_mode = pyfuse3.ModeT(kind | (node.mode & 0o7777))
        a.st_nlink = 2 if node.is_dir else 1
        a.st_uid = 0
        a.st_gid = 0
        a.st_size = node.size
        a.st_blksize = BLOCK
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = node.mtime_ns
        return a

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        with _errno():
            return self._attr(self.pool.node(inode))

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext | None = None
                     ) -> pyfuse3.EntryAttributes:
        with _errno():
            node = self.pool.child(parent_inode, os.fsdecode(name))
            if node is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attr(node)

    # -- directories ---------------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        with _errno():
            if not self.pool.node(inode).is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        with _errno():
            # Entries in name order; `start_id` is how many were already returned.
            for i, child in enumerate(self.pool.children(fh)[start_id:], start_id + 1):
                if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self._attr(child), i):
                    return

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    # -- files ---------------------------------------------------------------------------

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        with _errno():
            node = self.pool.node(inode)
            if node.is_dir:
                raise pyfuse3.FUSEError(errno.EISDIR)
            fd, drive = self.pool.open_copy(node.id, busy=self._readers)
        fh = self._next_fh
        self._next_fh += 1
        self._open[fh] = _Open(node.id, fd, drive.id)
        self._readers[drive.id] = self._readers.get(drive.id, 0) + 1
        # The kernel may keep this file's cached pages only if its content is what it was at
        # the last open (an import may have replaced it since; the hash says so).
        keep = self._cached.get(node.id) == node.hash
        self._cached[node.id] = node.hash
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        f = self._open[fh]
        while True:
            try:
                return await trio.to_thread.run_sync(os.pread, f.fd, size, off)
            except OSError as e:
                # This copy failed mid-read: mark it, and carry on from another copy.
                with _errno():
                    self.pool.copy_failed(f.node_id, self.pool.drive(f.drive_id), e)
                    f.failed.add(f.drive_id)
                    fd, drive = self.pool.open_copy(f.node_id, exclude=frozenset(f.failed), busy=self._readers)
                os.close(f.fd)
                self._readers[f.drive_id] -= 1
                self._readers[drive.id] = self._readers.get(drive.id, 0) + 1
                f.fd, f.drive_id = fd, drive.id

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        f = self._open.pop(fh, None)
        if f is not None:
            os.close(f.fd)
            self._readers[f.drive_id] -= 1

    # -- extended attributes (read from the copies, which all carry the same ones) -----------

    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name.startswith(b"security.") or name.startswith(b"system."):
            # Asked before every write and exec (security.capability): answered without a drive.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        with _errno():
            value = self.pool.copy_xattrs(inode).get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> list[bytes]:
        with _errno():
            return [n for n in self.pool.copy_xattrs(inode) if n.startswith(b"user.")]

    # -- the filesystem ------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        with _errno():
            size, free = self.pool.space()
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = BLOCK
        s.f_blocks = size // BLOCK
        s.f_bfree = s.f_bavail = free // BLOCK
        files, _ = self.pool.cat.count_files()
        s.f_files = files + s.f_bfree  # like ext4: inodes are not the limit here
        s.f_ffree = s.f_favail = s.f_bfree
        s.f_namemax = 255
        return s

    # -- not yet: every change answers EROFS (a read-only mount) ------------------------------

    async def _read_only(self, *args: object, **kwargs: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only  # type: ignore[assignment]
    create = write = setxattr = removexattr = _read_only  # type: ignore[assignment]

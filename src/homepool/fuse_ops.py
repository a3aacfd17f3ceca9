"""The FUSE adapter: the pool as one local filesystem (pyfuse3 `Operations`).

It translates and never decides: every answer comes from the `Pool` API (inode numbers are the
catalog's node ids, the root is node 1 as FUSE expects), and every homepool error becomes an
errno in one place, `_errno`. Handlers run on the trio event loop: catalog work is short and
stays there (one SQLite connection), while everything that touches file data (reads, writes to
all copies, fsync, hashing at release) goes to worker threads, so one slow drive never stalls
the loop. The pool decides where copies go, what a failed copy means, and what gets recorded
(`pool/live.py`); this module could be swapped for another transport.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_
from collections.abc import Iterator
from contextlib import contextmanager

import pyfuse3
import trio

from .catalog import Node
from .errors import (
    AlreadyExists,
    BadFolderName,
    BadPath,
    DirectoryNotEmpty,
    FolderExists,
    HomepoolError,
    IsADirectory,
    NoReadableCopy,
    NotADirectory,
    NotFound,
    NotInFolder,
    PoolFull,
)
from .pool import LiveFile, Pool

log = logging.getLogger(__name__)

# Seconds the kernel may cache attributes, entries and missing names. The mount is the pool's
# only writer while it runs and the kernel drops what its own changes make stale, so these
# can be long: every lookup and getattr saved is a round trip through this process.
ATTR_TIMEOUT = 60.0
BLOCK = 4096


@contextmanager
def _errno() -> Iterator[None]:
    """Map homepool errors to errno, the one place that does (handlers raise only FUSEError)."""
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except HomepoolError as e:
        code = _ERRNO.get(type(e))
        if code is None:
            code = next((c for t, c in _ERRNO.items() if isinstance(e, t)), errno.EIO)
            if code == errno.EIO:
                log.error("%s", e)
        raise pyfuse3.FUSEError(code) from None
    except OSError as e:  # a drive's own error keeps its errno
        raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
    except Exception:  # a bug must cost one operation, never the whole mount
        log.exception("internal error")
        raise pyfuse3.FUSEError(errno.EIO) from None


_ERRNO: dict[type, int] = {
    NotFound: errno.ENOENT,
    NoReadableCopy: errno.EIO,
    AlreadyExists: errno.EEXIST,
    FolderExists: errno.EEXIST,
    DirectoryNotEmpty: errno.ENOTEMPTY,
    IsADirectory: errno.EISDIR,
    NotADirectory: errno.ENOTDIR,
    NotInFolder: errno.EPERM,  # the root holds folders only
    PoolFull: errno.ENOSPC,
    BadPath: errno.EINVAL,
    BadFolderName: errno.EINVAL,
}
_KIND = {"dir": stat_.S_IFDIR, "file": stat_.S_IFREG, "symlink": stat_.S_IFLNK}


def _name(name: bytes) -> str:
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise pyfuse3.FUSEError(errno.EILSEQ) from None  # the catalog holds UTF-8 names


class PoolOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, pool: Pool) -> None:
        super().__init__()
        self.pool = pool
        self._files: dict[int, LiveFile] = {}
        self._dirs: dict[int, list[Node]] = {}  # open directory handles: their listing
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
        kind = stat_.S_IFMT(node.mode) or _KIND.get(node.kind, stat_.S_IFREG)
        a.st_mode = pyfuse3.ModeT(kind | (node.mode & 0o7777))
        a.st_nlink = 2 if node.is_dir else 1
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = node.rdev
        a.st_size = node.size
        a.st_blksize = BLOCK
        a.st_blocks = (node.size + 511) // 512
        a.st_atime_ns = a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = max(node.ctime_ns, node.mtime_ns)
        return a

    async def getattr(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        with _errno():
            return self._attr(self.pool.node(inode))

    async def lookup(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext | None = None
                     ) -> pyfuse3.EntryAttributes:
        with _errno():
            node = self.pool.child(parent_inode, _name(name))
            if node is None:
                missing = pyfuse3.EntryAttributes()  # inode 0: the kernel remembers the name is free
                missing.st_ino = pyfuse3.InodeT(0)
                missing.entry_timeout = ATTR_TIMEOUT
                return missing
            return self._attr(self.pool.node(node.id))

    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: pyfuse3.FileHandleT | None, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with _errno():
            f = self._files.get(fh) if fh is not None else None
            size = attr.st_size if fields.update_size else None
            opened = None
            if size is not None and (f is None or not f.writable):
                f = opened = self.pool.open_file(inode, write=True)  # truncate(2) of a path
            try:
                    node = self.pool.set_attrs(
                    inode, size=size, handle=f,
                    mode=attr.st_mode if fields.update_mode else None,
                    uid=attr.st_uid if fields.update_uid else None,
                    gid=attr.st_gid if fields.update_gid else None,
                    mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
                    atime_ns=attr.st_atime_ns if fields.update_atime else None)
            finally:
                if opened is not None:
                    await self._release(opened)
            return self._attr(self.pool.node(node.id))

    # -- directories ---------------------------------------------------------------------

    async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        with _errno():
            if not self.pool.node(inode).is_dir:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            # The listing is read once per opendir (a readdir call returns a few dozen entries).
            fh = self._next_fh
            self._next_fh += 1
            self._dirs[fh] = self.pool.children(inode)
        return pyfuse3.FileHandleT(fh)

    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        with _errno():
            # Entries in name order; `start_id` is how many were already returned.
            children = self._dirs[fh]
            for i in range(start_id, len(children)):
                if not pyfuse3.readdir_reply(token, os.fsencode(children[i].name), self._attr(children[i]), i + 1):
                    return

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._dirs.pop(fh, None)

    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, ctx: pyfuse3.RequestContext
                    ) -> pyfuse3.EntryAttributes:
        with _errno():
            return self._attr(self.pool.make_dir(parent_inode, _name(name), mode, ctx.uid, ctx.gid))

    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        with _errno():
            self.pool.remove(parent_inode, _name(name), rmdir=True)

    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        with _errno():
            self.pool.remove(parent_inode, _name(name), rmdir=False)

    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: bytes, parent_inode_new: pyfuse3.InodeT,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # copies may sit on different drives: see docs
        with _errno():
            self.pool.move(parent_inode_old, _name(name_old), parent_inode_new, _name(name_new),
                           noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    async def symlink(self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
                      ) -> pyfuse3.EntryAttributes:
        with _errno():
            node = self.pool.make_node(parent_inode, _name(name), stat_.S_IFLNK | 0o777, ctx.uid, ctx.gid,
                                       target=_name(target))
            return self._attr(node)

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        with _errno():
            node = self.pool.node(inode)
        if node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target.encode()

    async def mknod(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        with _errno():
            if stat_.S_ISREG(mode):
                node, f = self.pool.create_file(parent_inode, _name(name), mode, ctx.uid, ctx.gid)
                await self._release(f)
                return self._attr(self.pool.node(node.id))
            return self._attr(self.pool.make_node(parent_inode, _name(name), mode, ctx.uid, ctx.gid, rdev=rdev))

    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)  # no hard links yet: see docs/user-guide.md

    # -- files ---------------------------------------------------------------------------

    def _handle(self, f: LiveFile, keep_cache: bool = False) -> pyfuse3.FileInfo:
        fh = self._next_fh
        self._next_fh += 1
        self._files[fh] = f
        if not f.writable:
            (d,) = f.fds
            self._readers[d] = self._readers.get(d, 0) + 1
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(fh), keep_cache=keep_cache)

    async def create(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        with _errno():
            node, f = self.pool.create_file(parent_inode, _name(name), mode, ctx.uid, ctx.gid)
        self._cached.pop(node.id, None)
        return self._handle(f), self._attr(node)

    async def open(self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        write = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC))
        with _errno():
            f = self.pool.open_file(inode, write=write, busy=self._readers)
            if flags & os.O_TRUNC and f.size:
                self.pool.set_attrs(inode, size=0, handle=f)
            node = self.pool.node(inode)
        # The kernel may keep this file's cached pages only if its content is what it was at
        # the last open (it may have been replaced since; the hash says so).
        keep = not write and self._cached.get(node.id) == node.hash and node.hash is not None
        self._cached[node.id] = node.hash if not write else None
        return self._handle(f, keep_cache=keep)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        f = self._files[fh]
        while True:
            try:
                return await trio.to_thread.run_sync(f.read, size, off)
            except OSError as e:
                if f.writable:
                    raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
                # This copy failed mid-read: mark it, and carry on from another copy.
                with _errno():
                    (drive_id, fd), = f.fds.items()
                    self.pool.copy_failed(f.node_id, self.pool.drive(drive_id), e)
                    f.failed.add(drive_id)
                    fd2, drive = self.pool.open_copy(f.node_id, exclude=frozenset(f.failed), busy=self._readers)
                os.close(fd)
                self._readers[drive_id] -= 1
                self._readers[drive.id] = self._readers.get(drive.id, 0) + 1
                f.fds = {drive.id: fd2}

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        f = self._files[fh]
        with _errno():
            self.pool.will_change(f)
            failed = await trio.to_thread.run_sync(f.write, buf, off)
            if failed:
                self.pool.copies_failed(f, failed, lambda fds: f.write(buf, off, fds))
        return len(buf)

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        """Each close(): the catalog records the file as it is now (release may come later)."""
        f = self._files[fh]
        if f.dirty:
            with _errno():
                self.pool.releasing(f)
                result = await trio.to_thread.run_sync(f.settle)
                self.pool.record_file(f, result)

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        f = self._files[fh]
        with _errno():
            failed = await trio.to_thread.run_sync(f.fsync, datasync)
            if failed:
                self.pool.copies_failed(f, failed, lambda fds: f.fsync(datasync))

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        f = self._files.pop(fh, None)
        if f is not None:
            if not f.writable:
                for d in f.fds:
                    self._readers[d] -= 1
            await self._release(f)

    async def _release(self, f: LiveFile) -> None:
        with _errno():
            self.pool.releasing(f)
            result = await trio.to_thread.run_sync(f.finish)
            self.pool.release_file(f, result)

    # -- extended attributes (kept on the copies, which all carry the same ones) -------------

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
            return [n for n in self.pool.copy_xattrs(inode) if n.startswith((b"user.", b"trusted."))]

    async def setxattr(self, inode: pyfuse3.InodeT, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not name.startswith((b"user.", b"trusted.")):
            raise pyfuse3.FUSEError(errno.ENOTSUP)  # security.* and ACLs are not kept (see docs)
        with _errno():
            self.pool.set_xattr(inode, name, value)

    async def removexattr(self, inode: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not name.startswith((b"user.", b"trusted.")):
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        with _errno():
            self.pool.set_xattr(inode, name, None)

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

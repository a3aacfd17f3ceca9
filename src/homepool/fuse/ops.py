"""The FUSE adapter: the pool as one local filesystem.

It translates and never decides: every answer comes from the `Pool` API (inode numbers are the
catalog's node ids, the root is node 1 as FUSE expects), and every homepool error becomes an
errno in one place, `_errno`. The transport (`session.py`) calls these methods on several
threads at once. The pool is not thread-safe, so every call into it holds `self.lock`; what
touches file data (reads, writes to all copies, fsync, hashing at close) runs outside it, so
one slow drive never holds up the rest. The pool decides where copies go, what a failed copy
means, and what gets recorded (`pool/live.py`).

Passthrough: a file with exactly one copy is opened by the kernel itself on its drive, so
its reads and writes never come here (the session says whether the kernel offers it). The
kernel wants every open of an inode to use the same drive file, so the id it gave us is kept
per inode while any handle on it is open.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import sqlite3
import stat as stat_
import threading
import time
from collections.abc import Callable, Container, Iterator
from contextlib import contextmanager
from typing import TypeVar

from ..catalog import Entry, Listed, Node
from ..errors import (
    AlreadyExists,
    BadFolderName,
    BadPath,
    DirectoryNotEmpty,
    FolderExists,
    HomepoolError,
    IsADirectory,
    LinksAcrossFolders,
    NameTooLong,
    NoReadableCopy,
    NotADirectory,
    NotFound,
    NotInFolder,
    PoolFull,
)
from ..paths import NAME_MAX, PATH_MAX
from ..pool import LiveFile, Pool
from ..pool.glance import Glance, Unsure
from ..pool.ondrive import KEPT_XATTRS_B
from .protocol import RENAME_EXCHANGE, RENAME_NOREPLACE, Attr
from .session import Ctx, FuseError, Opened, Session, SetAttr, StatFs

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds the kernel may cache attributes, entries and missing names. The mount is the pool's
# only writer while it runs and the kernel drops what its own changes make stale, so these
# can be long: every lookup and getattr saved is a round trip through this process.
ATTR_TIMEOUT = 60.0
# A request that only reads waits this long for a change holding the lock, then reads the
# catalog as last committed (`_look`); the kernel keeps such an answer GLANCE_TIMEOUT seconds.
LOOK_WAIT = 1.0
GLANCE_TIMEOUT = 1.0
STATFS_TTL = 2.0  # seconds a statfs answer is reused
BLOCK = 4096
XATTR_CREATE, XATTR_REPLACE = 1, 2


class _ErrnoMap:
    """`with _errno:` maps homepool errors to errno, the one place that does (handlers raise
    only FuseError). A class, not a generator: every request passes through it, some twice."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: object) -> None:
        if e is None or isinstance(e, FuseError):
            return  # (returning nothing: what was raised goes on)
        if isinstance(e, HomepoolError):
            code = _ERRNO.get(type(e))
            if code is None:
                code = next((c for t, c in _ERRNO.items() if isinstance(e, t)), errno.EIO)
                if code == errno.EIO:
                    log.error("%s", e)
            raise FuseError(code) from None
        if isinstance(e, OSError):  # a drive's own error keeps its errno
            raise FuseError(e.errno or errno.EIO) from None


_errno = _ErrnoMap()


_ERRNO: dict[type, int] = {
    NotFound: errno.ENOENT,
    NoReadableCopy: errno.EIO,
    AlreadyExists: errno.EEXIST,
    FolderExists: errno.EEXIST,
    DirectoryNotEmpty: errno.ENOTEMPTY,
    IsADirectory: errno.EISDIR,
    NotADirectory: errno.ENOTDIR,
    NotInFolder: errno.EPERM,  # the root holds folders only
    LinksAcrossFolders: errno.EXDEV,  # as between two filesystems: programs copy instead
    PoolFull: errno.ENOSPC,
    NameTooLong: errno.ENAMETOOLONG,
    BadPath: errno.EINVAL,
    BadFolderName: errno.EINVAL,
}
_KIND = {"dir": stat_.S_IFDIR, "file": stat_.S_IFREG, "symlink": stat_.S_IFLNK}


def _name(name: bytes, longest: int = NAME_MAX) -> str:
    if len(name) > longest:
        raise FuseError(errno.ENAMETOOLONG)
    try:
        return name.decode("utf-8")
    except UnicodeDecodeError:
        raise FuseError(errno.EILSEQ) from None  # the catalog holds UTF-8 names


def _mode_of(node: Node | Entry) -> int:
    return stat_.S_IFMT(node.mode) or _KIND.get(node.kind, stat_.S_IFREG)


def _maps_shared(pid: int, inodes: tuple[int, ...]) -> bool:
    """Whether process `pid` has a shared mapping of a file with one of these inode numbers
    (/proc/PID/maps; the mount's own, or the drive copy's under passthrough): it may write
    the file after this close. True when it cannot tell; a false match costs only a hash."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split(None, 5)
                if len(fields) >= 5 and fields[1][3:4] == "s" and int(fields[4]) in inodes:
                    return True
    except (OSError, ValueError):
        return True
    return False


def attr_of(node: Node | Entry) -> Attr:
    kind = _mode_of(node)
    return Attr(node.id, node.size, kind | (node.mode & 0o7777), node.nlink, node.uid,
                node.gid, node.rdev, node.mtime_ns, max(node.ctime_ns, node.mtime_ns), node.atime_ns or node.mtime_ns,
                BLOCK)


class PoolLock:
    """The lock held for every call into the pool (reentrant), which first hands the pool what
    was done while another thread held it (`on_taken`: cheap when there is nothing)."""

    def __init__(self, on_taken: Callable[[], None]) -> None:
        self._lock = threading.RLock()
        self._on_taken = on_taken
        self._depth = 0  # (changed by the holder only)
        self._since: float | None = None  # when the holder took it

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        if self._depth == 1:
            self._since = time.monotonic()
        try:
            self._on_taken()
        except BaseException:
            self.release()
            raise
        return True

    def release(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._since = None
        self._lock.release()

    def held_for(self) -> float:
        """Seconds the lock has been held by its holder now (0: free)."""
        since = self._since
        return 0.0 if since is None else time.monotonic() - since

    # (Not calls of `acquire` and `release`: every request takes the lock, some more than once.)
    __enter__ = acquire
    __exit__ = release


class PoolOperations:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.session: Session | None = None  # set by `serve` before it mounts (passthrough needs it)
        self.lock = PoolLock(self._adopt_handles)
        self._files: dict[int, LiveFile] = {}
        # Handles opened while a change held the lock (`_open_past_a_stall`), not yet known to
        # the pool, with the node they were opened on; and the inodes being opened under the
        # lock, which are not opened past it. `_handles` guards both.
        self._unadopted: dict[int, tuple[LiveFile, Node]] = {}
        self._adopting: dict[int, tuple[LiveFile, Node]] = {}  # being handed over (`_adopt_handles`)
        self._opening: set[int] = set()
        self._handles = threading.Lock()
        self._next_fh = itertools.count(1)
        self._readers: dict[int, int] = {}  # drive id -> open files reading from it
        self._reading: dict[int, int] = {}  # handle of such a file -> the drive it is counted on
        self._cached: dict[int, str | None] = {}  # inode -> content hash when last opened
        self._backing: dict[int, list[int]] = {}  # inode -> [passthrough id, handles using it]
        self._statfs: tuple[float, StatFs] | None = None  # (when, answer)
        self._glance: Glance | None = None  # opened at the first `_look` that needs it
        self._glance_opening = threading.Lock()
        self._held_up = False  # a look waited LOOK_WAIT for the lock in vain, and none has had it since
        self._answer = threading.local()  # .timeout: of the answer being made on this thread

    def close(self) -> None:
        """At unmount: what these operations opened of their own (a glance's connection)."""
        if self._glance is not None:
            self._glance.close()

    @contextmanager
    def unlocked(self) -> Iterator[None]:
        """Let the lock go for a while (the pool copies a file's data in here: see
        `Pool.unlocked_io`). Held more than once, it stays held: nothing is let go then."""
        self.lock.release()
        try:
            yield
        finally:
            self.lock.acquire()

    def _look(self, answer: Callable[[Pool | Glance], T]) -> T:
        """Answer a request that only reads: from the pool under the lock, as every request; or,
        if a change has held the lock LOOK_WAIT seconds (a drive that stopped answering holds
        it until the kernel answers or fails the call), from the catalog as last committed
        (`pool.Glance`), so that programs can go on finding, listing and statting files. The
        kernel keeps such an answer GLANCE_TIMEOUT seconds. What a glance cannot tell (a file
        open for writing) waits for the lock after all. Once a look has waited in vain, the
        next ones do not wait (an `ls -l` would wait a second per name) until one finds the
        lock free."""
        self._answer.timeout = ATTR_TIMEOUT
        if not self._lock_for_a_look():
            self._held_up = True
            try:
                glance = self._glance or self._open_glance()
                with glance.lock, glance.snapshot(), _errno:
                    result = answer(glance)
                self._answer.timeout = GLANCE_TIMEOUT
                return result
            except Unsure:
                pass
            except sqlite3.Error as e:  # the glance's own connection: no worse than waiting
                log.warning("reading the catalog past a stuck change: %s", e)
            self.lock.acquire()
        try:
            self._held_up = False
            with _errno:
                return answer(self.pool)
        finally:
            self.lock.release()

    def _lock_for_a_look(self) -> bool:
        """Take the lock for a request that only reads: waiting LOOK_WAIT seconds for it, or
        not at all while held up (see `_look`)."""
        return self.lock.acquire(blocking=False) if self._held_up else self.lock.acquire(timeout=LOOK_WAIT)

    def _open_glance(self) -> Glance:
        with self._glance_opening:
            if self._glance is None:
                self._glance = Glance(self.pool, self.pool.cat.path, opened_past=self._opened_past)
            return self._glance

    def answer_timeout(self) -> float:
        """How long the kernel may keep the entries and attributes of the answer just made on
        this thread: ATTR_TIMEOUT, or GLANCE_TIMEOUT for one read past a stuck change (`_look`)."""
        timeout = getattr(self._answer, "timeout", ATTR_TIMEOUT)
        self._answer.timeout = ATTR_TIMEOUT
        return timeout

    # -- attributes ----------------------------------------------------------------------

    def getattr(self, ctx: Ctx, ino: int) -> Attr:
        return self._look(lambda pool: self._attr(pool, pool.node(ino)))

    def _attr(self, pool: Pool | Glance, node: Node) -> Attr:
        """What the kernel is told about an inode (no name left: nlink 0)."""
        attr = attr_of(node)
        return attr._replace(nlink=0) if pool.unlinked(node.id) else attr

    def lookup(self, ctx: Ctx, parent: int, name: bytes) -> Attr | None:
        def answer(pool: Pool | Glance) -> Attr | None:
            node = pool.child(parent, _name(name))
            return None if node is None else attr_of(pool.node(node.id))
        return self._look(answer)

    def setattr(self, ctx: Ctx, ino: int, fh: int | None, change: SetAttr) -> Attr:
        with self.lock, _errno:
            f = self._files.get(fh) if fh is not None else None
            opened = None
            if change.size is not None and (f is None or not f.writable):
                f = opened = self.pool.open_file(ino, write=True)  # truncate(2) of a path
            mode = change.mode
            if change.kill_set_id and mode is None:  # a truncate or chown that clears set-id bits
                node = self.pool.node_as_set(ino)  # (its mode and group: the copy need not be looked at)
                kept = self.pool.without_set_id(node.mode, self._in_group(ctx, node))
                mode = kept if kept != node.mode else None
            try:
                node = self.pool.set_attrs(ino, size=change.size, handle=f, mode=mode, uid=change.uid,
                                           gid=change.gid, mtime_ns=change.mtime_ns, atime_ns=change.atime_ns)
            finally:
                if opened is not None:
                    self._finish(opened)
            return self._attr(self.pool, node if opened is None else self.pool.node(ino))

    # -- directories ---------------------------------------------------------------------

    def readdir(self, ino: int, off: int, most: int, held: Container[int] | None = None
                ) -> Iterator[tuple[bytes, int, int, Attr | None, int]]:
        """A page of directory `ino`'s listing: at most `most` entries, from the one after the
        place `off` (0: the first), as (name, inode, mode, attributes, place). Attributes only
        with `held` (READDIRPLUS), and not for the inodes in it (the kernel has them). Read
        from the catalog page by page, with no directory handle: see `Catalog.listing`."""
        def answer(pool: Pool | Glance) -> tuple[list[Listed], dict[int, Entry]]:
            page = pool.listing(ino, off, most)
            lacking = held is not None and page and any(id_ not in held for _, id_, _, _, _ in page)
            # The kernel lacks one: the attributes, for the page (one query).
            return page, pool.entries(ino, off, page[-1][0]) if lacking else {}
        page, entries = self._look(answer)
        for place, id_, name, kind, type_ in page:
            e = entries.get(place) if held is not None and id_ not in held else None
            if e is None:  # held by the kernel (or plain READDIR): name, inode and type
                yield name.encode(), id_, type_ or _KIND.get(kind, stat_.S_IFREG), None, place
            else:
                attr = attr_of(e)
                yield name.encode(), id_, attr.mode, attr, place

    def mkdir(self, ctx: Ctx, parent: int, name: bytes, mode: int) -> Attr:
        with self.lock, _errno:
            return attr_of(self.pool.make_dir(parent, _name(name), mode, ctx.uid, ctx.gid))

    def rmdir(self, ctx: Ctx, parent: int, name: bytes) -> None:
        with self.lock, _errno:
            self.pool.remove(parent, _name(name), rmdir=True)

    def unlink(self, ctx: Ctx, parent: int, name: bytes) -> None:
        with self.lock, _errno:
            self.pool.remove(parent, _name(name), rmdir=False)

    def rename(self, ctx: Ctx, parent: int, name: bytes, new_parent: int, new_name: bytes, flags: int) -> None:
        if flags & RENAME_EXCHANGE:
            raise FuseError(errno.EINVAL)  # copies may sit on different drives: see docs
        with self.lock, _errno:
            self.pool.move(parent, _name(name), new_parent, _name(new_name), noreplace=bool(flags & RENAME_NOREPLACE))

    def symlink(self, ctx: Ctx, parent: int, name: bytes, target: bytes) -> Attr:
        with self.lock, _errno:
            return attr_of(self.pool.make_node(parent, _name(name), stat_.S_IFLNK | 0o777, ctx.uid, ctx.gid,
                                               target=_name(target, PATH_MAX - 1)))

    def readlink(self, ctx: Ctx, ino: int) -> bytes:
        node = self._look(lambda pool: pool.node(ino))
        self.answer_timeout()  # (a link's target is not kept for a while: nothing to tell)
        if node.target is None:
            raise FuseError(errno.EINVAL)
        return node.target.encode()

    def mknod(self, ctx: Ctx, parent: int, name: bytes, mode: int, rdev: int) -> Attr:
        with self.lock, _errno:
            if stat_.S_ISREG(mode):
                node, f = self.pool.create_file(parent, _name(name), mode, ctx.uid, ctx.gid)
                self._finish(f)
                return attr_of(self.pool.node(node.id))
            return attr_of(self.pool.make_node(parent, _name(name), mode, ctx.uid, ctx.gid, rdev=rdev))

    def link(self, ctx: Ctx, ino: int, new_parent: int, new_name: bytes) -> Attr:
        with self.lock, _errno:
            return self._attr(self.pool, self.pool.make_link(ino, new_parent, _name(new_name)))

    # -- files ---------------------------------------------------------------------------

    def _handle(self, ctx: Ctx, f: LiveFile, node: Node, flags: int, keep_cache: bool = False) -> Opened:
        """Under the lock: a handle for `f` (a handle on `node`, opened by `ctx` with `flags`),
        passed through to the kernel when it can be."""
        f.mappable = flags & os.O_ACCMODE == os.O_RDWR
        f.keeps_set_id = ctx.uid == 0
        backing = self._backing.get(f.node_id)
        # The kernel does not clear set-id bits on writes it makes itself, and leaves that to us
        # (HANDLE_KILLPRIV_V2): a set-id file is not passed through (they are rare in a pool).
        set_id = self.session is not None and self.session.kills_set_id and node.mode & 0o6000
        if backing is None and self.session is not None and not set_id and not self._others(f) \
                and self.pool.may_pass_through(f):
            # The first handle on a 1-copy file: the kernel does its I/O on the drive's file.
            backing_id = self.session.backing_open(f.read_fd)
            if backing_id is not None:
                backing = self._backing[f.node_id] = [backing_id, 0]
        if backing is not None and not f.single:
            # The inode is passed through, but this handle would have to write every copy.
            self._finish(f)
            raise FuseError(errno.ETXTBSY)
        fh = next(self._next_fh)
        self._files[fh] = f
        if not f.writable:
            (d,) = f.fds
            self._readers[d] = self._readers.get(d, 0) + 1
            self._reading[fh] = d
        if backing is None:
            f.direct = self._direct(f)
            return Opened(fh, keep_cache=keep_cache, direct=f.direct)
        backing[1] += 1
        self.pool.pass_through(f, node)
        if f.writable and not f.keeps_set_id:
            f.opener_groups = self._groups(ctx)  # for `_wrote_unseen`
        return Opened(fh, backing_id=backing[0])

    def _direct(self, f: LiveFile) -> bool:
        """Whether a handle's reads and writes skip the kernel's page cache (come here as they
        are). A writer alone on a file does: its data goes straight to every copy rather than
        first into the page cache too (writes to two copies ran at twice the speed). Anyone
        opening the file while such a writer is open does too: the kernel drops cached pages
        before a direct write, but a read between that and the write's end would cache the
        old data again. Shared mmap of such handles the kernel keeps coherent itself
        (DIRECT_IO_ALLOW_MMAP, Linux >= 6.6; without it, no handle goes direct)."""
        if self.session is None or not self.session.direct_io:
            return False
        others = self._others(f)
        return any(h.direct for h in others) or (f.writable and not others)

    def _others(self, f: LiveFile) -> list[LiveFile]:
        """The other handles on `f`'s file, but for those the kernel has closed (being released:
        they are still hashed and recorded, but the kernel holds no file of them)."""
        return [h for h in self.pool.handles(f.node_id) if h is not f and not h.closing]

    def create(self, ctx: Ctx, parent: int, name: bytes, mode: int, flags: int) -> tuple[Attr, Opened]:
        with self.lock, _errno:
            node, f = self.pool.create_file(parent, _name(name), mode, ctx.uid, ctx.gid)
            self._cached.pop(node.id, None)
            return attr_of(node), self._handle(ctx, f, node, flags)

    def open(self, ctx: Ctx, ino: int, flags: int, kill_set_id: bool = False) -> Opened:
        """`kill_set_id`: an O_TRUNC by a user who may not keep set-id bits clears them. An
        open for reading waits for a change holding the lock as a look does, then opens past
        it if it can (`_open_past_a_stall`)."""
        write = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC))
        if not write and not self._lock_for_a_look():
            if self.lock.held_for() >= LOOK_WAIT:  # a change that holds it (not one of many at once)
                self._held_up = True
                opened = self._open_past_a_stall(ino)
                if opened is not None:
                    return opened
            self.lock.acquire()
        elif write:
            self.lock.acquire()
        try:
            self._held_up = False
            with self._handles:
                self._opening.add(ino)
            self._adopt_handles()  # one opened past the lock just before this: `_handle` sees it
            try:
                return self._open(ctx, ino, flags, write, kill_set_id)
            finally:
                with self._handles:
                    self._opening.discard(ino)
        finally:
            self.lock.release()

    def _open(self, ctx: Ctx, ino: int, flags: int, write: bool, kill_set_id: bool) -> Opened:
        with _errno:
            f = self.pool.open_file(ino, write=write, busy=self._readers)
            if flags & os.O_TRUNC and f.size:
                self.pool.set_attrs(ino, size=0, handle=f)
            if flags & os.O_TRUNC and kill_set_id:
                self.pool.clear_set_id(ino, f, self._in_group(ctx, self.pool.node_as_set(ino)))
            node = self.pool.node(ino)
            # The kernel may keep this file's cached pages only if its content is what it was at
            # the last open (it may have been replaced since; the hash says so).
            keep = not write and self._cached.get(node.id) == node.hash and node.hash is not None
            self._cached[node.id] = node.hash if not write else None
            return self._handle(ctx, f, node, flags, keep_cache=keep)

    def _open_past_a_stall(self, ino: int) -> Opened | None:
        """Open a file for reading while a change has held the lock a while (a drive that does
        not answer, see `_look`): a file no handle has open and none is opening under the
        lock, on a copy that is what the catalog as last committed says, and says again once
        the drive has opened it (size and time, and no journaled change on its path: a
        rename is recorded before its drive steps, so a drive not renamed yet may have
        another file there). Its reads come here (which files the kernel reads itself is
        decided under the lock). The pool learns of the handle when the lock is next taken
        (`_adopt_handles`); one closed before that needs no lock either. None: wait for the
        lock after all."""
        if ino in self._backing or self.pool.handles(ino) or ino in self._opening:
            return None
        glance = self._glance or self._open_glance()
        try:
            with glance.lock, glance.snapshot(), _errno:
                node = glance.node(ino)
                if not node.is_file:
                    return None
                path, drives = glance.copies(ino)
        except Unsure:
            return None
        except sqlite3.Error as e:
            log.warning("reading the catalog past a stuck change: %s", e)
            return None
        readers = dict(self._readers)
        for d, size, mtime_ns in sorted(drives, key=lambda c: readers.get(c[0].id, 0)):
            try:
                fd = d.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # (a copy at fault is marked so by an open under the lock)
            try:
                st = os.fstat(fd)
                same = stat_.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (size, mtime_ns)
                if same:  # and still the file's: the stall may have ended, and renames landed, meanwhile
                    with glance.lock, glance.snapshot():
                        same = glance.still(ino, path, d.id, size, mtime_ns)
            except (OSError, sqlite3.Error):
                same = False
            if not same:
                os.close(fd)
                continue
            f = LiveFile(ino, path, {d.id: fd}, node.size, writable=False, single=len(drives) == 1)
            f.mappable = False
            f.direct = self.session is not None and self.session.direct_io
            with self._handles:
                # Being opened under the lock, or opened there meanwhile: that open decides.
                if ino in self._opening or ino in self._backing or self.pool.handles(ino):
                    fh = 0
                else:
                    fh = next(self._next_fh)
                    self._files[fh] = f
                    self._unadopted[fh] = (f, node)
            if not fh:
                f.close()
                return None
            return Opened(fh, direct=f.direct)
        return None

    def _opened_past(self, ino: int) -> bool:
        """Whether a handle opened past the lock, not yet the pool's, is on inode `ino`."""
        return any(f.node_id == ino for handles in (self._unadopted, self._adopting)
                   for f, _ in list(handles.values()))

    def _adopt_handles(self) -> None:
        """When the lock is taken: the handles opened past a stall join the pool's."""
        if not self._unadopted:
            return
        with self._handles:  # (a glance at one meanwhile still finds it: `_opened_past`)
            self._adopting, self._unadopted = self._unadopted, {}
        try:
            for fh, (f, node) in self._adopting.items():
                try:
                    self.pool.adopt(f, node)
                except Exception:  # (a handle it could not look at stays as it was opened)
                    log.exception("taking in %s, opened while the pool was held up", f.path)
                (d,) = f.fds
                self._readers[d] = self._readers.get(d, 0) + 1
                self._reading[fh] = d
        finally:
            self._adopting = {}

    def read(self, fh: int, off: int, size: int, wait: bool = True) -> bytes:
        """Without `wait`: BlockingIOError if the data is not in memory (`LiveFile.read`)."""
        f = self._files[fh]
        while True:
            fds = f.fds
            try:
                return f.read(size, off, wait)
            except OSError as e:
                if not wait and isinstance(e, BlockingIOError):
                    raise  # (not a failure: the caller reads again, waiting)
                if f.writable:
                    raise FuseError(e.errno or errno.EIO) from None
                # This copy failed mid-read: mark it, and carry on from another copy.
                with self.lock, _errno:
                    if f.fds is not fds:
                        continue  # moved to another copy meanwhile (adopted past a stall): read that
                    (drive_id, fd), = f.fds.items()
                    self.pool.copy_failed(f.node_id, self.pool.drive(drive_id), e)
                    f.failed.add(drive_id)
                    fd2, drive = self.pool.open_copy(f.node_id, exclude=frozenset(f.failed), busy=self._readers)
                    f.retired.append(fd)  # closed with the handle: a read on another thread may hold it
                    self._readers[self._reading[fh]] -= 1
                    self._readers[drive.id] = self._readers.get(drive.id, 0) + 1
                    self._reading[fh] = drive.id
                    f.fds = {drive.id: fd2}

    def write(self, fh: int, off: int, data: memoryview, kill_suidgid: bool = False, ctx: Ctx | None = None) -> int:
        """`kill_suidgid`: the writer (`ctx`) may not keep set-id bits, which it clears."""
        f = self._files[fh]
        cleared = False
        with self.lock, _errno:
            self.pool.will_change(f)
            if kill_suidgid:
                cleared = self.pool.clear_set_id(f.node_id, f, self._in_group(ctx, self.pool.node_as_set(f.node_id)))
        if cleared:
            self._mode_changed(f.node_id)
        with _errno:
            failed = f.write(data, off)
        if failed:
            with self.lock, _errno:
                self.pool.copies_failed(f, failed, lambda fds: f.write(data, off, fds))
        return len(data)

    def flush(self, fh: int, pid: int = 0) -> None:
        """Each close() (by process `pid`): the catalog records the file as it is now (release
        may come later)."""
        f = self._files[fh]
        if f.passthrough and f.mappable and not f.mapped:
            f.mapped = _maps_shared(pid, (f.node_id, os.fstat(f.read_fd).st_ino))
        if f.dirty:
            cleared = False
            with self.lock:
                if self._wrote_unseen(f):
                    # Set-id bits set while the kernel wrote for this user: cleared as its writes would have.
                    with _errno:
                        gid = self.pool.node_as_set(f.node_id).gid
                        cleared = self.pool.clear_set_id(f.node_id, f, gid in f.opener_groups)
                self.pool.releasing(f)
            if cleared:
                self._mode_changed(f.node_id)
            with _errno:
                result = f.settle()
            with self.lock, _errno:
                self.pool.record_file(f, result)

    def _in_group(self, ctx: Ctx | None, node: Node) -> bool:
        """Whether the process that made a request may keep a file's set-group-id bit without
        group execute: root, or in the file's group. No request (`ctx` None): yes."""
        if ctx is None or ctx.uid == 0 or ctx.gid == node.gid or not node.mode & stat_.S_ISGID:
            return True
        return node.gid in self._groups(ctx)

    @staticmethod
    def _groups(ctx: Ctx) -> frozenset[int]:
        """The groups of the process that made a request: its own and its supplementary ones
        (/proc/PID/status; read only when it matters)."""
        try:
            with open(f"/proc/{ctx.pid}/status") as status:
                extra = next((line.split()[1:] for line in status if line.startswith("Groups:")), [])
        except OSError:
            extra = []
        return frozenset({ctx.gid, *map(int, extra)})

    def _mode_changed(self, ino: int) -> None:
        """Set-id bits cleared without a setattr: the kernel's cached mode goes (not its data)."""
        if self.session is not None:
            self.session.forget_inode(ino, data=False)

    def _wrote_unseen(self, f: LiveFile) -> bool:
        """Whether the kernel wrote `f`'s copy itself (passed through) for a user who may not
        keep set-id bits, since the file was last recorded (with HANDLE_KILLPRIV_V2 it
        clears no bit on such writes, nor sends them here)."""
        if not (f.passthrough and f.writable and not f.keeps_set_id and f.known is not None
                and self.session is not None and self.session.kills_set_id):
            return False
        st = os.fstat(f.read_fd)
        return (st.st_size, st.st_mtime_ns) != f.known[:2]

    def fsync(self, fh: int, datasync: bool) -> None:
        f = self._files[fh]
        with _errno:
            failed = f.fsync(datasync)
        if failed:
            with self.lock, _errno:
                self.pool.copies_failed(f, failed, lambda fds: f.fsync(datasync))
        self.fsyncdir()  # the file's name and copies, too

    def fsyncdir(self) -> None:
        """The catalog is every directory: what it has recorded reaches the disk, with the
        renames and deletes still in a group (see `Pool.group_steps`)."""
        if self.pool.group_waiting.is_set():
            with self.lock, _errno:
                self.pool.settle_steps()
        with _errno:
            self.pool.sync_catalog()

    def release(self, fh: int) -> None:
        with self._handles:
            unadopted = self._unadopted.pop(fh, None)
            if unadopted is not None:
                del self._files[fh]
        if unadopted is not None:  # opened past a stall, not yet the pool's: nothing to record or count
            unadopted[0].finish()
            return
        unused = None  # a passthrough id no handle uses now
        with self.lock:
            f = self._files.pop(fh, None)
            if f is None:
                return
            if fh in self._reading:  # (its copy may have moved since: `Pool._move_copy`)
                self._readers[self._reading.pop(fh)] -= 1
            if f.passthrough:
                backing = self._backing[f.node_id]
                backing[1] -= 1
                if backing[1] == 0:
                    del self._backing[f.node_id]
                    unused = backing[0]
            self.pool.releasing(f, closing=True)
        if unused is not None:  # (an open meanwhile gets an id of its own)
            assert self.session is not None
            self.session.backing_close(unused)
        with _errno:
            result = f.finish()
        with self.lock, _errno:
            self.pool.release_file(f, result)

    def _finish(self, f: LiveFile) -> None:
        """Under the lock: close a handle the kernel never saw."""
        self.pool.releasing(f, closing=True)
        self.pool.release_file(f, f.finish())

    # -- extended attributes (kept on the copies, which all carry the same ones) -------------

    def getxattr(self, ctx: Ctx, ino: int, name: bytes) -> bytes:
        if name.startswith((b"security.", b"system.")):
            # Asked before every write and exec (security.capability): answered without a drive.
            raise FuseError(errno.ENODATA)
        with self.lock, _errno:
            value = self.pool.copy_xattrs(ino).get(name)
        if value is None:
            raise FuseError(errno.ENODATA)
        return value

    def listxattr(self, ctx: Ctx, ino: int) -> list[bytes]:
        with self.lock, _errno:
            return [n for n in self.pool.copy_xattrs(ino) if n.startswith(KEPT_XATTRS_B)]

    def setxattr(self, ctx: Ctx, ino: int, name: bytes, value: bytes, flags: int) -> None:
        if not name.startswith(KEPT_XATTRS_B):
            raise FuseError(errno.ENOTSUP)  # security.* and ACLs are not kept (see docs)
        with self.lock, _errno:
            if flags & (XATTR_CREATE | XATTR_REPLACE):
                there = name in self.pool.copy_xattrs(ino)
                if flags & XATTR_CREATE and there:
                    raise FuseError(errno.EEXIST)
                if flags & XATTR_REPLACE and not there:
                    raise FuseError(errno.ENODATA)
            self.pool.set_xattr(ino, name, value)

    def removexattr(self, ctx: Ctx, ino: int, name: bytes) -> None:
        if not name.startswith(KEPT_XATTRS_B):
            raise FuseError(errno.ENODATA)
        with self.lock, _errno:
            self.pool.set_xattr(ino, name, None)

    # -- the filesystem ------------------------------------------------------------------

    def statfs(self, ctx: Ctx) -> StatFs:
        """Pool-wide totals (copies counted), at most STATFS_TTL seconds old: `df` and Samba ask
        often, and the sums behind them grow with the pool (they run without the lock)."""
        cached = self._statfs
        if cached is not None and time.monotonic() - cached[0] < STATFS_TTL:
            return cached[1]
        with _errno:
            used, files = self.pool.cat.totals()
        if not self._lock_for_a_look():
            if cached is not None:
                return cached[1]  # a change is stuck (see `_look`): the last answer will do meanwhile
            self.lock.acquire()
        try:
            with _errno:
                size, free = self.pool.space(used)
        finally:
            self.lock.release()
        blocks, bfree = size // BLOCK, free // BLOCK
        # like ext4: inodes are not the limit here
        answer = StatFs(blocks=blocks, bfree=bfree, bavail=bfree, files=files + bfree, ffree=bfree,
                        bsize=BLOCK, namelen=255)
        self._statfs = (time.monotonic(), answer)
        return answer

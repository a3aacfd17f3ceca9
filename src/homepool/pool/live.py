"""The mount's side of the pool: files changed in place, in real time, on all their copies.

An import stages whole files and switches them into place (`core`). A program writing through
the mount writes into the plain files on the drives as it goes, as on any local filesystem.
This module is that path, by node id (the mount's inode numbers):

- `LiveFile` is one open file: a descriptor on each of its copies. Its methods only do drive
  I/O and run in worker threads: a write goes to every copy at once (each extra copy on its own
  thread, so one drive never waits for another), `fsync` returns once every copy has it.
- `LiveOps` are the `Pool` methods the mount calls. They decide and keep the catalog, on the
  mount's event loop thread (the catalog is one SQLite connection).

Crash safety. A file being changed has a 'live' journal row (its node, path and copies) from
its first change until its release records size, time and hash. A crash leaves the row; when
the pool is next opened for writing, the first copy still there is taken as the file, hashed,
recorded, and the other copies are re-made from it. Creates, deletes and renames use the
journal ops of `core` ('drop', 'rename') like every other change, but through the mount the
drives are not flushed after each one (`Pool.go_live`): a killed daemon loses nothing (the
kernel has the writes), and against power loss the pool is as durable as a local filesystem:
`fsync` is honoured on every copy.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import sqlite3
import stat as stat_
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import paths, placement
from ..catalog import ROOT_ID, Catalog, Listed, Node, Replica
from ..config import env_number
from ..drives import Drive
from ..errors import (
    AlreadyExists,
    DirectoryNotEmpty,
    HomepoolError,
    IsADirectory,
    LinksAcrossFolders,
    NotFound,
    NotInFolder,
    PoolFull,
)
from ..errors import NotADirectory as NotADir
from ..log import name_os_thread
from ..streams import CHUNK, hash_fd, new_hasher
from ..units import human
from .ondrive import copy_is_at_fault, copy_xattrs, keep_aside, link_name, make_entry, unlink_names

if TYPE_CHECKING:
    from ..catalog import Catalog
    from ..config import PoolConfig
    from .newfiles import NewFiles

log = logging.getLogger(__name__)

EMPTY_HASH = new_hasher().hexdigest()
# Free bytes a drive needs for writes to skip the mount (see may_pass_through); the environment
# variable HOMEPOOL_PASSTHROUGH_ROOM overrides it.
PASSTHROUGH_ROOM = 4 << 30
DRIVES_TTL = 2.0  # seconds the mount trusts its drive snapshot (an I/O error refreshes it sooner)
# Errors about the request, not the copy: every copy gives them alike (see `copies_failed`).
REQUEST_ERRORS = {errno.EFBIG, errno.EINVAL, errno.EOVERFLOW}
LINK_MAX = 65000  # names a file may have, as on ext4

# Extra copies are written on these threads while the calling thread writes the first copy
# (or hashes what a write of at least HASH_ALONGSIDE bytes to several copies brings).
HASH_ALONGSIDE = 64 << 10
_mirror = ThreadPoolExecutor(max_workers=32, thread_name_prefix="mirror", initializer=name_os_thread)


# A close's record (`LiveOps.record_file`): the handle, the journal row it ends, the size, time
# and hash it records (if new), and the attributes set on the handle.
CloseRecord = tuple["LiveFile", int | None, tuple[int, int, str] | None, dict[str, int]]
# A file created in the open group: its node, path, drives, journal row and group number, as made.
NewCreate = tuple[Node, str, list[int], int, int]


class Looked(NamedTuple):
    """What the mount looked up before it records a rename or delete, so that recording it
    need not look again: a rename's name it replaces (None: none), a delete's file's copies.
    Good only while no group has been undone since (`undone`: `Pool.groups_undone` then)."""

    undone: int
    old: Node | None = None
    replicas: list[Replica] = []


def _pwrite_all(fd: int, data: bytes | memoryview, off: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, off)
        view, off = view[n:], off + n


class Gate:
    """One file's changes through any of its handles (many at once) against one of its copies
    moving to another drive (alone): a change never lands on a copy being moved away. A move
    waiting goes first: new changes wait behind it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond: threading.Condition | None = None  # on `_lock`, made by the first wait (rare)
        self._changing = 0
        self._moving = False
        self._waiting = 0  # moves waiting for the changes under way
        self._change = _Change(self)

    def _waits(self) -> threading.Condition:
        """(Under `_lock`.)"""
        if self._cond is None:
            self._cond = threading.Condition(self._lock)
        return self._cond

    def changing(self) -> _Change:
        """(Never taken twice by one thread: a move waiting would keep the second one out.)"""
        return self._change  # (every write and close takes it: one object, not a generator each time)

    def _begin_change(self) -> None:
        with self._lock:
            if self._moving or self._waiting:
                self._waits().wait_for(lambda: not self._moving and not self._waiting)
            self._changing += 1

    def _end_change(self) -> None:
        with self._lock:
            self._changing -= 1
            if self._waiting:  # (only a move waits for changes to end)
                self._waits().notify_all()

    @contextmanager
    def moving(self) -> Iterator[None]:
        """Waits for the changes under way (they hold no other lock) and holds off new ones."""
        with self._lock:
            self._waiting += 1
            try:
                self._waits().wait_for(lambda: not self._moving and not self._changing)
            finally:
                self._waiting -= 1
                self._waits().notify_all()  # (if the wait ended in an exception, changes may go on)
            self._moving = True
        try:
            yield
        finally:
            with self._lock:
                self._moving = False
                self._waits().notify_all()


class _Change:
    """`Gate.changing()`: held while a change is made through one of the file's handles."""

    __slots__ = ("_gate",)

    def __init__(self, gate: Gate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        self._gate._begin_change()

    def __exit__(self, *exc: object) -> None:
        self._gate._end_change()


class LiveFile:
    """One open file of the mount: descriptors on its copies. Drive I/O only (thread-safe)."""

    # What a handle starts with (set on the handle when it changes; a handle is made at every
    # open and create, so the defaults are the class's rather than set each time).
    # Passed through: the kernel reads and writes the copy itself, so changes are found by
    # looking at it (`known`: size, mtime, ctime and hash when last recorded).
    passthrough = False
    direct = False  # its reads and writes skip the kernel's page cache (the mount decides)
    mappable = True  # open for reading and writing: a shared mapping could write it
    mapped = False  # a program had it mapped (shared) when it closed it (the mount looks)
    keeps_set_id = True  # opened by root: its writes leave set-id bits (see `clear_set_id`)
    opener_groups: frozenset[int] = frozenset()  # a passed-through writer's (see `keeps_set_id`)
    known: tuple[int, int, int, str | None] | None = None
    recorded: tuple[int, int, str] | None = None  # what the last close recorded
    closing = False  # being released: its descriptors are about to close
    mtime_ns = 0  # of the last change made through this handle
    journal_id: int | None = None  # set from the first change until the release records it
    changed = False  # written or truncated through this handle
    unlinked = False  # deleted while open: reads go on, nothing is recorded
    tells_cached = True  # its drive's filesystem can read from memory only (RWF_NOWAIT)
    seen = 0  # the node's change count when `settle` looked at the copies

    def __init__(self, node_id: int, path: str, fds: dict[int, int], size: int, writable: bool,
                 single: bool = False) -> None:
        self.node_id = node_id
        self.path = path
        self.fds = fds  # drive id -> descriptor on that drive's copy (the first one is read)
        self.writable = writable
        self.single = single  # the file has this one copy: nothing to mirror or fall back to
        self.size = size
        self.attrs: dict[str, int] = {}  # attributes set while open, recorded at the next close
        self.held: list[int] = []  # the copies it had when it was finished
        self.failed: set[int] = set()  # drives whose copy failed a read
        # Descriptors of copies dropped or moved while open: closed only with the handle, as a
        # write on another thread may still hold the number (closing it could let a new file
        # reuse it mid-write).
        self.retired: list[int] = []
        self.gate = Gate()  # shared by the file's handles (`LiveOps.opened`)
        self._lock = threading.Lock()
        # The content hash is kept up as long as writes come in order from offset 0 (the usual
        # case); otherwise the file is hashed again when it is released.
        self._hasher = new_hasher() if size == 0 else None
        self._hashed = 0

    @property
    def read_fd(self) -> int:
        return next(iter(self.fds.values()))

    @property
    def dirty(self) -> bool:
        return self.journal_id is not None

    def write(self, data: bytes | memoryview, off: int, fds: dict[int, int] | None = None) -> list[tuple[int, OSError]]:
        """Write to every copy (or those in `fds`) at once; returns the copies that failed."""
        with self.gate.changing():
            return self._write(data, off, fds)

    def _write(self, data: bytes | memoryview, off: int, fds: dict[int, int] | None) -> list[tuple[int, OSError]]:
        failed: list[tuple[int, OSError]] = []
        items = list((fds or self.fds).items())
        if not items:
            raise OSError(errno.EIO, f"no copy of {self.path} is left")
        # A big write to several copies: every copy on its own thread and the hash here, all
        # at once (hashing 1 MiB costs about as much as writing it to one copy).
        alongside = len(items) > 1 and len(data) >= HASH_ALONGSIDE
        extra: list[tuple[int, Future[None]]] = [(d, _mirror.submit(_pwrite_all, fd, data, off))
                                                 for d, fd in items[0 if alongside else 1:]]
        if alongside:
            self._hash(data, off)
        else:
            try:
                _pwrite_all(items[0][1], data, off)
            except OSError as e:
                failed.append((items[0][0], e))
        for d, fut in extra:
            try:
                fut.result()
            except OSError as e:
                failed.append((d, e))
        if len(failed) == len(items):
            if alongside:
                with self._lock:
                    self._hasher = None  # it hashed what no copy has: hashed again at release
            return failed
        if not alongside:
            self._hash(data, off)
        with self._lock:
            self.size = max(self.size, off + len(data))
            self.mtime_ns = time.time_ns()
            self.changed = True
        return failed

    def move_copy(self, old: int, new: int, fd: int) -> None:
        """Its copy on drive `old` is now the one on drive `new` (`fd`), in the same place
        among its copies (the first is read). Under its gate (`LiveOps._move_copy`)."""
        self.retired.append(self.fds[old])
        self.fds = {new if d == old else d: fd if d == old else d_fd for d, d_fd in self.fds.items()}

    def drop_hash(self) -> None:
        """Another handle changed the file: what this one hashed no longer covers it."""
        with self._lock:
            self._hasher = None

    def _hash(self, data: bytes | memoryview, off: int) -> None:
        with self._lock:
            if self._hasher is not None and off == self._hashed:
                self._hasher.update(data)
                self._hashed += len(data)
            else:
                self._hasher = None  # out of order: hashed again at release

    def truncate(self, size: int, fds: dict[int, int] | None = None) -> list[tuple[int, OSError]]:
        failed = self._each(lambda fd: os.ftruncate(fd, size), fds)
        if len(failed) == len(fds or self.fds):
            return failed  # nothing changed
        with self._lock:
            if size == 0:
                self._hasher, self._hashed = new_hasher(), 0
            elif size != self._hashed:
                self._hasher = None
            self.size = size
            self.mtime_ns = time.time_ns()
            self.changed = True
        return failed

    def change(self, cols: dict[str, int], atime_ns: int | None) -> None:
        """chown, chmod and utimens on every copy, through its descriptor (`set_attrs`' columns).
        Under the handle's lock: `close` cannot take the descriptors away meanwhile."""
        with self._lock:
            for d, fd in self.fds.items():
                try:
                    if "uid" in cols:
                        os.fchown(fd, cols["uid"], cols["gid"])
                    if "mode" in cols:
                        os.fchmod(fd, cols["mode"] & 0o7777)
                    if "mtime_ns" in cols or atime_ns is not None:
                        m = cols["mtime_ns"] if "mtime_ns" in cols else os.fstat(fd).st_mtime_ns
                        os.utime(fd, ns=(m if atime_ns is None else atime_ns, m))
                except OSError as e:
                    log.error("could not change %s on drive %d: %s", self.path, d, e)

    def fsync(self, datasync: bool = False) -> list[tuple[int, OSError]]:
        return self._each(os.fdatasync if datasync else os.fsync)

    def _each(self, fn: Callable[[int], Any], fds: dict[int, int] | None = None) -> list[tuple[int, OSError]]:
        """Run `fn` on every copy's descriptor (or those in `fds`) at once."""
        failed = []
        with self.gate.changing():
            if not (fds or self.fds):
                raise OSError(errno.EIO, f"no copy of {self.path} is left")
            futs = [(d, _mirror.submit(fn, fd)) for d, fd in (fds or self.fds).items()]
            for d, fut in futs:
                try:
                    fut.result()
                except OSError as e:
                    failed.append((d, e))
        return failed

    def read(self, size: int, off: int, wait: bool = True) -> bytes:
        """`size` bytes at `off` (fewer at the end). Without `wait`, only from memory: a
        BlockingIOError if the drive would have to be asked (the page cache does not hold it
        all); on a filesystem that cannot tell (tmpfs, vfat, exFAT), as with `wait`."""
        fd = self.read_fd
        if wait or not self.tells_cached:
            return os.pread(fd, size, off)
        buf = bytearray(size)
        try:
            n = os.preadv(fd, [buf], off, os.RWF_NOWAIT)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            self.tells_cached = False  # (it will not learn)
            return os.pread(fd, size, off)
        if n < size and off + n < os.fstat(fd).st_size:
            raise BlockingIOError(errno.EAGAIN, "the rest is on the drive only")
        return bytes(buf[:n]) if n < size else bytes(buf)

    def settle(self, again: bool = False) -> tuple[int, int, str] | None:
        """At close: give every copy the same time, hash the content if writes came out of
        order (or, `again`, a passed-through copy whatever its size and times say). Returns
        (size, mtime_ns, hash) to record, None if there is nothing to record. The copies it
        looks at (`held`) stay what they are while it looks (a move waits: `Gate`); a
        hash that takes a while is made after, on the copy as it was (a descriptor of a copy
        moved meanwhile stays open until the handle closes)."""
        with self.gate.changing():
            self.held = list(self.fds)
            if not self.dirty or self.unlinked or not self.fds:
                return None
            first = self.read_fd
            st = os.fstat(first)
            if self.passthrough:
                now = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
                known = self.known[3] if self.known is not None and now == self.known[:3] and not again else None
            else:
                for fd in list(self.fds.values())[1:]:
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
                with self._lock:
                    known = self._hasher.hexdigest() if self._hasher is not None and self._hashed == st.st_size \
                        else None
        digest = known or hash_fd(first)
        if self.passthrough:
            self.known = (*now, digest)
        return st.st_size, st.st_mtime_ns, digest

    def looked_at(self) -> tuple[int, int] | None:
        """(size, mtime) of the file as its copy has them now (None once closed)."""
        with self._lock:
            if not self.fds:
                return None  # closed
            st = os.fstat(self.read_fd)
        return st.st_size, st.st_mtime_ns

    def finish(self) -> tuple[int, int, str] | None:
        """At release: `settle`, then close every copy. A passed-through copy that a program
        had mapped when it closed it is hashed again: the mapping may have written it after
        the close without changing its times (its pages stay writable until written back)."""
        try:
            return self.settle(again=self.mapped)
        finally:
            with self.gate.changing():
                self.close()

    def close(self) -> None:
        with self._lock:  # detached first: `looked_at` on another thread never sees a closed one
            fds, self.fds, self.retired = [*self.fds.values(), *self.retired], {}, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError as e:
                log.warning("closing a copy of %s: %s", self.path, e)


def _ahead(handles: Iterable[LiveFile]) -> bool:
    """Whether a file's open handles may show it otherwise than the catalog: one writes, or
    holds attributes set and not yet recorded. (`tuple` copies a list of them in one step.)"""
    return any(f.writable or f.attrs for f in tuple(handles))


class LiveOps:
    """The `Pool` methods the mount uses (mixed into `Pool`)."""

    if TYPE_CHECKING:  # what this mixin uses of `Pool`
        cat: Catalog
        config: PoolConfig
        live: bool
        drive_cache: tuple[float, list[Drive]] | None
        _changed: bool
        _open: dict[int, list[LiveFile]]
        _orphans: dict[int, Node]
        _changes: dict[int, int]
        _reconcile_at_release: set[int]
        _reconcile_soon: set[int]
        _dir_times: dict[int, int]
        _recording: set[int]
        grouping: bool
        groups_undone: int
        group_touched: set[int]
        _group_records: list[CloseRecord]
        _group_creates: list[NewCreate]
        _new_files: NewFiles | None
        retaken: list[int]

        def drives_by_id(self) -> dict[int, Drive]: ...
        def _drive_snapshot(self, present_only: bool = False) -> list[Drive]: ...
        def path_of(self, node_id: int) -> str: ...
        def lookup(self, path: str) -> Node | None: ...
        def _owe_removal(self, drive_id: int, path: str, size: int | None, mtime_ns: int | None,
                         p: dict) -> None: ...
        def copies_wanted(self, node_id: int) -> int: ...
        def _candidates(self, drives: list[Drive]) -> list[placement.Candidate]: ...
        def _look_at_room(self, drives: list[Drive]) -> list[placement.Candidate]: ...
        def add_folder(self, name: str, copies: int = 1, mode: int = 0o755, uid: int | None = None,
                       gid: int | None = None) -> Node: ...
        def _make_dir(self, parent_id: int, name: str, path: str, mode: int, uid: int | None, gid: int | None,
                      copies: int | None = None, drives: list[Drive] | None = None) -> Node: ...
        def folder(self, name: str) -> tuple[Node, int]: ...
        def _check_copies(self, copies: int) -> None: ...
        def delete(self, path: str) -> None: ...
        def rename(self, src: str, dst: str) -> None: ...
        def open_copy(self, node_id: int, exclude: frozenset[int] = frozenset(),
                      busy: dict[int, int] | None = None) -> tuple[int, Drive]: ...
        def copy_failed(self, node_id: int, drive: Drive, err: OSError) -> None: ...
        def _run(self, op: str, payload: dict, group: bool = False,
                 looked: Looked | None = None) -> list[int] | None: ...
        def settle_steps(self) -> None: ...
        def _drives_for(self, *paths: str, commit: bool = True) -> dict[int, Drive]: ...
        def _group_waits(self) -> None: ...
        def reconcile(self, node: Node) -> int: ...

    # -- the mount's session -----------------------------------------------------------------

    def go_live(self) -> None:
        """Serve a mount: no flush after each change (see the module docstring), a catalog
        commit that does not wait for the disk (it survives a killed process; the log is flushed
        every second, see `sync_catalog`), and a drive snapshot trusted for DRIVES_TTL seconds."""
        self.live = True
        self.passthrough_room = int(env_number("HOMEPOOL_PASSTHROUGH_ROOM", PASSTHROUGH_ROOM))
        self.cat.db.execute("PRAGMA synchronous=NORMAL")
        self.cat.keep_in_memory()

    def sync_catalog(self) -> None:
        """What the mount committed reaches the disk: every second (a power cut loses about a
        second of changes at most, as ext4 loses up to five), and at each fsync. No lock needed."""
        self.cat.sync_log()

    def node(self, node_id: int) -> Node:
        """A node as the mount shows it: a file being written has its current size and time."""
        return self._as_written(self.node_as_set(node_id))

    def _as_written(self, node: Node) -> Node:
        """`node` (`node_as_set`) with the size and time its open handles' writes gave it."""
        handles = self._open.get(node.id, ())
        # Every handle writes the same files: the size is the copy's, whichever wrote last.
        for f in handles:
            if (f.changed or f.passthrough and f.writable) and (seen := f.looked_at()) is not None:
                mtime = seen[1] if f.passthrough else max(node.mtime_ns, *(h.mtime_ns for h in handles))
                return node.but(size=seen[0], mtime_ns=mtime, ctime_ns=max(node.ctime_ns, mtime))
        return node

    def node_as_set(self, node_id: int) -> Node:
        """`node` but for a file's size and time as written: its attributes, with those set
        while it is open (what a setattr changes; the copy is not looked at)."""
        node = self.cat.node_or_none(node_id)
        if node is None:
            gone = self._orphans.get(node_id)
            if gone is None:
                raise NotFound(path=f"#{node_id}")
            node = gone
        node = self._with_dir_time(node)
        for f in self._open.get(node_id, ()):
            if f.attrs:
                node = node.but(**f.attrs)  # type: ignore[arg-type]  # int columns only
        return node

    def listing(self, node_id: int, after: int, most: int) -> list[Listed]:
        """A page of a directory's names (`Catalog.listing`), as the mount shows them."""
        return self.cat.listing(node_id, after, most)

    def _with_dir_time(self, node: Node) -> Node:
        """A directory with entries added or removed: its times as they are, not yet saved."""
        if (changed := self.dir_time(node.id)) is not None:
            return node.but(mtime_ns=changed, ctime_ns=max(changed, node.ctime_ns))
        return node

    # Without the lock, on any thread (dict lookups only: atomic in CPython, whatever the
    # lock's holder is doing): what a `Glance` lays over the catalog as last committed.

    def dir_time(self, node_id: int) -> int | None:
        """A directory's time since entries were added or removed, if not yet in the catalog."""
        return self._dir_times.get(node_id)

    def dir_times(self) -> dict[int, int]:
        """All of those (a copy)."""
        return self._dir_times.copy()

    def held_in_memory(self, node_id: int) -> bool:
        """Whether only `node` under the lock shows this node as the mount does: a file open
        here for writing (its size and times may be ahead of the catalog), or deleted while
        open, or being recorded at its close."""
        return node_id in self._orphans or node_id in self._recording or _ahead(self._open.get(node_id, ()))

    def all_held_in_memory(self) -> set[int]:
        """The nodes `held_in_memory` says so of (`list` copies the dict in one step)."""
        ahead = {id_ for id_, handles in list(self._open.items()) if _ahead(handles)}
        return ahead | set(self._orphans) | set(self._recording)

    def open_fds(self, node_id: int) -> list[int]:
        """Under the lock: descriptors on a file's copies held by its open handles (each copy
        once; not those of a handle being released, whose descriptors are about to close)."""
        seen: dict[int, int] = {}
        for f in self._open.get(node_id, ()):
            if f.closing:
                continue
            for drive_id, fd in f.fds.items():
                seen.setdefault(drive_id, fd)
        return list(seen.values())

    def handles(self, node_id: int) -> list[LiveFile]:
        """The mount's open handles on a file."""
        return self._open.get(node_id, [])

    def _being_written(self, node_id: int) -> bool:
        """Whether the mount has the file open for writing."""
        return any(f.writable for f in self._open.get(node_id, ()))

    def unlinked(self, node_id: int) -> bool:
        """A file deleted (or replaced) while open: it has no name left (nlink 0)."""
        return node_id in self._orphans and self.cat.node_or_none(node_id) is None

    def _dir_changed(self, *dir_ids: int) -> None:
        """Entries were added to or removed from these directories: their mtime and ctime are
        now. Kept here and shown at once, written to the catalog by `save_dir_times` (the
        mount does every second): a commit per change would cost more than the change."""
        now = time.time_ns()
        for d in dir_ids:
            self._dir_times[d] = now

    def catch_up(self) -> None:
        """What the mount holds back to save commits reaches the catalog (every second, and at
        unmount): directory times, and the removal of finished renames' and deletes' journal rows."""
        self.settle_steps()
        self.save_dir_times()
        self.cat.journal_flush()

    def notice_drives(self) -> None:
        """Look at the drives if the snapshot is older than DRIVES_TTL: a drive plugged back
        (or pulled) is noticed within seconds, not at the next request that looks, and what
        it is owed is made on it then (`settle_owed`)."""
        self._drive_snapshot()

    def copy_moved_files(self) -> None:
        """Give the files moved to another folder that folder's copies: on a thread of their
        own in the mount (`mount.serve`), every second, not in the rename (a big file's copy
        takes a while, and the kernel holds its rename locks until the rename returns)."""
        for node_id in list(self._reconcile_soon):  # (one queued again meanwhile waits for the next round)
            if node_id not in self._reconcile_soon:
                continue
            self._reconcile_soon.discard(node_id)
            try:
                self.reconcile_unless_open(node_id)
            except (HomepoolError, OSError) as e:
                log.error("could not give %s the copies of its folder: %s; `homepool check --repair` will",
                          self.path_of(node_id) if self.cat.node_or_none(node_id) else f"#{node_id}", e)
        self.cat.journal_flush()  # the drops it made

    def not_at_their_copies(self) -> list[int]:
        """The files short of copies, or with more than their folder wants, as last committed:
        the whole tree is read on a catalog connection of its own, without the lock (about
        2 s for half a million files)."""
        cat = Catalog(self.cat.path, readonly=True)
        try:
            return [node_id for node_id, _, _ in cat.short_files(or_over=True)]
        finally:
            cat.close()

    def queue_for_their_copies(self, node_ids: list[int]) -> list[int]:
        """Of files not at their folder's copies (`not_at_their_copies`), those whose copies
        are all on drives that are there (a mount that died before it gave a moved file its
        new folder's copies, say) get them as moved files do (`copy_moved_files`). One with a
        copy on a drive that is away waits for it (`check --repair` copies it elsewhere, when
        asked). Returns their ids."""
        present = {d.id for d in self._drive_snapshot(present_only=True)}
        queued = []
        for node_id in node_ids:
            copies = self.cat.replicas(node_id) if self.cat.node_or_none(node_id) else []
            # (One with no good copy left is `check`'s to report: there is nothing to copy.)
            if any(r.state == "ok" for r in copies) and all(r.drive_id in present for r in copies):
                queued.append(node_id)
        self._reconcile_soon.update(queued)
        return queued

    def save_dir_times(self) -> None:
        """Record the times `_dir_changed` kept (a crash loses at most these: no file's data)."""
        if self._dir_times:
            with self.cat.transaction():
                for d, t in self._dir_times.items():
                    self.cat.touch_dir(d, t)
            self._dir_times.clear()

    def _in_folder(self, parent_id: int, name: str, taken: bool = True) -> tuple[Node, str]:
        """The parent node and the new entry's pool path, for something made inside a folder
        (`taken`: refused if the name is, else the caller's insert finds out)."""
        parent = self.node(parent_id)
        if not parent.is_dir:
            raise NotADir(path=self.path_of(parent_id))
        if parent_id == ROOT_ID:
            raise NotInFolder(path=name)
        path = f"{self.path_of(parent_id)}/{name}"
        paths.split(path)  # a name no drive could hold is refused here, before anything changes
        if taken and self.cat.child(parent_id, name) is not None:
            raise AlreadyExists(path=path)
        return parent, path

    @staticmethod
    def _owner(parent: Node, mode: int, uid: int, gid: int) -> tuple[int, int, int]:
        """(mode, uid, gid) of a new entry: a set-group-ID directory passes its group on."""
        if parent.mode & stat_.S_ISGID:
            gid = parent.gid
            if stat_.S_ISDIR(mode):
                mode |= stat_.S_ISGID
        return mode, uid, gid

    # -- files -------------------------------------------------------------------------------

    def create_file(self, parent_id: int, name: str, mode: int, uid: int, gid: int) -> tuple[Node, LiveFile]:
        """A new empty file, open for writing, on as many drives (with room) as its folder wants."""
        parent, path = self._in_folder(parent_id, name, taken=False)  # (the kernel looked it up just now)
        mode, uid, gid = self._owner(parent, stat_.S_IFREG | (mode & 0o7777), uid, gid)
        drives = self._drives_for(path, commit=False)  # (renames and deletes elsewhere may go on waiting)
        cands = self._candidates(list(drives.values()))
        targets = placement.choose(self.config.placement, cands, 0, self.copies_wanted(parent_id))
        if not targets:
            raise PoolFull(path=path, size=human(0), largest=human(max((c.room for c in cands), default=0)))
        now = time.time_ns()
        with self.cat.transaction(grouped=self.grouping):
            try:
                node_id = self.cat.add_node(parent_id, name, "file", mode, now, 0, EMPTY_HASH, uid, gid)
            except sqlite3.IntegrityError:  # (the name is taken: nothing else could fail here)
                raise AlreadyExists(path=path) from None
            if self.grouping:  # in the open group: its copies are made before its commit, so noted first
                assert self._new_files is not None
                group = self.cat.group_number()
                self._new_files.note(path, targets, group)
            for d in targets:
                self.cat.set_replica(node_id, d, 0, now, EMPTY_HASH)
            journal = self.cat.journal_add("live", {"node": node_id, "path": path, "drives": targets})
        node = self.cat.node(node_id)  # (as inserted: in memory)
        if self.grouping:
            self.group_touched.update((parent_id, node_id))
            self._group_creates.append((node, path, targets, journal, group))
            self._group_waits()
        fds: dict[int, int] = {}
        for d in targets:
            try:
                fds[d] = self._create_copy(drives[d], path, mode, uid, gid)
            except OSError as e:
                log.error("could not create %s on %s: %s", path, drives[d].name, e)
        self._changed = True
        if not fds:  # as if it had never been made
            with self.cat.transaction():
                self.cat.delete_node(node_id)
                self.cat.journal_done(journal)
            raise OSError(errno.EIO, f"no drive could create {path}")
        f = LiveFile(node_id, path, fds, 0, writable=True, single=len(fds) == 1)
        f.journal_id = journal
        f.mtime_ns = now
        self.opened(f)
        self._dir_changed(parent_id)
        return node, f

    def _create_copy(self, d: Drive, path: str, mode: int, uid: int, gid: int) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = d.open(path, flags, mode & 0o7777)
        except FileExistsError:
            keep_aside(d, path)
            fd = d.open(path, flags, mode & 0o7777)
        except FileNotFoundError:
            d.makedirs(path.rpartition("/")[0])
            fd = d.open(path, flags, mode & 0o7777)
        os.fchown(fd, uid, gid)
        if mode & 0o7000:
            os.fchmod(fd, mode & 0o7777)  # set-id bits do not survive chown
        return fd

    def open_file(self, node_id: int, write: bool, busy: dict[int, int] | None = None) -> LiveFile:
        """Open a file: for reading, on the least busy good copy; for writing, on all of them."""
        node = self.node(node_id)
        if node.is_dir:
            raise IsADirectory(path=self.path_of(node_id))
        if not node.is_file:
            raise OSError(errno.ENXIO, "not a regular file")
        path = self.path_of(node_id)
        if not write:
            fd, source = self.open_copy(node_id, busy=busy)
            copies = sum(r.state == "ok" for r in self.cat.replicas(node_id))
            f = LiveFile(node_id, path, {source.id: fd}, node.size, writable=False, single=copies == 1)
        else:
            drives = self._drives_for(path)
            fds = {}
            for r in self.cat.replicas(node_id):
                d = drives.get(r.drive_id)
                if r.state != "ok" or d is None or d.row.state != "active":
                    continue
                try:
                    fds[d.id] = d.open(path, os.O_RDWR | os.O_CLOEXEC)
                except OSError as e:
                    self.copy_failed(node_id, d, e)
            if not fds:
                raise OSError(errno.EIO, f"no copy of {path} can be opened")
            f = LiveFile(node_id, path, fds, node.size, writable=True, single=len(fds) == 1)
        self.opened(f)
        return f

    def opened(self, f: LiveFile) -> None:
        """Count `f` among its file's handles, which share one `Gate`."""
        handles = self._open.setdefault(f.node_id, [])
        if handles:
            f.gate = handles[0].gate
        handles.append(f)

    def adopt(self, f: LiveFile, node: Node) -> None:
        """A handle the mount opened for reading without the lock, on `node` as the catalog had
        it then: counted among the file's handles. If the change that held the lock deleted
        the file meanwhile, it goes on as a file deleted while open; if it dropped the copy
        read, or put another file in its place there, the handle reads a copy of the file as
        it is now (as one opened under the lock would: later writes show)."""
        self.opened(f)
        if self.cat.node_or_none(f.node_id) is None:
            self._orphans.setdefault(f.node_id, node)
            f.unlinked = True
            return
        f.path = self.path_of(f.node_id)
        ((drive_id, fd),) = f.fds.items()
        d = self.drives_by_id().get(drive_id)
        held = d is not None and any(r.drive_id == drive_id and r.state == "ok" for r in self.cat.replicas(f.node_id))
        try:
            current = held and d is not None and os.path.samestat(os.fstat(fd), d.lstat(f.path))
        except OSError:
            current = False
        if not current:
            try:
                fd2, to = self.open_copy(f.node_id, exclude=frozenset() if held else frozenset({drive_id}))
            except (HomepoolError, OSError) as e:
                log.warning("%s, opened while the pool was held up, reads the copy it had: %s", f.path, e)
                return
            f.retired.append(fd)
            f.fds = {to.id: fd2}

    def may_pass_through(self, f: LiveFile) -> bool:
        """Whether the kernel may do `f`'s I/O itself: only for a file with one copy (nothing to
        mirror or fall back to), and for a writer only while its drive has `passthrough_room` (the
        kernel would hand ENOSPC to the program; here the file moves to a drive with room)."""
        if not f.single:
            return False
        if not f.writable:
            return True
        (drive_id,) = f.fds
        cands = self._candidates(self._drive_snapshot())  # (only their room: steps waiting may go on waiting)
        return any(c.drive_id == drive_id and c.room >= self.passthrough_room for c in cands)

    def pass_through(self, f: LiveFile, node: Node | None = None) -> None:
        """The kernel does `f`'s I/O on its copy from now on (`node`: the file, if at hand).
        What it writes is found at each close by looking at the copy; a writer is journaled
        from the start, as its first write will not be seen."""
        f.passthrough = True
        if f.writable:
            st = os.fstat(f.read_fd)
            node = node or self.node(f.node_id)
            # The catalog's hash holds only if no other handle may have changed the copy since.
            alone = not any(h.writable for h in self._open.get(f.node_id, ()) if h is not f)
            trusted = node.hash if alone and not f.changed and st.st_size == node.size else None
            f.known = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, trusted)
            self.will_change(f)

    def will_change(self, f: LiveFile) -> None:
        """Before each change through `f`; the first is journaled (a crash now is repaired).
        Another handle's hash of what it wrote no longer covers the file: it hashes the copy
        again when it closes."""
        self._changes[f.node_id] = self._changes.get(f.node_id, 0) + 1
        for other in self._open.get(f.node_id, ()):
            if other is not f:
                other.drop_hash()
        if f.journal_id is None and not f.unlinked:
            with self.cat.transaction():
                f.journal_id = self.cat.journal_add("live", {"node": f.node_id, "path": f.path,
                                                             "drives": list(f.fds)})
            self._changed = True

    def copies_failed(self, f: LiveFile, failed: list[tuple[int, OSError]],
                      retry: Callable[[dict[int, int]], list[tuple[int, OSError]]]) -> None:
        """After a write or truncate some copies failed: a full drive's copy moves to a drive
        with room (then `retry` the change there); any other failed copy is dropped (its half
        written file removed), recorded as a shortfall for `check --repair`. Raises if none is left.
        An error that every copy gives alike and that is about the request (a size past what the
        drives' filesystem allows, say) is the caller's: it is raised, and no copy is dropped.
        The copies change while no change through any of the file's handles is under way (`Gate`)."""
        # A copy moved meanwhile (by a change through another handle, or an earlier one through
        # this one): the change is made again on the copies as they are now (twice, it is the same).
        moved = [d for d, _ in failed if d not in f.fds]
        failed = [(d, err) for d, err in failed if d in f.fds]
        codes = {err.errno for _, err in failed}
        if failed and len(failed) == len(f.fds) and len(codes) == 1 and codes <= REQUEST_ERRORS:
            raise failed[0][1]
        redo: dict[int, int] = {}  # the copies moved now, where the change is made again
        with f.gate.moving():
            for drive_id, err in failed:
                d: Drive | None = self.drives_by_id().get(drive_id)
                if err.errno in (errno.ENOSPC, errno.EDQUOT) and d is not None:
                    to = self._move_copy(f, d)
                    if to is None:
                        raise err  # nowhere to go: the pool is really full
                    redo[to] = f.fds[to]
                    continue
                log.error("a copy of %s on %s failed (%s); dropped, `homepool check --repair` re-makes it",
                          f.path, d.name if d else drive_id, err)
                self._drop_live_copy(f, drive_id, f.fds.pop(drive_id))  # (which looks at the drives again)
        if not f.fds:
            raise OSError(errno.EIO, f"every copy of {f.path} failed")
        if redo and not moved:
            again = retry(redo)
            if again:
                raise again[0][1]
        elif moved:
            again = retry(dict(f.fds))
            if again:
                self.copies_failed(f, again, retry)

    def _drop_live_copy(self, f: LiveFile, drive_id: int, fd: int) -> None:
        f.retired.append(fd)
        self.drive_cache = None  # (a drive pulled out fails its copies: looked at again)
        d = self.drives_by_id().get(drive_id)
        here = d is not None and d.row.state == "active"
        with self.cat.transaction():
            self.cat.drop_replica(f.node_id, drive_id)
            # A crash now repairs the file from the copies still written, never from this one.
            for h in self._open.get(f.node_id, ()):
                if h.journal_id is not None:
                    self.cat.journal_update(h.journal_id, {"node": f.node_id, "path": f.path,
                                                           "drives": [k for k in h.fds if k != drive_id]})
        try:
            if d is None or not here:
                raise FileNotFoundError(errno.ENOENT, "the drive is away")
            unlink_names(d, f.path, self.other_names(f.node_id))
            d.do(os.unlink, f.path)  # never keep half a copy
        except OSError as e:  # (pulled out, say: the half copy goes when the drive is back, whatever its size)
            if d is not None and d.present():
                log.error("could not remove the failed copy of %s on %s: %s", f.path, d.name, e)
            with self.cat.transaction():
                for path in (f.path, *self.other_names(f.node_id)):
                    self._owe_removal(drive_id, path, None, None, {})

    def _move_copy(self, f: LiveFile, full: Drive) -> int | None:
        """Under `f.gate.moving()`: move `f`'s copy on the `full` drive to a drive with room for
        it; returns that drive (None if none has room). Every handle of the file on that copy
        moves with it, and those that looked at the copies (`settle`) count the new one."""
        fd = f.fds[full.id]
        drives = self.drives_by_id()
        cands = [c for c in self._look_at_room(list(drives.values()))  # fresh: room is what matters here
                 if c.drive_id not in f.fds and c.drive_id != full.id]
        node = self.node(f.node_id)
        if node.links:
            return None  # its other names are hard links on this drive: it stays, full like a disk
        size = os.fstat(fd).st_size
        target = placement.choose(self.config.placement, cands, max(size, f.size) + CHUNK * 16, 1)
        if not target:
            return None
        to = drives[target[0]]
        new_fd = self._create_copy(to, f.path, node.mode, node.uid, node.gid)
        others: list[tuple[LiveFile, int]] = []  # the other handles on the old copy, and their new descriptor
        try:
            off = 0
            while chunk := os.pread(fd, CHUNK, off):
                _pwrite_all(new_fd, chunk, off)
                off += len(chunk)
            os.ftruncate(new_fd, size)
            copy_xattrs(fd, new_fd, f.path, to.name)
            for h in self._open.get(f.node_id, ()):
                if h is not f and full.id in h.fds:
                    others.append((h, to.open(f.path, (os.O_RDWR if h.writable else os.O_RDONLY) | os.O_CLOEXEC)))
        except OSError:
            for opened in (new_fd, *(h_fd for _, h_fd in others)):
                os.close(opened)
            to.do(os.unlink, f.path)
            return None
        log.warning("%s moved from %s to %s, which has room for it", f.path, full.name, to.name)
        f.move_copy(full.id, to.id, new_fd)
        for h, h_fd in others:
            h.move_copy(full.id, to.id, h_fd)
        for h in self._open.get(f.node_id, ()):
            h.held = [to.id if d == full.id else d for d in h.held]  # closed ones too
        with self.cat.transaction():
            self.cat.drop_replica(f.node_id, full.id)
            self.cat.set_replica(f.node_id, to.id, size, time.time_ns(), None)
            for h in (f, *(h for h, _ in others)):
                if h.journal_id is not None:  # a crash now looks at the copies where they are
                    self.cat.journal_update(h.journal_id, {"node": f.node_id, "path": f.path, "drives": list(h.fds)})
        try:
            full.do(os.unlink, f.path)
        except OSError as e:
            log.error("could not remove the old copy of %s on %s: %s", f.path, full.name, e)
        return to.id

    def releasing(self, f: LiveFile, closing: bool = False) -> None:
        """Call before `f.settle()` or `f.finish()` (`closing`: the handle's last): notes which
        changes the file has had then."""
        f.seen = self._changes.get(f.node_id, 0)
        f.closing = f.closing or closing

    def record_file(self, f: LiveFile, result: tuple[int, int, str] | None, closing: bool = False) -> None:
        """Record what `f.settle()` found (size, time, hash of the copies): at each close, so the
        catalog agrees when close() returns. A result overtaken by a change made meanwhile is
        not recorded: the journal row stays until a later close records the newer state."""
        current = f.seen == self._changes.get(f.node_id, 0)
        if f.journal_id is None or not (current or closing):
            return
        # A passed-through writer's release usually finds what its last close recorded.
        fresh = result is not None and result != f.recorded and not f.unlinked and current
        attrs, f.attrs = ({} if f.unlinked else f.attrs), {}
        # A passed-through writer may write again unseen until its release: still journaled.
        keep = f.passthrough and f.writable and not closing
        if not (fresh or attrs or f.unlinked):
            if not keep:  # nothing new to record: the row goes with the next commit, not one of its own
                self.cat.journal_done_later(f.journal_id)
        else:
            # Grouped with the renames and deletes (`group_steps`): a crash before the group's
            # commit leaves the journal row, which records the file from its copy.
            record: CloseRecord = (f, None if keep else f.journal_id, result if fresh else None, attrs)
            if self.grouping:
                self.group_touched.add(f.node_id)
                self._group_records.append(record)
            with self.cat.transaction(grouped=self.grouping):
                self._write_record(*record)
            if self.grouping:
                self._group_waits()
        if not keep:
            f.journal_id = None
        if current:
            f.changed, f.mtime_ns = False, 0  # the catalog has it all now
        self._changed = True

    def _write_record(self, f: LiveFile, journal_id: int | None, result: tuple[int, int, str] | None,
                      attrs: dict[str, int]) -> None:
        """In a transaction: a close's record (`CloseRecord`), and the end of its journal row."""
        node = self.cat.node_or_none(f.node_id) if result is not None or attrs else None
        if node is not None and result is not None:
            self._record_result(f, node, result, attrs)
        elif node is not None and attrs:
            self._record_attrs(f.node_id, attrs)
        if journal_id is not None:
            self.cat.journal_done(journal_id)

    def records_undone(self, records: list[CloseRecord]) -> None:
        """Close records a failed commit undid (`Pool._group_ended`): a handle still open makes
        them again at its next close; one let go has its record made again now (if that
        fails too, its journal row, back in the catalog, records it when the pool is next
        opened)."""
        for f, journal_id, result, attrs in records:
            f.recorded = None
            if f in self._open.get(f.node_id, ()):
                f.attrs = {**attrs, **f.attrs}
                if journal_id is not None and f.journal_id is None:
                    f.journal_id = journal_id
                f.changed = True
                continue
            try:
                with self.cat.transaction():
                    self._write_record(f, journal_id, result, attrs)
            except Exception as e:  # (the state drive still full, say)
                log.error("could not record %s again (%s); the next mount records it from its copy",
                          self.path_of(f.node_id) if self.cat.node_or_none(f.node_id) else f.path, e)

    def creates_undone(self, creates: list[NewCreate]) -> None:
        """New files a failed commit undid (`Pool._group_ended`): their copies are there, open
        and maybe written, so they are recorded again at once as they were (the same inode
        number, the same journal row, which records what was written at their close). If
        that fails too, the next opening of the pool takes them in from their copies."""
        for node, path, drives, journal_id, group in creates:
            assert node.parent_id is not None
            try:
                with self.cat.transaction():
                    self.cat.record_group(group)  # (its note is then of a file recorded)
                    self.cat.add_node(node.parent_id, node.name, "file", node.mode, node.mtime_ns, 0, EMPTY_HASH,
                                      node.uid, node.gid, node_id=node.id)
                    for d in drives:
                        self.cat.set_replica(node.id, d, 0, node.mtime_ns, EMPTY_HASH)
                    self.cat.journal_add("live", {"node": node.id, "path": path, "drives": drives}, entry_id=journal_id)
            except Exception as e:  # (the state drive still full, say)
                log.error("could not record the new file %s again (%s); the next mount takes it in from its copies",
                          path, e)
                assert self._new_files is not None
                self._new_files.keep(path, drives)

    def _record_result(self, f: LiveFile, node: Node, result: tuple[int, int, str], attrs: dict[str, int]) -> None:
        """In `record_file`'s transaction: the file's new size, time and hash, on its copies too."""
        size, mtime_ns, digest = result
        self.cat.set_attrs(f.node_id, **{**attrs, "size": size, "mtime_ns": mtime_ns, "hash": digest,
                                         "ctime_ns": max(node.ctime_ns, attrs.get("ctime_ns", 0), mtime_ns)})
        held = set(f.held)
        for r in self.cat.replicas(f.node_id):
            if r.drive_id in held:
                self.cat.set_replica(f.node_id, r.drive_id, size, mtime_ns, digest)
            elif r.state == "ok":
                # Not written (its drive was missing or it failed): it is stale now.
                self.cat.drop_replica(f.node_id, r.drive_id)
                for path in (f.path, *self.other_names(f.node_id)):
                    self.cat.owe(r.drive_id, {"op": "unlink", "path": path, "size": r.size, "mtime_ns": r.mtime_ns})
        f.recorded = result

    def release_file(self, f: LiveFile, result: tuple[int, int, str] | None) -> None:
        """After `f.finish()`: record (see `record_file`) and forget the handle."""
        handles = self._open.get(f.node_id, [])
        self._recording.add(f.node_id)  # until the catalog has what it wrote (`held_in_memory`)
        try:
            if f in handles:
                handles.remove(f)
            if not handles:
                self._open.pop(f.node_id, None)
                self._orphans.pop(f.node_id, None)
            self.record_file(f, result, closing=True)
        finally:
            self._recording.discard(f.node_id)
        if not handles:
            self._changes.pop(f.node_id, None)
        if not handles and f.node_id in self._reconcile_at_release:
            self._reconcile_at_release.discard(f.node_id)
            self.reconcile_unless_open(f.node_id)

    # -- folders' copies, changed while mounted ------------------------------------------------

    def change_copies(self, name: str, copies: int) -> tuple[Node, int, list[int]]:
        """A folder's copies change while mounted: the folder, its copies before, and its
        files, each to be given its copies by `reconcile_unless_open` (one at a time: the
        mount serves requests in between)."""
        self._check_copies(copies)
        node, before = self.folder(name)
        with self.cat.transaction():
            self.cat.set_folder_copies(node.id, copies)
        self._changed = True
        return node, before, [f.id for f in self.cat.subtree_files(node.id)]

    def reconcile_unless_open(self, node_id: int) -> int | None:
        """Add or remove copies of a file to match its folder now, or, while the mount has it
        open, at its last release: a copy made now would miss the writes to come, a reader
        may be reading the copy that would go, and a file passed through to the kernel has
        to keep its one copy while open. Returns the good copies it has, or None if that
        waits or the file is gone."""
        node = self.cat.node_or_none(node_id)
        if node is None or not node.is_file:
            return None
        if self._open.get(node_id):
            self._reconcile_at_release.add(node_id)
            return None
        return self.reconcile(node)

    def truncate_file(self, node_id: int, size: int) -> None:
        """Truncate a file that is not open here (setattr by path)."""
        f = self.open_file(node_id, write=True)
        try:
            self.will_change(f)
            failed = f.truncate(size)
            if failed:
                self.copies_failed(f, failed, lambda fds: f.truncate(size, fds))
        finally:
            self.releasing(f)
            self.release_file(f, f.finish())

    # -- the tree ----------------------------------------------------------------------------

    def make_dir(self, parent_id: int, name: str, mode: int, uid: int, gid: int) -> Node:
        """A new directory (at the root: a new folder with 1 copy), on every present drive."""
        if parent_id == ROOT_ID:
            node = self.add_folder(name, 1, mode, uid, gid)
        else:
            parent, path = self._in_folder(parent_id, name)
            mode, uid, gid = self._owner(parent, stat_.S_IFDIR | (mode & 0o7777), uid, gid)
            node = self._make_dir(parent_id, name, path, mode, uid, gid)
        self._dir_changed(parent_id)
        return self.node(node.id)

    def make_node(self, parent_id: int, name: str, mode: int, uid: int, gid: int,
                  target: str | None = None, rdev: int = 0) -> Node:
        """A symlink (`target`) or a special file (FIFO, socket, device), on every present drive."""
        parent, path = self._in_folder(parent_id, name)
        mode, uid, gid = self._owner(parent, mode, uid, gid)
        kind = "symlink" if target is not None else "special"
        size = len(os.fsencode(target)) if target is not None else 0

        def make(d: Drive) -> None:
            if d.lexists(path):
                d.do(os.unlink, path)  # a leftover of an earlier crash (the catalog did not have it)
            make_entry(d, path, mode, uid, gid, target, rdev)

        made = self._on_every_drive(path, make)
        if not made:
            raise OSError(errno.EIO, f"no drive could make {path}")
        with self.cat.transaction():
            node_id = self.cat.add_node(parent_id, name, kind, mode, time.time_ns(), size, None, uid, gid,
                                        target, rdev)
        self._changed = True
        self._dir_changed(parent_id)
        return self.node(node_id)

    def make_link(self, node_id: int, parent_id: int, name: str) -> Node:
        """link(2): the file (symlink or special file) `node_id` gets the name `name` in
        `parent_id` too. On each drive with a copy the new name is a hard link of it, so every
        drive still holds plain files; the names stay in one top-level folder (which decides
        the copies), as on a local disk they stay on one filesystem."""
        node = self.cat.node_or_none(node_id)
        if node is None:
            raise NotFound(path=f"#{node_id}")  # deleted while open: no name to link to
        if node.is_dir:
            raise OSError(errno.EPERM, "directories cannot have hard links")
        _, path = self._in_folder(parent_id, name)
        src = self.path_of(node_id)
        if src.partition("/")[0] != path.partition("/")[0]:
            raise LinksAcrossFolders(path=path)
        if node.links + 1 >= LINK_MAX:
            raise OSError(errno.EMLINK, f"{src} has {LINK_MAX} names")
        held = {r.drive_id for r in self.cat.replicas(node_id)} if node.is_file else None
        drives = [d for d in self.drives_by_id().values() if held is None or d.id in held]
        # The catalog first: I/O goes by the file's own path, so the new name works at once. A
        # crash before the drives have it is finished at the next opening (`_apply_link`).
        with self.cat.transaction():
            link_id = self.cat.add_link(node_id, parent_id, name, time.time_ns())
            for d in drives:
                if d.row.state != "active":
                    self.cat.owe(d.id, {"op": "link", "src": src, "dst": path, "node": node_id})
            entry = self.cat.journal_add("link", {"node": node_id, "src": src, "dst": path,
                                                  "drives": [d.id for d in drives if d.row.state == "active"]})
        made = 0
        for d in drives:
            if d.row.state == "active":
                try:
                    link_name(d, src, path)  # keeps aside what the catalog did not know there
                    made += 1
                except OSError as e:
                    log.error("could not link %s to %s on %s: %s", path, src, d.name, e)
        self.cat.journal_done_later(entry)  # (the next commit removes it)
        if not made and drives:
            with self.cat.transaction():
                self.cat.remove_name(self.cat.node(link_id))
            raise OSError(errno.EIO, f"no drive could link {path}")
        self._changed = True
        self._dir_changed(parent_id)
        return self.node(node_id)

    def other_names(self, node_id: int) -> list[str]:
        """The pool paths of a node's extra names (hard links)."""
        return [self.path_of(i) for i in self.cat.names_of(node_id)]

    def heir(self, row: Node, node: Node) -> dict[str, Any]:
        """For a journal row that takes the name `row` of `node` away: if it is a file's own
        name and the file has others, the one that takes its place (`Catalog.remove_name`)
        and the copies it must be there on first (`Pool._hand_over`)."""
        if row.link_to is not None or not node.is_file or not node.links:
            return {}
        return {"heir": self.path_of(self.cat.names_of(node.id)[0]), "heir_of": node.id,
                "heir_drives": [r.drive_id for r in self.cat.replicas(node.id)]}

    def _parts_names(self, row: Node, node: Node, dst: str) -> bool:
        """Whether moving `row` (naming `node`) to `dst` would put a file's names in two
        top-level folders (a folder renamed, or moved into another, takes all its names along)."""
        src = self.path_of(row.id)
        if node.parent_id == ROOT_ID or src.partition("/")[0] == dst.partition("/")[0]:
            return False
        if node.is_dir:
            return self.cat.has_links_below(node.id)
        return row.is_link or node.links > 0

    def _on_every_drive(self, path: str, fn: Callable[[Drive], Any]) -> list[int]:
        """Do `fn(drive)` on every present drive; returns the drives where it worked. These
        steps (a symlink or special file made) come before their commit, so
        the removal of the journal rows `_run_recorded_first` holds back is committed first:
        replayed after a crash, a finished rename would move what such a step had just made at
        its old path over the file it renamed."""
        drives = self.drives_by_id()  # (settles the steps waiting first: their rows' removal is flushed next)
        self.cat.journal_flush()
        done = []
        for d in drives.values():
            if d.row.state != "active":
                continue
            try:
                fn(d)
                done.append(d.id)
            except OSError as e:
                log.error("could not change %s on %s: %s", path, d.name, e)
        return done

    def remove(self, parent_id: int, name: str, rmdir: bool) -> None:
        """unlink (rmdir=False) or rmdir: the errors and checks a local filesystem makes."""
        row = self.cat.child(parent_id, name)
        if row is None:
            raise NotFound(path=f"{self.path_of(parent_id)}/{name}")
        node = self.cat.resolve(row)  # what the name names (a hard link names another node)
        path = self.path_of(row.id)
        if rmdir and not node.is_dir:
            raise NotADir(path=path)
        if not rmdir and node.is_dir:
            raise IsADirectory(path=path)
        if node.is_dir and self.cat.has_children(node.id):
            raise DirectoryNotEmpty(path=path)
        if not node.is_dir and not node.is_file:  # a symlink or special file: recorded first, as a file's delete
            drives = [d.id for d in self.drives_by_id().values() if d.row.state == "active"]
            self._run("drop", {"path": path, "drives": drives, "node": True, "id": row.id})
        elif node.is_dir:
            self._keep_if_open(node)
            self.delete(path)
            self._dir_times.pop(node.id, None)
        else:
            if not node.links:
                self._keep_if_open(node)
            group = self._groups(node)
            if group:
                self.group_touched.update((parent_id, node.id))
            reps = self.cat.replicas(node.id)
            self._run("drop", {"path": path, "drives": [r.drive_id for r in reps], "node": True, "id": row.id,
                               **self.heir(row, node)}, group=group, looked=Looked(self.groups_undone, replicas=reps))
            self._follow(node.id)  # its own name was taken away: another of its names is its path now
        self._dir_changed(parent_id)

    def _groups(self, node: Node) -> bool:
        """Whether a rename or delete of this file may wait for its group's commit (when the
        mount groups them, see `group_steps`): not while it is open (its handles follow its copies' paths), nor for
        a file of several names (whose steps hand names over)."""
        return self.grouping and not node.links and node.id not in self._open

    def _follow(self, node_id: int) -> None:
        """A file's path changed: its open handles find its copies at the new one."""
        handles = self._open.get(node_id)
        if handles and self.cat.node_or_none(node_id) is not None:
            for f in handles:
                f.path = self.path_of(node_id)

    def _keep_if_open(self, node: Node) -> None:
        """A file deleted (or replaced) while open stays readable through its handles."""
        handles = self._open.get(node.id)
        if handles:
            self._orphans[node.id] = self.node(node.id)
            for f in handles:
                f.unlinked = True

    def move(self, parent_id: int, name: str, new_parent_id: int, new_name: str, noreplace: bool) -> None:
        """rename(2) within the pool: atomically replaces a file, or an empty directory."""
        self._move(parent_id, name, new_parent_id, new_name, noreplace)
        self._dir_changed(parent_id, new_parent_id)

    def _move(self, parent_id: int, name: str, new_parent_id: int, new_name: str, noreplace: bool) -> None:
        row = self.cat.child(parent_id, name)
        if row is None:
            raise NotFound(path=f"{self.path_of(parent_id)}/{name}")
        node = self.cat.resolve(row)  # what the name names (a hard link names another node)
        src = self.path_of(row.id)
        dst = f"{self.path_of(new_parent_id)}/{new_name}" if new_parent_id != ROOT_ID else new_name
        paths.split(dst)
        old_row = self.cat.child(new_parent_id, new_name)
        old = self.cat.resolve(old_row) if old_row is not None else None
        if old is not None and old.id == node.id:
            return  # two names of one file (or one name): rename(2) does nothing
        if old is not None:
            if noreplace:
                raise AlreadyExists(path=dst)
            if old.is_dir != node.is_dir:
                raise (IsADirectory if old.is_dir else NotADir)(path=dst)
        if self._parts_names(row, node, dst):
            raise LinksAcrossFolders(path=src)
        if old is not None and old_row is not None:
            if old.is_file and not old.links:
                self._keep_if_open(old)
            if not old.is_dir and not (old.is_file and node.is_file):
                # A symlink or special file on one side: the old entry goes first. (Between
                # the two steps the name is briefly absent: files replace files atomically.)
                self.remove(new_parent_id, new_name, rmdir=False)
                old_row = old = None
        if node.is_file and new_parent_id != ROOT_ID:
            self._move_file(row, node, old_row, old, src, dst, new_parent_id)
            return
        # A directory, symlink or special file (or a file at the top, which `rename` refuses):
        # recorded first, then made on the drives, as a file's rename is.
        self.rename(src, dst)
        # Open files below a directory moved with it (their copies, journal rows and owed
        # steps are found by these paths).
        for node_id in list(self._open) if node.is_dir else [node.id]:
            self._follow(node_id)

    def _move_file(self, row: Node, node: Node, old_row: Node | None, old: Node | None, src: str, dst: str,
                   new_parent_id: int) -> None:
        """`Pool.rename` for a file's name `row` (`node`: the file), from what the mount already
        knows (no walks down the tree). `old_row` is the name it replaces (`old`: its file)."""
        moves = [r.drive_id for r in self.cat.replicas(node.id)]
        had = [r.drive_id for r in self.cat.replicas(old.id)] if old is not None else []
        group = self._groups(node) and (old is None or self._groups(old))
        # (Steps waiting on other paths may go on waiting: they change nothing here.)
        drives = self._drives_for(src, dst, commit=False) if group else self.drives_by_id()
        if group:
            self.group_touched.update(i for i in (row.parent_id, new_parent_id, node.id, old and old.id) if i)
        for i in moves:  # something the catalog does not know in the way: refuse up front
            d = drives.get(i)
            if d is not None and d.row.state == "active" and i not in had and d.lexists(dst):
                raise AlreadyExists(path=f"{dst} (on drive {d.label!r}; `homepool check` shows it)")
        self._run("rename", {"src": src, "dst": dst, "kind": "file", "moves": moves,
                             "unlink_dst": [i for i in had if i not in moves], "id": row.id,
                             "dparent": new_parent_id, **(self.heir(old_row, old) if old and old_row else {})},
                  group=group, looked=Looked(self.groups_undone, old=old_row))
        self._follow(node.id)
        if old is not None and old_row is not None and old.links:
            self._follow(old.id)  # it lost a name: perhaps the one that was its path
        if src.partition("/")[0] != dst.partition("/")[0]:  # another folder: its copies may differ
            self._reconcile_soon.add(node.id)

    def set_attrs(self, node_id: int, *, mode: int | None = None, uid: int | None = None,
                  gid: int | None = None, size: int | None = None, mtime_ns: int | None = None,
                  atime_ns: int | None = None, handle: LiveFile | None = None) -> Node:
        """chmod, chown, truncate, utimens: on every copy (or every drive, for a directory)."""
        node = self.node_as_set(node_id)
        if self.unlinked(node_id):
            return self._set_unlinked_attrs(node, mode, uid, gid, size, mtime_ns, atime_ns, handle)
        path = self.path_of(node_id)
        if size is not None:
            if node.is_dir:
                raise IsADirectory(path=path)
            writer = handle if handle is not None and handle.writable else None
            writer = writer or next((f for f in self._open.get(node_id, ()) if f.writable), None)
            if writer is None:
                self.truncate_file(node_id, size)
            else:
                self.will_change(writer)
                failed = writer.truncate(size)
                if failed:
                    self.copies_failed(writer, failed, lambda fds: writer.truncate(size, fds))
            node = self.node(node_id)
        cols = self._attr_cols(node, mode, uid, gid, mtime_ns, atime_ns, size is not None)
        if not cols:
            return self._as_written(node)
        if mtime_ns is not None:
            for f in self._open.get(node_id, ()):
                f.mtime_ns = 0  # the time set now wins over the writes before it
        being_written = next((f for f in self._open.get(node_id, ())
                              if f.writable and not f.unlinked and not f.closing), None)
        if being_written is not None:
            # Being written (tar sets owner, mode and times before it closes each file): the
            # copies change through its descriptors, and the catalog takes the change with its
            # next close. Until then its journal row has a crash repaired from a copy, attributes
            # and all.
            self.will_change(being_written)
            being_written.change(cols, atime_ns)
            being_written.attrs.update(cols)
            return self.node(node_id)
        if mtime_ns is None and atime_ns is not None:
            node = self.node(node_id)  # (its time as written, which stays)
        change = {"id": node_id, "cols": dict(cols), "mtime_ns": mtime_ns if mtime_ns is not None else node.mtime_ns,
                  "atime_ns": atime_ns, "times": mtime_ns is not None or atime_ns is not None}
        if (changed := self._dir_times.get(node_id)) is not None:
            cols.setdefault("mtime_ns", changed)  # a directory's time kept by `_dir_changed`
        # The catalog first, with a journal row: a crash before every copy has the change has
        # it made on them at the next opening (`_apply_attrs`); the next commit removes the row.
        with self.cat.transaction():
            self._record_attrs(node_id, cols)
            entry = self.cat.journal_add("attrs", change)
        if changed is not None:
            self._dir_times.pop(node_id, None)  # (once committed: a glance reads the one or the other)
        self._set_on_copies(node, path, change)
        self.cat.journal_done_later(entry)
        self._changed = True
        return self.node(node_id)

    def _set_on_copies(self, node: Node, path: str, change: dict) -> None:
        """A setattr's owner, mode and times (`set_attrs`'s journal row) on every copy there."""
        cols, m, a = change["cols"], change["mtime_ns"], change["atime_ns"]

        def apply(p: str) -> None:
            if "uid" in cols:
                os.lchown(p, cols["uid"], cols["gid"])
            if "mode" in cols and not stat_.S_ISLNK(node.mode):
                os.chmod(p, cols["mode"] & 0o7777)
            if change["times"]:
                os.utime(p, ns=(a if a is not None else m, m), follow_symlinks=False)

        for d in self._holders(node):
            try:
                d.do(apply, path)
            except OSError as e:
                log.error("could not change %s on %s: %s", path, d.name, e)

    def _apply_attrs(self, p: dict) -> None:
        """A setattr a crash cut short (`set_attrs`): made on the copies now, where the file is."""
        node = self.cat.node_or_none(p["id"])
        if node is not None:
            self._set_on_copies(node, self.path_of(node.id), p)

    @staticmethod
    def without_set_id(mode: int, in_group: bool = True) -> int:
        """`mode` as a write, truncate or chown by a user who may not keep set-id bits leaves
        it, as Linux does: set-user-id goes; set-group-id goes with group execute, or (since
        Linux 6.2) when that user is not in the file's group (else it marks locking); a
        directory keeps both."""
        if stat_.S_ISDIR(mode):
            return mode
        drop = stat_.S_ISUID | (stat_.S_ISGID if mode & stat_.S_IXGRP or not in_group else 0)
        return mode & ~drop

    def clear_set_id(self, node_id: int, handle: LiveFile | None = None, in_group: bool = True) -> bool:
        """Clear a file's set-id bits (`without_set_id`), through `handle` if it is open;
        whether any went."""
        mode = self.node_as_set(node_id).mode
        kept = self.without_set_id(mode, in_group)
        if kept != mode:
            self.set_attrs(node_id, handle=handle, mode=kept)
        return kept != mode

    @staticmethod
    def _attr_cols(node: Node, mode: int | None, uid: int | None, gid: int | None, mtime_ns: int | None,
                   atime_ns: int | None, resized: bool) -> dict[str, int]:
        """The node's columns a setattr changes (ctime too, if anything changes)."""
        cols: dict[str, int] = {}
        if mode is not None:
            cols["mode"] = (node.mode & ~0o7777) | (mode & 0o7777)
        if uid is not None and uid != node.uid or gid is not None and gid != node.gid:
            cols["uid"] = node.uid if uid is None else uid
            cols["gid"] = node.gid if gid is None else gid
            if "mode" not in cols and LiveOps.without_set_id(node.mode) != node.mode:
                cols["mode"] = LiveOps.without_set_id(node.mode)  # a chown clears set-id bits
        if mtime_ns is not None:
            cols["mtime_ns"] = mtime_ns
        if atime_ns is not None:
            cols["atime_ns"] = atime_ns
        if cols or resized:
            cols["ctime_ns"] = time.time_ns()
        return cols

    def _set_unlinked_attrs(self, node: Node, mode: int | None, uid: int | None, gid: int | None,
                            size: int | None, mtime_ns: int | None, atime_ns: int | None,
                            handle: LiveFile | None) -> Node:
        """`set_attrs` of a file open with no name left (ftruncate or fchmod of a deleted temp
        file, as on a local filesystem): through its handles' descriptors; the catalog no
        longer has it, so only what the mount shows of it changes."""
        handles = self._open.get(node.id, [])
        writer = handle if handle is not None and handle.writable else next((f for f in handles if f.writable), None)
        if size is not None:
            if writer is None:
                raise OSError(errno.EBADF, "not open for writing")
            failed = writer.truncate(size)
            if len(failed) == len(writer.fds):
                raise failed[0][1]
            for drive_id, _ in failed:  # nothing to record: the copy just goes
                writer.retired.append(writer.fds.pop(drive_id))
        cols = self._attr_cols(node, mode, uid, gid, mtime_ns, atime_ns, size is not None)
        for f in handles:
            f.change(cols, atime_ns)
            if mtime_ns is not None:
                f.mtime_ns = 0  # the time set now wins over the writes before it
        self._orphans[node.id] = self._orphans[node.id].but(**cols)  # type: ignore[arg-type]  # int columns only
        return self.node(node.id)

    def _record_attrs(self, node_id: int, cols: dict[str, int]) -> None:
        """In a transaction: a node's new attributes, and a new mtime on its copies' records too."""
        self.cat.set_attrs(node_id, **cols)
        if "mtime_ns" in cols:
            for r in self.cat.replicas(node_id):  # none for a directory
                self.cat.set_replica(node_id, r.drive_id, r.size, cols["mtime_ns"], r.hash, r.state)

    # -- extended attributes -----------------------------------------------------------------

    def set_xattr(self, node_id: int, name: bytes, value: bytes | None) -> None:
        """Set (or with None, remove) an extended attribute on every copy. Journaled first: a
        crash before every copy has it has it made on them at the next opening (`_apply_xattr`)."""
        node = self.node(node_id)
        if self.unlinked(node_id):  # open with no name left: through its descriptors
            for fd in self.open_fds(node_id):
                if value is None:
                    os.removexattr(fd, name)
                else:
                    os.setxattr(fd, name, value)
            self._orphans[node_id] = self._orphans[node_id].but(ctime_ns=time.time_ns())
            return
        path = self.path_of(node_id)
        holders = self._holders(node)
        if not holders:
            raise OSError(errno.EIO, f"no copy of {path} is present")
        change = {"id": node_id, "name": base64.b64encode(name).decode(),
                  "value": None if value is None else base64.b64encode(value).decode()}
        with self.cat.transaction():
            entry = self.cat.journal_add("xattr", change)
        errors = self._xattr_on_copies(holders, path, name, value)
        self.cat.journal_done_later(entry)
        if len(errors) == len(holders):
            raise errors[0][1]  # ENODATA, ENOTSUP, E2BIG...: the answer the drives give
        for d, e in errors:
            log.error("could not change extended attribute %s of %s on %s: %s", os.fsdecode(name), path, d.name, e)
        with self.cat.transaction():
            self.cat.set_attrs(node_id, ctime_ns=time.time_ns())

    @staticmethod
    def _xattr_on_copies(drives: list[Drive], path: str, name: bytes,
                         value: bytes | None) -> list[tuple[Drive, OSError]]:
        """`set_xattr`'s change on the copies at `path` on `drives`; the drives that failed it."""
        errors = []
        for d in drives:
            try:
                if value is None:
                    d.do(os.removexattr, path, name, follow_symlinks=False)
                else:
                    d.do(os.setxattr, path, name, value, follow_symlinks=False)
            except OSError as e:
                errors.append((d, e))
        return errors

    def _apply_xattr(self, p: dict) -> None:
        """An extended attribute's change a crash cut short (`set_xattr`): made on the copies
        now, where the file is (a removal some copies had already made is no error)."""
        node = self.cat.node_or_none(p["id"])
        if node is None:
            return
        name = base64.b64decode(p["name"])
        value = None if p["value"] is None else base64.b64decode(p["value"])
        path = self.path_of(node.id)
        for d, e in self._xattr_on_copies(self._holders(node), path, name, value):
            if not (value is None and e.errno == errno.ENODATA):
                log.error("could not change extended attribute %s of %s on %s: %s", os.fsdecode(name), path, d.name, e)

    def _holders(self, node: Node) -> list[Drive]:
        """The present drives with a copy of a node: a file's good copies, or the entry on
        every drive for anything else."""
        drives = self.drives_by_id()
        ids = [r.drive_id for r in self.cat.replicas(node.id) if r.state == "ok"] if node.is_file else list(drives)
        return [drives[i] for i in ids if i in drives and drives[i].row.state == "active"]

    # -- crash repair: the 'link' and 'live' journal ops ---------------------------------------

    def _apply_link(self, p: dict, drives: dict[int, Drive]) -> list[tuple[int, dict]]:
        """A new name the mount recorded before the drives had it (`make_link`): made on them
        now, if the catalog still gives that name to that node. Returns the steps owed to
        drives away now (`_record_link`)."""
        node = self.cat.node_or_none(p["node"])
        named = self.lookup(p["dst"])
        if node is None or named is None or node.id not in (named.id, named.link_to):
            return []  # removed or replaced since
        src = self.path_of(node.id)  # (renamed since, perhaps)
        if src == p["dst"]:
            return []  # the node's own name now (its own name went; the removal linked it first)
        owed = []
        for key in p["drives"]:
            d = drives.get(int(key))
            if d is None or d.row.state != "active":
                owed.append((int(key), {"op": "link", "src": src, "dst": p["dst"], "node": node.id}))
                continue
            try:
                link_name(d, src, p["dst"])
            except OSError as e:  # (`check` finds the name missing there)
                log.error("could not link %s to %s on %s: %s", p["dst"], src, d.name, e)
        return owed

    def _record_link(self, owed: list[tuple[int, dict]]) -> None:
        """In `_finish`'s transaction: a drive away gets the name when it is back (`settle_owed`)."""
        for drive_id, step in owed:
            self.cat.owe(drive_id, step)

    def _apply_live(self, p: dict, drives: dict[int, Drive]) -> tuple[int, os.stat_result, str] | None:
        """A file was being changed when the mount stopped: the first copy still there is the
        file now (of those it was written on, then any other good one the catalog has); the
        others are removed (re-made from it afterwards). Returns (drive, stat, hash) of the
        kept copy, None if no copy is left."""
        kept = None
        if self.cat.node_or_none(p["node"]) is None:
            return None  # deleted since: its copies went with it
        path = self.path_of(p["node"])  # renamed since, perhaps
        names = self.other_names(p["node"])  # hard links of each copy: removed with it
        order = [int(key) for key in p["drives"]]
        order += [r.drive_id for r in self.cat.replicas(p["node"]) if r.drive_id not in order and r.state == "ok"]
        for drive_id in order:
            d = drives.get(drive_id)
            if d is None or d.row.state != "active":
                continue
            try:
                st = d.lstat(path)
                if not stat_.S_ISREG(st.st_mode):
                    continue
                if kept is None:
                    kept = (d.id, st, d.hash(path))
                else:
                    unlink_names(d, path, names)
                    d.do(os.unlink, path)
            except FileNotFoundError:
                continue
            except OSError as e:
                if not copy_is_at_fault(e):
                    log.error("could not look at %s on %s: %s", path, d.name, e)
        return kept

    def _record_live(self, p: dict, kept: tuple[int, os.stat_result, str] | None) -> None:
        node = self.cat.node_or_none(p["node"])
        if node is None:
            return
        if kept is None:
            if self._owe_newer(p, node.id, node.size, node.mtime_ns, node.hash):
                return  # its copy is the file when it is back, as recorded now
            if not any(r.drive_id not in p["drives"] for r in self.cat.replicas(node.id)):
                log.error("%s was being written when the mount stopped and no copy of it is left", p["path"])
                self.cat.delete_node(node.id)
            return
        drive_id, st, digest = kept
        size, mtime_ns = st.st_size, st.st_mtime_ns
        # Owner and mode too: the mount records those set while a file is open at its close.
        self.cat.set_attrs(node.id, size=size, mtime_ns=mtime_ns, hash=digest, mode=st.st_mode, uid=st.st_uid,
                           gid=st.st_gid)
        for r in self.cat.replicas(node.id):
            if r.drive_id != drive_id:
                self.cat.drop_replica(node.id, r.drive_id)
        self.cat.set_replica(node.id, drive_id, size, mtime_ns, digest)
        if drive_id not in map(int, p["drives"]):  # a copy it did not write: those it wrote are away (or gone)
            self._owe_newer(p, node.id, size, mtime_ns, digest)

    def _owe_newer(self, p: dict, node_id: int, size: int, mtime_ns: int, digest: str | None) -> bool:
        """In `_record_live`: each drive of a writer's journal row that is away holds what was
        written last; it is the file when it is back, if the file is still as recorded now
        (`take_newer`). Whether any was away."""
        present = self.drives_by_id()
        away = [int(key) for key in p["drives"] if int(key) not in present or present[int(key)].row.state != "active"]
        for drive_id in away:
            self.cat.owe(drive_id, {"op": "newer", "node": node_id, "path": self.path_of(node_id),
                                    "size": size, "mtime_ns": mtime_ns, "hash": digest})
        return bool(away)

    def take_newer(self, drive: Drive, step: dict) -> str | None:
        """A drive back with the copy a writer wrote before a crash, repaired while the drive
        was away from an older copy (`_record_live`): that copy becomes the file, the older
        ones go, and the file gets its other copies again (`_reconcile_soon`, `check`). Only if
        the file is as that repair recorded it, at the same path, and not open for writing:
        else it stays as it is, and `check` keeps this copy aside. (A reader goes on reading
        the older copy it has open, as after a rename over it.) Returns a line saying what it
        did."""
        node, path = self.cat.node_or_none(step["node"]), step["path"]
        if node is None:  # deleted since: so is this copy (unless the name is another file's there now)
            named = self.lookup(path)
            if named is None or all(r.drive_id != drive.id for r in self.cat.replicas(self.cat.resolve(named).id)):
                drive.unlink(path)
                return f"removed {path} from {drive.name} (written last before a crash, deleted since)"
            return None
        if (node.size, node.mtime_ns, node.hash) != (step["size"], step["mtime_ns"], step["hash"]) \
                or self.path_of(node.id) != path or any(f.writable for f in self._open.get(node.id, ())):
            log.warning("left the copy of %s on %s that was written last before a crash: the file changed or "
                        "moved since; `homepool check --repair` keeps it aside", path, drive.name)
            return None
        st = drive.lstat(path)
        if not stat_.S_ISREG(st.st_mode):
            return None
        digest = drive.hash(path)
        names = self.other_names(node.id)
        older = [r for r in self.cat.replicas(node.id) if r.drive_id != drive.id]
        here = {row.id: Drive(row) for row in self.cat.drives() if row.state == "active" and row.id != drive.id}
        with self.cat.transaction():
            self.cat.set_attrs(node.id, size=st.st_size, mtime_ns=st.st_mtime_ns, hash=digest, mode=st.st_mode,
                               uid=st.st_uid, gid=st.st_gid, ctime_ns=max(node.ctime_ns, st.st_mtime_ns))
            self.cat.set_replica(node.id, drive.id, st.st_size, st.st_mtime_ns, digest)
            for r in older:
                self.cat.drop_replica(node.id, r.drive_id)
                if r.drive_id not in here:
                    for name in (path, *names):
                        self.cat.owe(r.drive_id, {"op": "unlink", "path": name, "size": r.size,
                                                  "mtime_ns": r.mtime_ns})
        for r in older:  # the older copies on drives that are here go now, if still as recorded
            if (d := here.get(r.drive_id)) is None:
                continue
            try:
                old = d.lstat(path)
                if (old.st_size, old.st_mtime_ns) == (r.size, r.mtime_ns):
                    unlink_names(d, path, names)
                    d.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as e:  # (`check` finds it)
                log.error("could not remove the older copy of %s on %s: %s", path, d.name, e)
        self._changed = True
        if self.live:  # its other copies from the mount's copy thread, and the kernel forgets it
            self._reconcile_soon.add(node.id)  # (`mount.copy_moved_files`; otherwise `check`, or the next mount)
            self.retaken.append(node.id)
        return f"took {path} from {drive.name}: written last before a crash, while the drive was away"


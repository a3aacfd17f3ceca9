"""The FUSE transport: mount, then read requests from /dev/fuse and write replies.

Our own, with no libfuse underneath, for two reasons measured in docs/benchmarks.md: it can
hand the kernel a member drive's file (FUSE passthrough, Linux >= 6.9), so reads and 1-copy
writes never reach this process; and a pool of plain threads, each reading a request, running
it and replying, costs far less per request than an event loop that hands work to threads.

The threads take turns: one reads and answers, request after request, and looks for the next
one for a little while (SPIN) before it sleeps. Waking a thread on a CPU gone idle costs more
than most answers (on a virtual machine, whose idle CPUs halt, tens of µs), and a Python thread
that goes on where it was finds what it needs still in the CPU's caches (docs/benchmarks.md,
tenth run). A request that waits on the drives (a read or write of 128 KiB or more, an
fsync, a smaller read the page cache does not hold from a drive that seeks: SLOW_READ) hands
the reading on to another thread first, so that several programs' reads and writes go on at
once (the thread given the turn sleeps at once: spinning, it would only slow the answer
down; nor does a thread spin after a smaller read that waited for a drive). A watchdog
hands the reading on from an answer that takes longer than HAND_ON_AFTER (a drive that
hangs, say); it sleeps while no requests come.
When no thread waits for its turn, one more starts (up to MAX_THREADS): a slow drive holds
only the threads waiting on it, and blocking I/O never stalls the others. The
operations object (`ops.PoolOperations`) does the work and decides; this module only parses,
packs and calls. Interrupts are not honoured (each request finishes). Inode numbers are
catalog node ids, which live as long as the node; FORGET only tells which inodes the kernel
still holds, so that a listing need not send their attributes again (`_entries`).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import select
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

from ..log import name_os_thread
from . import protocol as p

log = logging.getLogger(__name__)

MAX_WRITE = 1 << 20  # bytes per READ/WRITE request (BASELINE.md: 1 MiB requests pay off)
BUFSIZE = MAX_WRITE + 64 * 1024  # a request's header, its fixed part and 1 MiB of data
THREADS = 8  # reading requests from the start
MAX_THREADS = 64  # when every one is busy (waiting on a hung drive, say), one more starts, up to this
SPARE_THREADS = 2 * THREADS  # a thread that finds more idle after its answer ends (not at once: starting costs)
SPIN = 100e-6  # seconds the reading thread looks for the next request before it sleeps
HAND_ON_AFTER = 0.02  # seconds an answer may hold the reading up before another thread reads on
# Requests that wait on drives: another thread reads on while they are answered. Reads and
# writes only from HAND_ON_SIZE (a small one is answered sooner than another thread wakes).
HANDED_ON = frozenset({p.Op.READ, p.Op.WRITE, p.Op.FSYNC, p.Op.FSYNCDIR})
HAND_ON_SIZE = 128 * 1024
# A smaller read the page cache does not hold hands on too when such reads have lately taken
# this long (a spinning disk's seek: other programs should not wait it out); a faster drive
# answers sooner than handing on costs (docs/benchmarks.md, "Small reads that wait for a drive").
SLOW_READ = 1e-3
# While drives answer faster than SLOW_READ, a small read is made at once, and one that took
# this long is taken for one that waited for a drive (a read from memory takes a few µs).
FROM_DRIVE = 30e-6
_SIZE = struct.Struct("<I")  # a READ's or WRITE's size, after its file handle and offset
_SIZE_AT = p.IN_HEADER.size + 16
MS_NOSUID, MS_NODEV, MNT_DETACH = 2, 4, 2


class FuseError(Exception):
    """A request's answer is this errno."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.errno = code


class Ctx(NamedTuple):
    """Who made a request."""

    uid: int
    gid: int
    pid: int


class Opened(NamedTuple):
    """The answer to an open: our handle, and how the kernel should do the file's I/O."""

    fh: int
    keep_cache: bool = False
    backing_id: int | None = None  # passthrough: the kernel reads and writes this file itself
    direct: bool = False  # no page cache for this handle: every read and write comes here


class SetAttr(NamedTuple):
    """The attributes a setattr changes (None: leave as is)."""

    size: int | None
    mode: int | None
    uid: int | None
    gid: int | None
    atime_ns: int | None
    mtime_ns: int | None
    kill_set_id: bool = False  # a truncate or chown by a user who may not keep set-id bits


class StatFs(NamedTuple):
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    bsize: int
    namelen: int


def _names(body: memoryview, count: int) -> list[bytes]:
    """The NUL-terminated names at the start of a request's body."""
    return bytes(body).split(b"\0", count)[:count]


class Session:
    """One mount of `ops` at `mountpoint`, served until it is unmounted or `stop` is called."""

    def __init__(self, ops: Any, mountpoint: Path, fsname: str, allow_other: bool = False, spin: float = SPIN,
                 slow_read: float = SLOW_READ) -> None:
        self.ops = ops
        self.mountpoint = mountpoint
        self.fsname = fsname
        self.allow_other = allow_other
        self.fd = -1
        self.passthrough = False  # negotiated at INIT; switched off if the kernel refuses a file
        self.direct_io = False  # negotiated at INIT: handles may go without the page cache (see `Opened`)
        # Negotiated at INIT (HANDLE_KILLPRIV_V2): we clear set-id bits, and the kernel asks for
        # security.capability once per file instead of before every write.
        self.kills_set_id = False
        self.minor = 0
        self.done = threading.Event()  # the connection ended (unmounted) or `stop` was called
        self._held: dict[int, int] = {}  # inode -> lookups the kernel holds (until it FORGETs them)
        self._held_lock = threading.Lock()
        # .inodes: lookups counted for the reply being made; .waited: the read answered waited for a drive
        self._given = threading.local()
        self.served: Counter[int] = Counter()  # requests by opcode (for the log: what reached us)
        self.busy: Counter[int] = Counter()  # nanoseconds spent answering them, by opcode
        self.reads_waited = 0  # small reads that waited for a drive
        self.reads_handed_on = 0  # of them, those that handed the turn on first
        self._read_wait = 0.0  # how long such a read waits, lately (a moving average: seconds)
        self._slow_read = slow_read
        self._threads: list[threading.Thread] = []
        self._idle = 0  # threads waiting for their turn to read (counted under `_starting`)
        self._starting = threading.Lock()
        self._turns = threading.Condition(self._starting)  # the reading passes from thread to thread
        self._reader: threading.Thread | None = None  # the thread whose turn it is to read
        # When each thread began the answer it gives while holding the turn (0: none). Each
        # writes only its own entry, so no answer's entry is lost to another's (no lock taken).
        self._answering_since: dict[threading.Thread, float] = {}
        self._read_count = 0  # requests read (for the watchdog: are they still coming?)
        self._watching = False  # the watchdog looks every HAND_ON_AFTER seconds (else it sleeps)
        self._wake_watch = threading.Event()
        self._spin = spin  # (0: sleep at once)
        self._at_most = False  # MAX_THREADS were busy at once (said once in the log)
        self._handlers: dict[int, Callable[[Ctx, int, memoryview], Any]] = {
            p.Op.LOOKUP: self._lookup, p.Op.GETATTR: self._getattr, p.Op.SETATTR: self._setattr,
            p.Op.READLINK: self._readlink, p.Op.SYMLINK: self._symlink, p.Op.MKNOD: self._mknod,
            p.Op.MKDIR: self._mkdir, p.Op.UNLINK: self._unlink, p.Op.RMDIR: self._rmdir,
            p.Op.RENAME: self._rename, p.Op.RENAME2: self._rename2, p.Op.LINK: self._link,
            p.Op.OPEN: self._open, p.Op.CREATE: self._create, p.Op.READ: self._read, p.Op.WRITE: self._write,
            p.Op.FLUSH: self._flush, p.Op.RELEASE: self._release, p.Op.FSYNC: self._fsync,
            p.Op.STATFS: self._statfs, p.Op.OPENDIR: self._opendir, p.Op.READDIR: self._readdir,
            p.Op.READDIRPLUS: self._readdirplus,
            p.Op.FSYNCDIR: self._fsyncdir, p.Op.SETXATTR: self._setxattr, p.Op.GETXATTR: self._getxattr,
            p.Op.LISTXATTR: self._listxattr, p.Op.REMOVEXATTR: self._removexattr,
        }

    # -- mounting ------------------------------------------------------------------------

    def mount(self) -> None:
        """Mount, answer the kernel's INIT, and start the threads that serve requests."""
        opts = "default_permissions" + (",allow_other" if self.allow_other else "")
        try:
            self.fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
            data = f"fd={self.fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},{opts}"
            _mount(self.fsname, str(self.mountpoint), f"fuse.{self.fsname}", MS_NOSUID | MS_NODEV, data)
        except PermissionError:  # not root: fusermount3 mounts for us and hands back the device
            if self.fd >= 0:
                os.close(self.fd)
            self.fd = _fusermount(self.mountpoint, f"fsname={self.fsname},subtype={self.fsname},nosuid,nodev,{opts}")
        self._init()
        for _ in range(THREADS):
            self._start_thread()
        threading.Thread(target=self._watch, name="fuse-watch", daemon=True).start()

    def _start_thread(self) -> None:
        with self._starting:
            if len(self._threads) >= MAX_THREADS:
                if not self._at_most:
                    self._at_most = True
                    log.warning("all %d request threads are busy (a drive that does not answer?): requests wait",
                                MAX_THREADS)
                return
            t = threading.Thread(target=self._serve, name=f"fuse-{len(self._threads)}", daemon=True)
            self._threads.append(t)
        try:
            t.start()
        except RuntimeError as e:  # (a limit on threads): the ones there go on
            log.warning("could not start another request thread: %s", e)
            with self._starting:
                self._threads.remove(t)

    def stop(self) -> None:
        """Unmount (lazily: programs with files open keep them until they close). (Called from
        a signal handler: it takes none of the session's locks; the thread reading sees the end
        and wakes the rest.)"""
        self.done.set()
        self._wake_watch.set()
        unmount(self.mountpoint)

    def _end(self) -> None:
        self.done.set()
        self._wake_watch.set()
        with self._turns:
            self._turns.notify_all()  # (threads waiting for their turn end)

    def _init(self) -> None:
        buf = bytearray(BUFSIZE)
        os.readv(self.fd, [buf])
        _, opcode, unique, *_ = p.IN_HEADER.unpack_from(buf)
        if opcode != p.Op.INIT:
            raise OSError(errno.EPROTO, f"the kernel's first FUSE message was {opcode}, not INIT")
        major, minor, max_readahead, flags, flags2 = p.INIT_IN.unpack_from(buf, p.IN_HEADER.size)
        offered = flags | (flags2 << 32 if flags & p.INIT_EXT else 0)
        if major != p.MAJOR or minor < p.MIN_MINOR:
            self._reply(unique, -errno.EPROTO)
            raise OSError(errno.EPROTO, f"the kernel speaks FUSE {major}.{minor}; homepool needs 7.{p.MIN_MINOR}")
        self.minor = min(minor, p.MINOR)
        want = (p.ASYNC_READ | p.ATOMIC_O_TRUNC | p.BIG_WRITES | p.AUTO_INVAL_DATA | p.DO_READDIRPLUS
                | p.READDIRPLUS_AUTO | p.ASYNC_DIO | p.PARALLEL_DIROPS | p.MAX_PAGES | p.INIT_EXT | p.PASSTHROUGH
                | p.DIRECT_IO_ALLOW_MMAP | p.HANDLE_KILLPRIV_V2)
        granted = offered & want
        self.direct_io = bool(granted & p.DIRECT_IO_ALLOW_MMAP)
        self.kills_set_id = bool(granted & p.HANDLE_KILLPRIV_V2)
        self.passthrough = bool(granted & p.PASSTHROUGH) and self.minor >= 40 \
            and os.environ.get("HOMEPOOL_PASSTHROUGH", "on") != "off"
        if not self.passthrough:
            granted &= ~p.PASSTHROUGH
        reply = p.INIT_OUT.pack(p.MAJOR, self.minor, max_readahead, granted & 0xFFFFFFFF, 16, 12, MAX_WRITE, 1,
                                MAX_WRITE // 4096, 0, granted >> 32, 2 if self.passthrough else 0)
        self._reply(unique, 0, reply)
        log.info("FUSE 7.%d, passthrough %s, set-id bits cleared by %s", self.minor,
                 "on" if self.passthrough else "off", "homepool" if self.kills_set_id else "the kernel")

    def held(self) -> int:
        """Inodes the kernel holds now (looked up and not yet forgotten)."""
        with self._held_lock:
            return len(self._held)

    def summary(self) -> str:
        """Requests served by opcode, with the mean time each took from reading it to replying
        (and how many small reads waited for a drive)."""
        names = {op.value: op.name for op in p.Op}
        busy = dict(self.busy)  # copies: other threads count on
        out = []
        for op, n in sorted(dict(self.served).items()):
            notes = [f"{busy[op] // n // 1000} µs"] if busy.get(op) else []  # (none yet while the first is answered)
            if op == p.Op.READ and self.reads_waited:
                notes.append(f"{self.reads_waited} from a drive, {self.reads_handed_on} handed on")
            out.append(f"{names.get(op, op)} {n}" + (f" ({'; '.join(notes)})" if notes else ""))
        return ", ".join(out) or "none"

    # -- the loop ------------------------------------------------------------------------

    def _serve(self) -> None:
        """Wait for a turn to read, then read and answer until the turn passes on: at a request
        that moves file data (`HANDED_ON`), or when the watchdog passes it on (`_watch`). A
        thread that finds more than SPARE_THREADS waiting for their turn ends (a stall, or a
        burst, is over), as libfuse's max_idle does."""
        me = threading.current_thread()
        name_os_thread()
        buf = bytearray(BUFSIZE)
        view = memoryview(buf)
        given = self._given
        given.waited = False  # (`_from_drive`)
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        try:
            while True:
                with self._turns:
                    self._idle += 1
                    try:
                        while self._reader is not None and not self.done.is_set():
                            if self._idle > SPARE_THREADS:
                                return
                            self._turns.wait()
                    finally:
                        self._idle -= 1
                    if self.done.is_set():
                        return
                    self._reader = me
                spin = False  # (a turn handed on comes while another answers: it would only compete)
                while self._reader is me:
                    n = self._next(buf, poller, spin)
                    if n is None:
                        return
                    hands_on = self._hands_on(buf)
                    if not hands_on:  # (before the count, which the watchdog looks at before sleeping)
                        self._answering_since[me] = time.monotonic()
                    self._read_count += 1
                    if not self._watching:
                        self._wake_watch.set()
                    if hands_on:
                        self._pass_turn(me)
                        answered = self._answer(buf, view, n)
                    else:
                        answered = self._answer(buf, view, n)
                        self._answering_since[me] = 0.0
                        # Not after a read that waited for a drive: the next request is as far
                        # off, and on few CPUs the spin slows the drives' answers down.
                        spin = not given.waited
                        given.waited = False
                    if not answered:
                        self._end()
                        return
        finally:
            with self._starting:
                if self._reader is me:
                    self._reader = None
                    self._turns.notify()
                self._threads.remove(me)
                self._answering_since.pop(me, None)

    def _next(self, buf: bytearray, poller: select.poll, spin: bool) -> int | None:
        """The next request (its length), looked for a while (`_spin`) before sleeping for it
        if `spin`; None once unmounted."""
        if spin and self._spin:
            until = time.perf_counter() + self._spin
            while not poller.poll(0) and time.perf_counter() < until:
                pass
        while True:
            try:
                return os.readv(self.fd, [buf])
            except OSError as e:
                if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # a signal, or a request interrupted before we read it
                if e.errno != errno.ENODEV:
                    log.error("reading /dev/fuse: %s", e)
                self._end()  # ENODEV: unmounted
                return None

    @staticmethod
    def _hands_on(buf: bytearray) -> bool:
        opcode = p.IN_HEADER.unpack_from(buf)[1]
        if opcode in (p.Op.READ, p.Op.WRITE):
            return _SIZE.unpack_from(buf, _SIZE_AT)[0] >= HAND_ON_SIZE
        return opcode in HANDED_ON

    def _pass_turn(self, me: threading.Thread, since: float | None = None) -> bool:
        """Another thread reads on (one more starts if none waits: as libfuse's loop does).
        With `since` (the watchdog): only if `me` still holds the turn with the answer it began
        then. (An answer that ends meanwhile may read one more request before it sees the turn
        gone, while the next thread reads too: each request still goes to one of them.)
        False if `me` did not have the turn."""
        with self._turns:
            if self._reader is not me or since is not None and self._answering_since.get(me) != since:
                return False
            self._reader = None
            if self._idle:
                self._turns.notify()
                return True
        self._start_thread()
        return True

    def _holding(self) -> tuple[threading.Thread | None, float]:
        """The thread whose turn it is, and when it began the answer it gives (0: it reads)."""
        reader = self._reader
        return reader, self._answering_since.get(reader, 0.0) if reader is not None else 0.0

    def _watch(self) -> None:
        """Pass the turn to read on when an answer holds it HAND_ON_AFTER seconds: a request
        waiting on a drive that hangs, or on the pool's lock, holds up only itself. Asleep
        while no request comes (the first one read wakes it)."""
        name_os_thread()
        seen = -1
        while not self.done.is_set():
            reader, since = self._holding()
            if reader is not None and since and time.monotonic() - since >= HAND_ON_AFTER:
                self._pass_turn(reader, since)
            elif not since and self._read_count == seen:  # none for a while: sleep
                self._watching = False
                if self._read_count == seen and not self._holding()[1]:
                    self._wake_watch.wait()  # (a request read meanwhile wakes it)
                    self._wake_watch.clear()
                self._watching = True
            seen = self._read_count
            self.done.wait(HAND_ON_AFTER)

    def _answer(self, buf: bytearray, view: memoryview, n: int) -> bool:
        """Answer one request read into `buf`; False when the kernel ends the connection."""
        _, opcode, unique, nodeid, uid, gid, pid, extlen, _ = p.IN_HEADER.unpack_from(buf)
        body = view[p.IN_HEADER.size:n]
        self.served[opcode] += 1
        handler = self._handlers.get(opcode)
        if handler is None:
            if opcode in (p.Op.FORGET, p.Op.BATCH_FORGET):
                self._forgotten(opcode, nodeid, body)  # no reply expected
            elif opcode == p.Op.DESTROY:
                self._reply(unique, 0)
                return False
            elif opcode != p.Op.INTERRUPT:
                self._reply(unique, -errno.ENOSYS)
            return True
        started = time.perf_counter_ns()
        self._given.inodes = []
        try:
            out = handler(Ctx(uid, gid, pid), nodeid, body)
        except FuseError as e:
            self._reply(unique, -e.errno)
        except Exception:  # a bug costs one request, never the mount
            log.exception("internal error in FUSE request %d", opcode)
            self._reply(unique, -errno.EIO)
        else:
            if not self._reply(unique, 0, out) and self._given.inodes:
                self._drop_held((ino, 1) for ino in self._given.inodes)  # the kernel did not get them
        self.busy[opcode] += time.perf_counter_ns() - started
        return True

    def _reply(self, unique: int, error: int, payload: bytes | memoryview | None = None) -> bool:
        """Answer a request; False if the kernel did not take the answer."""
        size = p.OUT_HEADER.size + (len(payload) if payload else 0)
        parts: list[bytes | memoryview] = [p.OUT_HEADER.pack(size, error, unique)]
        if payload:
            parts.append(payload)
        try:
            os.writev(self.fd, parts)
            return True
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV):  # ENOENT: the request was interrupted
                log.error("replying to the kernel: %s", e)
            return False

    # -- telling the kernel what changed behind its back ----------------------------------

    def forget_entry(self, parent: int, name: bytes) -> None:
        """Drop the kernel's cached entry (or cached absence) of `name` in `parent`, and the
        parent's attributes and listing: for changes made without a request (a command via the
        control socket)."""
        self._notify(p.NOTIFY_INVAL_ENTRY, p.INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0")
        self._notify(p.NOTIFY_INVAL_INODE, p.INVAL_INODE_OUT.pack(parent, 0, 0))  # attributes and listing

    def forget_inode(self, ino: int, data: bool = True) -> None:
        """Drop the kernel's cached attributes and (`data`) data of an inode changed without a request."""
        self._notify(p.NOTIFY_INVAL_INODE, p.INVAL_INODE_OUT.pack(ino, 0 if data else -1, 0))

    def _notify(self, code: int, payload: bytes) -> None:
        try:
            os.writev(self.fd, [p.OUT_HEADER.pack(p.OUT_HEADER.size + len(payload), code, 0), payload])
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: nothing of it was cached
                log.warning("telling the kernel of a change: %s", e)

    # -- passthrough ---------------------------------------------------------------------

    def backing_open(self, fd: int) -> int | None:
        """Register a member drive's file for passthrough; its id, or None if refused."""
        if not self.passthrough:
            return None
        arg = bytearray(p_backing_map(fd))
        try:
            return fcntl.ioctl(self.fd, p.DEV_IOC_BACKING_OPEN, arg)
        except OSError as e:
            log.warning("passthrough refused by the kernel (%s); reads and writes go through homepool", e)
            if e.errno in (errno.EPERM, errno.ENOTTY, errno.EOPNOTSUPP):
                self.passthrough = False  # it will not change while mounted
            return None

    def backing_close(self, backing_id: int) -> None:
        try:
            fcntl.ioctl(self.fd, p.DEV_IOC_BACKING_CLOSE, bytearray(backing_id.to_bytes(4, "little")))
        except OSError as e:
            log.warning("closing passthrough id %d: %s", backing_id, e)

    # -- inodes the kernel holds -----------------------------------------------------------

    def _entry(self, attr: p.Attr | None) -> bytes:
        """A reply that gives the kernel an inode (or a missing name): it holds one more lookup."""
        if attr is not None:
            self._hold([attr.ino])
        return p.pack_entry(attr, self.ops.answer_timeout())

    def _hold(self, inodes: list[int]) -> None:
        """Count a lookup of each of `inodes`, given in the reply being made (on this thread)."""
        with self._held_lock:
            for ino in inodes:
                self._held[ino] = self._held.get(ino, 0) + 1
        self._given.inodes.extend(inodes)

    def _drop_held(self, dropped: Iterable[tuple[int, int]]) -> None:
        with self._held_lock:
            for ino, n in dropped:
                left = self._held.pop(ino, 0) - n
                if left > 0:
                    self._held[ino] = left

    def _forgotten(self, opcode: int, nodeid: int, body: memoryview) -> None:
        """FORGET or BATCH_FORGET: the kernel gives back lookups of inodes it dropped."""
        try:
            if opcode == p.Op.FORGET:
                dropped: Iterable[tuple[int, int]] = [(nodeid, p.FORGET_IN.unpack_from(body)[0])]
            else:
                (count, _) = p.BATCH_FORGET_IN.unpack_from(body)
                dropped = p.FORGET_ONE.iter_unpack(body[p.BATCH_FORGET_IN.size:][:count * p.FORGET_ONE.size])
            self._drop_held(dropped)
        except struct.error:  # a malformed one costs only the hint (listings send attributes)
            log.warning("a FORGET request the mount could not read")

    # -- requests: each parses its message, calls `ops`, packs the reply -------------------

    def _lookup(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        (name,) = _names(body, 1)
        return self._entry(self.ops.lookup(ctx, nodeid, name))

    def _getattr(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        attr = self.ops.getattr(ctx, nodeid)
        return p.pack_attr_out(attr, self.ops.answer_timeout())

    def _setattr(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        (valid, _, fh, size, _, atime, mtime, _, atimensec, mtimensec, _, mode, _, uid, gid, _
         ) = p.SETATTR_IN.unpack_from(body)
        now = None
        if valid & (p.FATTR_ATIME_NOW | p.FATTR_MTIME_NOW):
            now = time.time_ns()
        change = SetAttr(
            size=size if valid & p.FATTR_SIZE else None,
            mode=mode if valid & p.FATTR_MODE else None,
            uid=uid if valid & p.FATTR_UID else None,
            gid=gid if valid & p.FATTR_GID else None,
            atime_ns=now if valid & p.FATTR_ATIME_NOW else atime * 10**9 + atimensec if valid & p.FATTR_ATIME else None,
            mtime_ns=now if valid & p.FATTR_MTIME_NOW else mtime * 10**9 + mtimensec if valid & p.FATTR_MTIME else None,
            # With HANDLE_KILLPRIV_V2 the kernel leaves clearing set-id bits to us: a truncate
            # says when, a chown always clears them (chown(-1, -1) too: it comes changing nothing).
            kill_set_id=bool(valid & p.FATTR_KILL_SUIDGID and valid & p.FATTR_SIZE)
            or self.kills_set_id and bool(valid & (p.FATTR_UID | p.FATTR_GID) or not valid & p.FATTR_CHANGES),
        )
        attr = self.ops.setattr(ctx, nodeid, fh if valid & p.FATTR_FH else None, change)
        return p.pack_attr_out(attr, self.ops.answer_timeout())

    def _readlink(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        return self.ops.readlink(ctx, nodeid)

    def _symlink(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        name, target = _names(body, 2)
        return self._entry(self.ops.symlink(ctx, nodeid, name, target))

    def _mknod(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        mode, rdev, _, _ = p.MKNOD_IN.unpack_from(body)
        (name,) = _names(body[p.MKNOD_IN.size:], 1)
        return self._entry(self.ops.mknod(ctx, nodeid, name, mode, rdev))

    def _mkdir(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        mode, _ = p.MKDIR_IN.unpack_from(body)
        (name,) = _names(body[p.MKDIR_IN.size:], 1)
        return self._entry(self.ops.mkdir(ctx, nodeid, name, mode))

    def _unlink(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        self.ops.unlink(ctx, nodeid, _names(body, 1)[0])
        return b""

    def _rmdir(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        self.ops.rmdir(ctx, nodeid, _names(body, 1)[0])
        return b""

    def _rename(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        (newdir,) = p.RENAME_IN.unpack_from(body)
        old, new = _names(body[p.RENAME_IN.size:], 2)
        self.ops.rename(ctx, nodeid, old, newdir, new, 0)
        return b""

    def _rename2(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        newdir, flags, _ = p.RENAME2_IN.unpack_from(body)
        old, new = _names(body[p.RENAME2_IN.size:], 2)
        self.ops.rename(ctx, nodeid, old, newdir, new, flags)
        return b""

    def _link(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        (old,) = p.LINK_IN.unpack_from(body)
        (name,) = _names(body[p.LINK_IN.size:], 1)
        return self._entry(self.ops.link(ctx, old, nodeid, name))

    @staticmethod
    def _opened(o: Opened) -> bytes:
        flags = ((p.FOPEN_KEEP_CACHE if o.keep_cache else 0) | (p.FOPEN_PASSTHROUGH if o.backing_id is not None else 0)
                 | (p.FOPEN_DIRECT_IO if o.direct else 0))
        return p.OPEN_OUT.pack(o.fh, flags, o.backing_id or 0)

    def _open(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        flags, open_flags = p.OPEN_IN.unpack_from(body)
        return self._opened(self.ops.open(ctx, nodeid, flags, kill_set_id=bool(open_flags & p.OPEN_KILL_SUIDGID)))

    def _create(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        flags, mode, _, _ = p.CREATE_IN.unpack_from(body)
        (name,) = _names(body[p.CREATE_IN.size:], 1)
        attr, opened = self.ops.create(ctx, nodeid, name, mode, flags)
        return self._entry(attr) + self._opened(opened)

    def _read(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        fh, off, size, *_ = p.READ_IN.unpack_from(body)
        if size >= HAND_ON_SIZE:  # (it handed the turn on already)
            return self.ops.read(fh, off, size)
        if self._read_wait < self._slow_read:
            # Drives answer fast lately: read at once. Asking memory first (RWF_NOWAIT) starts
            # the drive's read and then waits for it again: it cost a read from a drive 25 µs.
            started = time.perf_counter()
            data = self.ops.read(fh, off, size)
            if (took := time.perf_counter() - started) >= FROM_DRIVE:
                self._from_drive(took)
            return data
        try:
            return self.ops.read(fh, off, size, wait=False)
        except BlockingIOError:  # not in memory: the drive must be asked
            pass
        if self._pass_turn(threading.current_thread()):
            self.reads_handed_on += 1  # (a spinning disk: other requests go on meanwhile)
        started = time.perf_counter()
        data = self.ops.read(fh, off, size)
        self._from_drive(time.perf_counter() - started)
        return data

    def _from_drive(self, took: float) -> None:
        """A small read waited `took` seconds for a drive."""
        self.reads_waited += 1
        self._read_wait += (took - self._read_wait) / 8
        self._given.waited = True

    def _write(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        fh, off, size, write_flags, *_ = p.WRITE_IN.unpack_from(body)
        data = body[p.WRITE_IN.size:p.WRITE_IN.size + size]
        # The writer may not keep set-id bits; the kernel leaves clearing them to us (direct I/O or KILLPRIV_V2).
        kill = bool(write_flags & p.WRITE_KILL_SUIDGID)
        return p.WRITE_OUT.pack(self.ops.write(fh, off, data, kill_suidgid=kill, ctx=ctx), 0)

    def _flush(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        (fh, *_) = p.FLUSH_IN.unpack_from(body)
        self.ops.flush(fh, ctx.pid)
        return b""

    def _release(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        (fh, *_) = p.RELEASE_IN.unpack_from(body)
        self.ops.release(fh)
        return b""

    def _fsync(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        fh, flags, _ = p.FSYNC_IN.unpack_from(body)
        self.ops.fsync(fh, bool(flags & p.FSYNC_FDATASYNC))
        return b""

    def _statfs(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        s = self.ops.statfs(ctx)
        return p.STATFS_OUT.pack(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.bsize, 0)

    def _opendir(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        # No directory handles: after this answer the kernel opens directories without asking
        # (no OPENDIR, no RELEASEDIR: two round trips fewer per directory listed) and keeps
        # their listings (FOPEN_CACHE_DIR by default). It drops one itself when a change through
        # the mount touches the directory, and `forget_entry` drops it for a change made otherwise.
        raise FuseError(errno.ENOSYS)

    def _entries(self, nodeid: int, body: memoryview, plus: bool) -> bytes:
        """READDIR(PLUS): as many entries as fit. READDIRPLUS gives the attributes of the inodes
        the kernel does not hold (it takes a lookup of each); an entry it holds goes without
        them, which the kernel takes as "nothing new", at a fraction of the cost both here and
        there (a walk just after creating, or a second `ls -l`)."""
        _, off, size, *_ = p.READ_IN.unpack_from(body)
        out: list[bytes] = []
        used = 0
        held = self._held if plus else None
        given: list[int] = []
        most = max(1, size // ((p.DIRENTPLUS if plus else p.DIRENT).size + 8))  # the shortest entries fit
        entries = list(self.ops.readdir(nodeid, off, most, held))
        timeout = self.ops.answer_timeout()
        for name, ino, mode, attr, next_off in entries:
            if not plus:
                rec = p.dirent(ino, next_off, name, mode)
            elif attr is None:
                rec = p.direntplus_bare(ino, next_off, name, mode)
            else:
                rec = p.direntplus(attr, next_off, name, timeout)
            if used + len(rec) > size:
                break
            out.append(rec)
            used += len(rec)
            if attr is not None:
                given.append(ino)
        if given:
            self._hold(given)
        return b"".join(out)

    def _readdir(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        return self._entries(nodeid, body, plus=False)

    def _readdirplus(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        return self._entries(nodeid, body, plus=True)

    def _fsyncdir(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        self.ops.fsyncdir()
        return b""

    def _setxattr(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        size, flags = p.SETXATTR_IN.unpack_from(body)
        rest = bytes(body[p.SETXATTR_IN.size:])
        name, _, value = rest.partition(b"\0")
        self.ops.setxattr(ctx, nodeid, name, value[:size], flags)
        return b""

    def _xattr_reply(self, data: bytes, size: int) -> bytes:
        if size == 0:
            return p.GETXATTR_OUT.pack(len(data), 0)
        if len(data) > size:
            raise FuseError(errno.ERANGE)
        return data

    def _getxattr(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        size, _ = p.GETXATTR_IN.unpack_from(body)
        (name,) = _names(body[p.GETXATTR_IN.size:], 1)
        return self._xattr_reply(self.ops.getxattr(ctx, nodeid, name), size)

    def _listxattr(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        size, _ = p.GETXATTR_IN.unpack_from(body)
        return self._xattr_reply(b"".join(n + b"\0" for n in self.ops.listxattr(ctx, nodeid)), size)

    def _removexattr(self, ctx: Ctx, nodeid: int, body: memoryview) -> bytes:
        self.ops.removexattr(ctx, nodeid, _names(body, 1)[0])
        return b""


def p_backing_map(fd: int) -> bytes:
    """struct fuse_backing_map {int32 fd; uint32 flags; uint64 padding}"""
    return fd.to_bytes(4, "little", signed=True) + bytes(12)


_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount: {os.strerror(e)}")


def _fusermount(mountpoint: Path, opts: str) -> int:
    """Mount as an ordinary user: fusermount3 (setuid root) mounts and sends the /dev/fuse fd
    back over a socket named in _FUSE_COMMFD."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        env = dict(os.environ, _FUSE_COMMFD=str(theirs.fileno()))
        proc = subprocess.Popen(["fusermount3", "-o", opts, "--", str(mountpoint)], env=env,
                                pass_fds=[theirs.fileno()], stderr=subprocess.PIPE)
        theirs.close()
        _, fds, _, _ = socket.recv_fds(ours, 1, 1)
        _, err = proc.communicate()
        if not fds:
            raise OSError(errno.EPERM, err.decode(errors="replace").strip() or "fusermount3 failed")
        return fds[0]
    finally:
        ours.close()


def unmount(mountpoint: Path) -> None:
    """Detach the mount (root), or ask fusermount3 to."""
    if _libc.umount2(str(mountpoint).encode(), MNT_DETACH) == 0:
        return
    if ctypes.get_errno() in (errno.EINVAL, errno.ENOENT):
        return  # not mounted any more
    subprocess.run(["fusermount3", "-u", "-z", "--", str(mountpoint)], capture_output=True)

"""Streaming one source into temp files on several drives at once, hashing on the way.

The reader (the calling thread) reads the source in 1 MiB chunks and hashes them; each target
drive gets its own writer thread and a short queue, so one slow drive never holds up the read
or the other drives, and memory stays bounded (QUEUE_DEPTH chunks per drive) whatever the file
size. Small files skip the threads: their cost is per file, not per byte. No catalog here.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass, field
from typing import BinaryIO

import blake3

from .log import name_os_thread

CHUNK = 1 << 20
QUEUE_DEPTH = 8
THREADED_ABOVE = 8 * CHUNK  # below this, writing inline is cheaper than handing off
MULTITHREAD_ABOVE = 16 * CHUNK  # files this big are hashed by several threads at once


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


def hash_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb", buffering=0) as f:
        return hash_fd(f.fileno())


def hash_fd(fd: int) -> str:
    """The whole file's hash, read with pread: the descriptor's offset is left alone (the
    mount hashes copies that programs still have open). The buffer fits the file (a fresh
    1 MiB one costs more than hashing a small file), and big files are hashed on every core."""
    size = os.fstat(fd).st_size
    h = blake3.blake3(max_threads=blake3.blake3.AUTO) if size >= MULTITHREAD_ABOVE else new_hasher()
    buf = bytearray(min(CHUNK, size + 1))  # +1: the read that finds the end
    view = memoryview(buf)
    off = 0
    while n := os.preadv(fd, [buf], off):
        h.update(view[:n])
        off += n
    return h.hexdigest()


@dataclass
class Target:
    """One temp file being written on one drive."""

    key: int  # drive id
    fd: int
    error: OSError | None = None
    _queue: queue.Queue[tuple[bytearray, int] | None] | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class _Buffers:
    """A fixed set of chunk buffers, each handed back when every writer is done with it.

    Reusing them matters: a fresh 1 MiB bytes object per chunk means fresh pages from the
    kernel for every MiB copied, which on a VM that hands freed memory back to its host can
    cost more than the copy itself."""

    def __init__(self, count: int) -> None:
        self.free: queue.Queue[bytearray] = queue.Queue()
        for _ in range(count):
            self.free.put(bytearray(CHUNK))
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()

    def lend(self, buf: bytearray, users: int) -> None:
        with self._lock:
            self._users[id(buf)] = users

    def give_back(self, buf: bytearray) -> None:
        with self._lock:
            self._users[id(buf)] -= 1
            done = self._users[id(buf)] == 0
        if done:
            self.free.put(buf)


def _writer(t: Target, bufs: _Buffers, fsync: bool) -> None:
    name_os_thread()
    assert t._queue is not None
    while True:
        item = t._queue.get()
        if item is None:
            break
        buf, n = item
        if t.error is None:
            try:
                _write_all(t.fd, memoryview(buf)[:n])
            except OSError as e:
                t.error = e
        bufs.give_back(buf)
    if fsync and t.error is None:
        try:
            os.fsync(t.fd)
        except OSError as e:
            t.error = e


def copy_to(src: BinaryIO, targets: list[Target], size_hint: int, fsync: bool) -> tuple[int, str]:
    """Copy `src` to every target's fd; return (bytes read, BLAKE3 hex digest).

    A target that fails gets its `error` set and is written no more; the others carry on.
    Raises only for errors reading `src`."""
    h = new_hasher()
    total = 0
    if size_hint <= THREADED_ABOVE:
        # One buffer, sized to what the file should hold (+1 to see its end in the same call),
        # at least 64 KiB (served from the heap, not fresh pages from the kernel).
        buf = bytearray(min(CHUNK, max(size_hint + 1, 64 << 10)))
        while n := src.readinto(buf):  # type: ignore[attr-defined]
            chunk = memoryview(buf)[:n]
            total += n
            h.update(chunk)
            for t in targets:
                if t.error is None:
                    try:
                        _write_all(t.fd, chunk)
                    except OSError as e:
                        t.error = e
        if fsync:
            for t in targets:
                if t.error is None:
                    try:
                        os.fsync(t.fd)
                    except OSError as e:
                        t.error = e
        return total, h.hexdigest()

    bufs = _Buffers(QUEUE_DEPTH + 2)
    for t in targets:
        t._queue = queue.Queue()  # bounded by the buffers in circulation
        t._thread = threading.Thread(target=_writer, args=(t, bufs, fsync), daemon=True, name=f"write-{t.key}")
        t._thread.start()
    try:
        while True:
            buf = bufs.free.get()
            n = src.readinto(buf)  # type: ignore[attr-defined]
            if not n:
                break
            total += n
            h.update(memoryview(buf)[:n])
            if targets:
                bufs.lend(buf, len(targets))
                for t in targets:
                    assert t._queue is not None
                    t._queue.put((buf, n))
            else:
                bufs.free.put(buf)
    finally:
        for t in targets:
            assert t._queue is not None and t._thread is not None
            t._queue.put(None)
            t._thread.join()
    return total, h.hexdigest()

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

CHUNK = 1 << 20
QUEUE_DEPTH = 8
THREADED_ABOVE = 8 * CHUNK  # below this, writing inline is cheaper than handing off


def new_hasher() -> blake3.blake3:
    return blake3.blake3()


def hash_file(path: str | os.PathLike[str]) -> str:
    h = new_hasher()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


@dataclass
class Target:
    """One temp file being written on one drive."""

    key: int  # drive id
    fd: int
    error: OSError | None = None
    _queue: queue.Queue[bytes | None] | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _writer(t: Target, fsync: bool) -> None:
    assert t._queue is not None
    while True:
        chunk = t._queue.get()
        if chunk is None:
            break
        if t.error is None:
            try:
                _write_all(t.fd, chunk)
            except OSError as e:
                t.error = e
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
        # Ask for what the file should hold (+1 to see its end in the same call): a 1 MiB
        # read of a 4 KiB file would allocate and free a 1 MiB buffer for nothing.
        want = min(CHUNK, max(size_hint, 0) + 1)
        while chunk := src.read(want):
            want = CHUNK
            total += len(chunk)
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

    for t in targets:
        t._queue = queue.Queue(QUEUE_DEPTH)
        t._thread = threading.Thread(target=_writer, args=(t, fsync), daemon=True, name=f"write-{t.key}")
        t._thread.start()
    try:
        while chunk := src.read(CHUNK):
            total += len(chunk)
            h.update(chunk)
            for t in targets:
                if t.error is None:
                    assert t._queue is not None
                    t._queue.put(chunk)
    finally:
        for t in targets:
            assert t._queue is not None and t._thread is not None
            t._queue.put(None)
            t._thread.join()
    return total, h.hexdigest()

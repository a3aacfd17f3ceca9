"""A look at the pool that needs no lock: for the mount's lookups while a change is stuck.

A change holds the pool's lock through its drive steps, so a drive that stops answering (a
dying disk, a hung USB bridge) holds the lock until the kernel answers or fails the call. The
mount's requests that only read (lookups, attributes, listings, symlinks) then read this
instead: the catalog as last committed, on a connection of its own (WAL: a reader never waits
for the writer), with the directory times the pool keeps in memory laid over it
(`LiveOps.dir_time`: read without the lock). What only the lock can tell (a file open here
for writing, deleted while open, or being recorded at its close: `LiveOps.held_in_memory`)
raises `Unsure`, and the request waits for the lock after all.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..catalog import Catalog, Entry, Listed, Node
from ..drives import Drive
from ..errors import NotFound
from .core import Pool, named


class Unsure(Exception):
    """The catalog as committed is not what the mount shows: ask under the lock."""


class Glance:
    """The parts of `Pool`'s reading API that `fuse.ops` uses, answered without its lock."""

    def __init__(self, pool: Pool, catalog_path: Path, opened_past: Callable[[int], bool] = lambda _: False) -> None:
        self._pool = pool
        self._opened_past = opened_past  # whether the mount opened a node past the lock (not yet the pool's)
        self.cat = Catalog(catalog_path, readonly=True)
        self.lock = threading.Lock()  # one connection, one request at a time (glances are rare)
        self._touched: set[int] = set()  # what the open group had changed when the snapshot began

    def close(self) -> None:
        with self.lock:
            self.cat.close()

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One request's reads see one commit (a lookup reads a name, then its node), the one
        its first read finds. What the open group has changed is taken before that (a group
        committed in between is then doubted, never missed: `_changed`)."""
        self._touched = self._pool.group_touched  # (replaced, never emptied, when a group ends)
        self.cat.db.execute("BEGIN")
        try:
            yield
        finally:
            self.cat.db.execute("COMMIT")

    # What the pool keeps in memory is read before the catalog: the pool records it, then
    # forgets it, so read the other way round both could be missed.

    def node(self, node_id: int) -> Node:
        changed = self._pool.dir_time(node_id)
        opened_past = self._opened_past(node_id)  # (before the pool's: a handle goes from there to the pool)
        if self._pool.held_in_memory(node_id) or self._changed(node_id):
            raise Unsure
        node = self.cat.node_or_none(node_id)
        if node is None:
            if opened_past:
                raise Unsure  # deleted while open: the pool learns of the handle with the lock
            raise NotFound(path=f"#{node_id}")
        if changed is not None:
            node = node.but(mtime_ns=changed, ctime_ns=max(changed, node.ctime_ns))
        return node

    def unlinked(self, node_id: int) -> bool:
        return False  # (`node` is Unsure of those)

    def child(self, parent_id: int, name: str) -> Node | None:
        if self._changed(parent_id):
            raise Unsure
        return named(self.cat, parent_id, name)

    def _changed(self, node_id: int) -> bool:
        """Whether a change not yet committed (`Pool.group_steps`), which has returned, is on
        this node or in this directory."""
        return node_id in self._touched or node_id in self._pool.group_touched

    def listing(self, node_id: int, after: int, most: int) -> list[Listed]:
        if self._changed(node_id):
            raise Unsure
        return self.cat.listing(node_id, after, most)

    def entries(self, node_id: int, after: int, upto: int) -> dict[int, Entry]:
        """`Catalog.entries`, without the files open here (the listing names them without
        attributes: the kernel looks them up when it needs them)."""
        times, held = self._pool.dir_times(), self._pool.all_held_in_memory()
        if self._changed(node_id):
            raise Unsure
        out = {}
        for place, e in self.cat.entries(node_id, after, upto).items():
            if e.id in held:
                continue
            if (changed := times.get(e.id)) is not None:
                e = e._replace(mtime_ns=changed, ctime_ns=max(changed, e.ctime_ns))
            out[place] = e
        return out

    def copies(self, node_id: int) -> tuple[str, list[tuple[Drive, int, int]]]:
        """A file's pool path, and (drive, size, mtime_ns) of each good copy of it on the drives
        the pool last saw present (its snapshot: looking at the drives is for the lock holder).
        Unsure while a change of that path is journaled: its drive steps may be under way."""
        path = self.cat.path_of(node_id)
        if self._journaled(path) or self._changed(node_id):
            raise Unsure
        cache = self._pool.drive_cache
        present = {d.id: d for d in cache[1] if d.row.state == "active"} if cache else {}
        held = [(present[r.drive_id], r.size, r.mtime_ns) for r in self.cat.replicas(node_id)
                if r.state == "ok" and r.drive_id in present]
        return path, held

    def still(self, node_id: int, path: str, drive_id: int, size: int, mtime_ns: int) -> bool:
        """Whether the catalog still has the file at `path`, with that copy on that drive, and
        no change of the path journaled: then the copy opened there meanwhile is the file's
        (renames and drops are recorded before their drive steps)."""
        return (self.cat.node_or_none(node_id) is not None and self.cat.path_of(node_id) == path
                and not self._journaled(path)
                and any((r.drive_id, r.state, r.size, r.mtime_ns) == (drive_id, "ok", size, mtime_ns)
                        for r in self.cat.replicas(node_id)))

    def _journaled(self, path: str) -> bool:
        """Whether a journaled change (its drive steps perhaps under way) is on `path`."""
        return any(path == p or path.startswith(p + "/") for e in self.cat.journal() for p in _paths_in(e.payload))


def _paths_in(payload: dict) -> Iterator[str]:
    """The pool paths a journal entry changes (of any kind of change)."""
    for key in ("path", "src", "dst", "heir"):
        if isinstance(payload.get(key), str):
            yield payload[key]
    yield from (p for p in payload.get("links", ()) if isinstance(p, str))
    for f in payload.get("files", ()):
        yield f["path"]
        yield from f.get("links", ())

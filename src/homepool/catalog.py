"""The catalog: an SQLite index of the pool and a record of intent.

Drives are the truth for data; the catalog says which files exist, what they should contain
(hash, size), where their copies are, how many copies each folder wants, and which multi-step
operations are under way (the journal). Only the pool layer (`pool/`, and `recover` building
a new catalog) writes to it. All SQL lives here.

`create_tables` is the schema's documentation. The connection runs in autocommit mode;
`transaction()` groups statements (BEGIN IMMEDIATE, so a writer waits for another writer
instead of failing half-way).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import stat
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from operator import itemgetter
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

# Bump with every schema change and add a step to `_UPGRADES`.
#   1: the first catalog
#   2: `owed` (steps owed to drives that were missing)
#   3: nodes gain owners, ctime, symlinks and special files (what the mount needs)
#   4: access times
#   5: hard links ('link' nodes, `link_to`, `links`)
#   6: `nodes_by_parent` (the mount lists a directory a page at a time)
#   7: `place`, and `nodes_by_parent` by place (a name keeps its place in a listing)
#   8: `nodes_by_place` (new ids are above every place: see `_new_id`)
CURRENT_REV = 8
ROOT_ID = 1
CACHED_NODES = 100_000  # nodes and paths the mount keeps in memory (about 50 MB at most)
CACHED_FOLDERS = 1000  # top-level names the mount remembers as a folder or as none

T = TypeVar("T")
# Journal and owed rows as JSON: rows are never circular, and not looking costs half the time.
to_json = json.JSONEncoder(check_circular=False).encode


class NoSuchRowError(Exception):
    """A query that must return one row returned none."""


@dataclass(frozen=True)
class DriveRow:
    id: int
    uuid: str
    path: str
    label: str
    added_at: str
    max_size: int | None
    shared_device: bool
    state: str


@dataclass(frozen=True)
class Node:
    id: int
    parent_id: int | None
    name: str
    kind: str  # 'dir', 'file', 'symlink', 'special' (a FIFO, socket or device node) or 'link'
    size: int
    mode: int
    mtime_ns: int
    hash: str | None
    uid: int = 0
    gid: int = 0
    ctime_ns: int = 0
    target: str | None = None  # a symlink's target
    rdev: int = 0  # a device node's device number
    atime_ns: int = 0  # set by utimens only: reads do not change it (as with noatime)
    link_to: int | None = None  # a 'link' (an extra name, a hard link): the node it names
    links: int = 0  # a file's other names; a directory's subdirectories (their '..')

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def is_link(self) -> bool:
        """An extra name of another node: `Catalog.resolve` gives that node."""
        return self.kind == "link"

    @property
    def nlink(self) -> int:
        """The link count: a directory's name and '.', or a file's name, and `links` more."""
        return (2 if self.kind == "dir" else 1) + self.links

    def but(self, **fields: Any) -> Node:
        """A copy with some fields changed: `dataclasses.replace` without its checks, which cost
        more than the rest of a getattr (the mount makes one per request on an open file)."""
        new = object.__new__(Node)
        new.__dict__.update(self.__dict__, **fields)
        return new

    @staticmethod
    def of_row(row: Sequence[Any]) -> Node:
        """A node from a row of `Catalog._NODE_COLS` (the mount makes one at every lookup)."""
        return _made(Node, _NODE_FIELDS, row)

    @property
    def is_file(self) -> bool:
        """Only files have copies (on as many drives as their folder wants). Directories,
        symlinks and special files are small and are made on every drive."""
        return self.kind == "file"


def _made(cls: type[T], names: tuple[str, ...], values: Sequence[Any]) -> T:
    """`cls(*values)` of a frozen dataclass, without its setattr per field (twice as fast)."""
    new = object.__new__(cls)
    new.__dict__.update(zip(names, values, strict=True))
    return new


_NODE_FIELDS = tuple(f.name for f in fields(Node))  # in `Catalog._NODE_COLS` order


Listed = tuple[int, int, str, str, int]  # a directory entry as `Catalog.listing` gives it


_place = itemgetter(0)  # a listing entry's place (in C: bisect calls it a dozen times)


class Entry(NamedTuple):
    """A directory entry as a listing shows it: a Node's attributes without its content (and
    cheaper to make, as listings have thousands)."""

    id: int
    name: str
    kind: str
    size: int
    mode: int
    mtime_ns: int
    uid: int
    gid: int
    ctime_ns: int
    rdev: int
    atime_ns: int
    links: int
    link_to: int | None  # an extra name (hard link): the node it names; `entries` shows that node

    @property
    def nlink(self) -> int:
        """The link count: a directory's name and '.', or a file's name, and `links` more."""
        return (2 if self.kind == "dir" else 1) + self.links


@dataclass(frozen=True)
class Replica:
    node_id: int
    drive_id: int
    size: int
    mtime_ns: int
    hash: str | None
    state: str  # 'ok' or 'bad'


_REPLICA_FIELDS = tuple(f.name for f in fields(Replica))


def _by_drive(r: Replica) -> int:
    return r.drive_id


@dataclass(frozen=True)
class JournalEntry:
    id: int
    op: str
    payload: dict[str, Any]
    created: float


def create_tables(db: sqlite3.Connection) -> None:
    """Create the schema (inside the caller's transaction: executescript would commit it)."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)


SCHEMA = """
        -- Key/value facts about the catalog itself.
        --   schema_rev: CURRENT_REV when written, pool_id: the pool's uuid,
        --   saved_at: unix time a copy was made (the newest copy wins in `recover`).
        CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );

        -- Member drives. `path` is where the drive's filesystem is mounted now, `uuid` is the
        -- identity written to PATH/.homepool/drive.toml. `max_size` caps what the pool may
        -- store there (NULL: no cap). `shared_device` is 1 when the drive was added with
        -- --allow-shared-device (it shares a filesystem with another member, so two copies
        -- there do not protect against a failed disk). `state`: 'active' or 'missing'.
        CREATE TABLE drives (
            id            INTEGER PRIMARY KEY,
            uuid          TEXT NOT NULL UNIQUE,
            path          TEXT NOT NULL UNIQUE,
            label         TEXT NOT NULL,
            added_at      TEXT NOT NULL,
            max_size      INTEGER,
            shared_device INTEGER NOT NULL DEFAULT 0,
            state         TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'missing'))
        );

        -- The pool's tree. id 1 is the root (parent_id NULL, name ''). Children of the root
        -- are folders (see `folders`), files never sit at the root. For files: `size` in
        -- bytes, `hash` the BLAKE3 hex digest of the content. For dirs size is 0 and hash
        -- NULL. `mtime_ns`/`mode` are what the plain copies on the drives carry too.
        -- Names are UTF-8 and unique within a directory (case-sensitive, as on the drives).
        -- `mode` includes the file type bits. `uid`/`gid`/`ctime_ns` are what the mount shows
        -- (the copies carry the same owner). A 'symlink' has its `target` (and `size` is its
        -- length), a 'special' node is a FIFO, socket or device (`rdev`). Like directories,
        -- symlinks and special files are on every drive and have no `replicas` rows.
        -- A 'link' is an extra name (a hard link) of the node `link_to`, a file, symlink or
        -- special file in the same top-level folder (its own other columns mean nothing). On
        -- the drives it is a hard link of that node's entry, on each drive that has one.
        -- `links` counts a node's other links: a node's 'link' names, a directory's
        -- subdirectories (each one's '..'), so its link count is 1 or 2 (a dir) + links.
        CREATE TABLE nodes (
            id        INTEGER PRIMARY KEY,
            parent_id INTEGER REFERENCES nodes(id),
            name      TEXT NOT NULL,
            kind      TEXT NOT NULL CHECK (kind IN ('dir', 'file', 'symlink', 'special', 'link')),
            size      INTEGER NOT NULL DEFAULT 0,
            mode      INTEGER NOT NULL,
            mtime_ns  INTEGER NOT NULL,
            hash      TEXT,
            uid       INTEGER NOT NULL DEFAULT 0,
            gid       INTEGER NOT NULL DEFAULT 0,
            ctime_ns  INTEGER NOT NULL DEFAULT 0,
            target    TEXT,
            rdev      INTEGER NOT NULL DEFAULT 0,
            atime_ns  INTEGER NOT NULL DEFAULT 0,
            link_to   INTEGER REFERENCES nodes(id),
            links     INTEGER NOT NULL DEFAULT 0,
            place     INTEGER,
            UNIQUE (parent_id, name)
        );
        CREATE INDEX nodes_by_link ON nodes(link_to) WHERE link_to IS NOT NULL;
        -- A directory's children by their place in its listing: their id, or (`place`) the id
        -- of the name an own name took over (see `listing` and `remove_name`).
        CREATE INDEX nodes_by_parent ON nodes(parent_id, coalesce(place, id));
        -- The highest place, for new ids (`Catalog._new_id`).
        CREATE INDEX nodes_by_place ON nodes(place) WHERE place IS NOT NULL;

        -- Top-level folders and how many copies (on distinct drives) their files want.
        -- `fold` is the case-folded name: unique, because Windows and macOS clients
        -- cannot tell 'Photos' from 'photos'.
        CREATE TABLE folders (
            node_id INTEGER PRIMARY KEY REFERENCES nodes(id),
            fold    TEXT NOT NULL UNIQUE,
            copies  INTEGER NOT NULL CHECK (copies >= 1)
        );

        -- Where each file's copies are. One row per (file, drive). `size`, `mtime_ns` and
        -- `hash` are what was written and verified there. `state`: 'ok', or 'bad' (failed a
        -- read or a check: not served, to be re-made). A file is short of copies when it has
        -- fewer 'ok' rows on active drives than its folder's `copies`, that shortfall is not
        -- stored, it is always computed from these rows.
        CREATE TABLE replicas (
            node_id  INTEGER NOT NULL REFERENCES nodes(id),
            drive_id INTEGER NOT NULL REFERENCES drives(id),
            size     INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            hash     TEXT,
            state    TEXT NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'bad')),
            PRIMARY KEY (node_id, drive_id)
        );
        CREATE INDEX replicas_by_drive ON replicas(drive_id);

        -- Drive steps owed to a drive that was missing when an operation ran: a delete, a
        -- rename, an old copy to remove. Applied in id order when the drive is back and the pool
        -- is opened for writing, before anything else touches that drive. `payload` is JSON:
        -- {"op": "unlink", "path", "size", "mtime_ns"} (done only if the file there is still
        -- that old copy) or {"op": "rename", "src", "dst"}.
        CREATE TABLE owed (
            id       INTEGER PRIMARY KEY,
            drive_id INTEGER NOT NULL REFERENCES drives(id),
            payload  TEXT NOT NULL
        );

        -- Operations that change drives and catalog together, written before the drives are
        -- touched and deleted in the same transaction that records the result. A row left
        -- here means a crash happened in between, `check --repair` finishes it (every op's
        -- drive steps are idempotent). `payload` is JSON, its shape depends on `op`.
        CREATE TABLE journal (
            id      INTEGER PRIMARY KEY,
            op      TEXT NOT NULL,
            payload TEXT NOT NULL,
            created REAL NOT NULL
        );
        """


def _owed_table(db: sqlite3.Connection) -> None:
    start = SCHEMA.index("CREATE TABLE owed")
    db.execute(SCHEMA[start: SCHEMA.index(";", start)])


def _rebuild_nodes(db: sqlite3.Connection, columns: str) -> None:
    """Rebuild `nodes` as SCHEMA has it, keeping `columns` (a CHECK cannot be altered in place)."""
    start = SCHEMA.index("CREATE TABLE nodes")
    db.execute(SCHEMA[start: SCHEMA.index(";", start)].replace("CREATE TABLE nodes", "CREATE TABLE nodes_new"))
    db.execute(f"INSERT INTO nodes_new ({columns}) SELECT {columns} FROM nodes")
    db.execute("DROP TABLE nodes")
    db.execute("ALTER TABLE nodes_new RENAME TO nodes")


def _nodes_v3(db: sqlite3.Connection) -> None:
    """Revision 3 columns: owners, ctime, symlinks and special files."""
    _rebuild_nodes(db, "id, parent_id, name, kind, size, mode, mtime_ns, hash")
    db.execute("UPDATE nodes SET ctime_ns = mtime_ns")


def _atime_column(db: sqlite3.Connection) -> None:
    """Revision 4 keeps access times (until then they were shown as the modification time)."""
    if "atime_ns" not in {row[1] for row in db.execute("PRAGMA table_info(nodes)")}:  # step 2 made it
        db.execute("ALTER TABLE nodes ADD COLUMN atime_ns INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE nodes SET atime_ns = mtime_ns")


def _hard_links(db: sqlite3.Connection) -> None:
    """Revision 5: 'link' nodes, extra names of a node (hard links)."""
    _rebuild_nodes(db, "id, parent_id, name, kind, size, mode, mtime_ns, hash, uid, gid, ctime_ns, target, rdev,"
                       " atime_ns")
    start = SCHEMA.index("CREATE INDEX nodes_by_link")
    db.execute(SCHEMA[start: SCHEMA.index(";", start)])
    db.execute(f"UPDATE nodes SET links = {_SUBDIRS} WHERE kind = 'dir'")


def _index_by_parent(db: sqlite3.Connection) -> None:
    """Revision 6: `nodes_by_parent` on `parent_id` (revision 7 replaces it)."""
    db.execute("CREATE INDEX IF NOT EXISTS nodes_by_parent ON nodes(parent_id)")


def _places(db: sqlite3.Connection) -> None:
    """Revision 7: `place`, and `nodes_by_parent` by place."""
    if "place" not in {row[1] for row in db.execute("PRAGMA table_info(nodes)")}:  # an earlier step made it
        db.execute("ALTER TABLE nodes ADD COLUMN place INTEGER")
    db.execute("DROP INDEX IF EXISTS nodes_by_parent")
    start = SCHEMA.index("CREATE INDEX nodes_by_parent")
    db.execute(SCHEMA[start: SCHEMA.index(";", start)])


def _place_index(db: sqlite3.Connection) -> None:
    """Revision 8: `nodes_by_place`, so that a new id is found above every place at once.
    Before it, a node made outside the mount could get an id that was a place already: such
    a place goes (the entry is listed at its own id), so that no two entries share one."""
    start = SCHEMA.index("CREATE INDEX nodes_by_place")
    db.execute(SCHEMA[start: SCHEMA.index(";", start)])
    db.execute("UPDATE nodes SET place = NULL WHERE place IN (SELECT id FROM nodes)"
               " OR place IN (SELECT place FROM nodes WHERE place IS NOT NULL GROUP BY place HAVING count(*) > 1)")


# A directory's subdirectories, for its link count (`nodes.links`).
_SUBDIRS = "(SELECT COUNT(*) FROM nodes c WHERE c.parent_id = nodes.id AND c.kind = 'dir')"


# Upgrade steps: _UPGRADES[n] takes a catalog from revision n to n + 1 (inside a transaction).
_UPGRADES: dict[int, Any] = {1: _owed_table, 2: _nodes_v3, 3: _atime_column, 4: _hard_links, 5: _index_by_parent,
                               6: _places, 7: _place_index}


def _bytes_by_drive(db: sqlite3.Connection) -> dict[int, int]:
    return {d: int(s) for d, s in db.execute("SELECT drive_id, SUM(size) FROM replicas GROUP BY drive_id")}


def _count_files(db: sqlite3.Connection) -> tuple[int, int]:
    """(number of files, bytes in them)."""
    row = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM nodes WHERE kind = 'file'").fetchone()
    return int(row[0]), int(row[1])


class Catalog:
    """One SQLite connection with typed accessors."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        if readonly:  # a second look at what another connection committed (`pool.Glance`)
            self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                      timeout=30, check_same_thread=False)
        else:
            self.db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # FULL: once a commit returns it survives power loss; the drives were fsynced first.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        self._done_later: list[int] = []  # journal rows the next commit removes
        self._grouped = False  # a grouped transaction is open (see `transaction`)
        self._group_no: int | None = None  # the open group's number, once asked for (`group_number`)
        self._last_group_no = 0  # the last number handed out: never handed out again
        self._group_done: list[int] = []  # journal rows whose removal the open group holds
        # Set by the pool that groups (`Pool.group_steps`): what settles the group before
        # another transaction, and what is told when a group was committed (True) or undone.
        self.settle_group: Callable[[], None] = self.commit_group
        self.group_ended: Callable[[bool], None] = lambda committed: None
        self.steps_waiting: Callable[[], bool] = lambda: False  # steps of a committed group not yet done
        self._totals_db: sqlite3.Connection | None = None  # see `totals`
        self._totals_lock = threading.Lock()
        # Pool paths and nodes by id, kept by the mount (the only writer while it runs): every
        # FUSE operation needs a few, and a walk up the tree costs a query per level. Every
        # method that changes `nodes` forgets what it changed (`_forget`), or keeps what it set.
        self.track_paths = False
        self._paths: dict[int, str] = {}
        self._nodes: dict[int, Node] = {}
        # (parent id, name) -> the id of the node found there: a hint, taken only while the
        # node kept in `_nodes` still has that parent and name (no change need forget it).
        self._named: dict[tuple[int, str], int] = {}
        self._folders: dict[str, tuple[int, int] | None] = {}  # `folder_by_fold`'s answers (the mount's)
        self._replicas: dict[int, list[Replica]] = {}  # node id -> its copies' rows, by drive (the mount's)
        # Whole listings (`listing`'s rows) of directories the mount made or read to the end,
        # and their names (a name not there is not looked for): a new, moved or deleted entry
        # changes them in place, any other change to a directory's entries (an extra name, an
        # heir) drops them. `_listed` counts the entries kept, up to CACHED_NODES.
        self._listings: dict[int, list[Listed]] = {}
        self._listed_names: dict[int, set[str]] = {}
        self._listed = 0
        self._next_id: int | None = None  # the mount's next new id (`keep_in_memory`); else asked each time

    @classmethod
    def create(cls, path: Path, pool_id: str, now_ns: int) -> Catalog:
        cat = cls(path)
        with cat.transaction():
            create_tables(cat.db)
            cat.set_meta("schema_rev", str(CURRENT_REV))
            cat.set_meta("pool_id", pool_id)
            cat.db.execute(
                "INSERT INTO nodes (id, parent_id, name, kind, mode, mtime_ns) VALUES (?, NULL, '', 'dir', ?, ?)",
                (ROOT_ID, 0o40755, now_ns),
            )
        return cat

    def close(self) -> None:
        with self._totals_lock:
            if self._totals_db is not None:
                self._totals_db.close()
        self.db.close()

    def sync_log(self) -> None:
        """Flush what was committed to the disk: with synchronous=NORMAL (the mount) a commit
        only reaches the write-ahead log's pages in memory, which a killed process keeps and a
        power cut may not. Any thread, no lock: it only asks the kernel to write the log out."""
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- plumbing ----------------------------------------------------------------------------

    def transaction(self, grouped: bool = False) -> _Transaction:
        """Group statements atomically. Nested uses join the outer transaction.

        A `grouped` transaction is not committed on its own: it joins the group of those
        before it, which `commit_group` commits as one (the mount's renames, deletes and
        closes, see `Pool.group_steps`). Any other transaction first has the group settled
        (`settle_group`: committed, and what waited for the commit done)."""
        return _Transaction(self, grouped)

    def _begin(self, grouped: bool) -> tuple[str, list[int]]:
        """`transaction`'s start: how it began ('nested', 'savepoint' or 'begin'), and the
        journal rows it removes."""
        if self._depth:
            self._depth += 1
            return "nested", []
        if not grouped and (self._grouped or self.steps_waiting()):
            self.settle_group()
        if self._grouped and not self.db.in_transaction:  # SQLite undid it (an I/O error, say)
            self._group_undone()
        if self._grouped:  # one more change in the open group: undone alone if it fails
            self.db.execute("SAVEPOINT grouped")
            self._depth = 1
            return "savepoint", []
        self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        done, self._done_later = self._done_later, []
        if done:
            try:
                self.db.executemany("DELETE FROM journal WHERE id = ?", [(i,) for i in done])
            except BaseException as e:
                self._end("begin", done, grouped, e)
                raise
        return "begin", done

    def _end(self, how: str, done: list[int], grouped: bool, failed: BaseException | None) -> None:
        """`transaction`'s end (`failed`: what the statements in it raised): released or
        committed, or undone; a failure to release or commit undoes it and raises."""
        if how == "nested":
            self._depth -= 1
            return
        try:
            if failed is None:
                try:
                    if how == "savepoint":
                        self.db.execute("RELEASE grouped")
                    elif grouped:
                        self._grouped, self._group_done = True, done
                    else:
                        self.db.execute("COMMIT")
                    return
                except BaseException:
                    self._undo(how, done)
                    raise
            self._undo(how, done)
        finally:
            self._depth = 0

    def _undo(self, how: str, done: list[int]) -> None:
        if how == "savepoint":
            if self.db.in_transaction:
                self.db.execute("ROLLBACK TO grouped")
                self.db.execute("RELEASE grouped")
                self._forget_all()
            else:  # SQLite undid the whole group (a full disk, say)
                self._depth = 0  # (ended: what `group_ended` records again is a transaction of its own)
                self._group_undone()
            return
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        self._forget_all()
        self._done_later[:0] = done

    @property
    def group_open(self) -> bool:
        """Whether grouped transactions wait for `commit_group`."""
        return self._grouped

    def commit_group(self) -> None:
        """Commit the grouped transactions. If that fails they are all undone (and it raises)."""
        if not self._grouped:
            return
        try:
            if not self.db.in_transaction:  # SQLite undid it (an I/O error, say)
                raise sqlite3.OperationalError("the catalog's open transaction was rolled back")
            if self._group_no is not None:  # (see `group_number`)
                self.set_meta("group", str(self._group_no))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            self._group_undone()
            raise
        self._grouped, self._group_done, self._group_no = False, [], None
        self.group_ended(True)

    def group_number(self) -> int:
        """In the open group: its number, recorded with it (meta 'group'), greater than that of
        every group committed before it. Something noted outside the catalog with it can tell
        later whether its group was committed (see pool/newfiles.py)."""
        assert self._depth, "in a grouped transaction"
        if self._group_no is None:
            self._group_no = self._last_group_no = max(self.committed_group(), self._last_group_no) + 1
        return self._group_no  # (recorded by `commit_group`, in the commit: once, not at every create)

    def record_group(self, number: int) -> None:
        """In a transaction: what has this number (`group_number`) is committed with it."""
        self.set_meta("group", str(max(number, self.committed_group())))

    def committed_group(self) -> int:
        """The last group number recorded (`group_number`): outside a transaction, that of the
        last group committed."""
        return int(self.meta("group") or 0)

    def _group_undone(self) -> None:
        """The group was rolled back: its journal rows' removals are owed again."""
        self._grouped, self._group_no = False, None
        self._done_later[:0], self._group_done = self._group_done, []
        self._forget_all()
        self.group_ended(False)

    def _forget_all(self) -> None:
        """What the caches hold may have been undone."""
        self._paths.clear()
        self._nodes.clear()
        self._named.clear()
        self._folders.clear()
        self._replicas.clear()
        self._clear_listings()

    def get_val(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        row = self.db.execute(sql, args).fetchone()
        if row is None:
            raise NoSuchRowError(sql)
        return row[0]

    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def schema_rev(self) -> int:
        return int(self.meta("schema_rev", "0") or 0)

    def upgrade(self) -> None:
        """Bring an older catalog up to CURRENT_REV (the caller checked it is not newer)."""
        # Off while tables are rebuilt (SQLite's documented way: `replicas` and `folders` point
        # at `nodes` by name), and checked before the upgrade commits.
        self.db.execute("PRAGMA foreign_keys=OFF")
        try:
            with self.transaction():
                rev = self.schema_rev()
                while rev < CURRENT_REV:
                    _UPGRADES[rev](self.db)
                    rev += 1
                self.set_meta("schema_rev", str(rev))
                if self.db.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise sqlite3.IntegrityError("the upgraded catalog has dangling references")
        finally:
            self.db.execute("PRAGMA foreign_keys=ON")

    def backup_to(self, dest: Path) -> None:
        """Write a consistent copy of the catalog to `dest` (the caller makes it atomic), noting
        when it was made (`recover` takes the newest)."""
        out = sqlite3.connect(dest)
        try:
            self.db.backup(out)
            with out:
                out.execute("INSERT OR REPLACE INTO meta VALUES ('saved_at', ?)", (repr(time.time()),))
        finally:
            out.close()

    # -- drives ------------------------------------------------------------------------------

    def drives(self) -> list[DriveRow]:
        rows = self.db.execute(
            "SELECT id, uuid, path, label, added_at, max_size, shared_device, state FROM drives ORDER BY id"
        ).fetchall()
        return [DriveRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7]) for r in rows]

    def add_drive(self, uuid: str, path: str, label: str, added_at: str, max_size: int | None,
                  shared_device: bool) -> int:
        cur = self.db.execute(
            "INSERT INTO drives (uuid, path, label, added_at, max_size, shared_device) VALUES (?, ?, ?, ?, ?, ?)",
            (uuid, path, label, added_at, max_size, int(shared_device)),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def set_drive_state(self, drive_id: int, state: str) -> None:
        self.db.execute("UPDATE drives SET state = ? WHERE id = ?", (state, drive_id))

    def set_drive_path(self, drive_id: int, path: str) -> None:
        self.db.execute("UPDATE drives SET path = ? WHERE id = ?", (path, drive_id))

    def bytes_on_drive(self, drive_id: int) -> int:
        return int(self.get_val("SELECT COALESCE(SUM(size), 0) FROM replicas WHERE drive_id = ?", (drive_id,)))

    def bytes_by_drive(self) -> dict[int, int]:
        return _bytes_by_drive(self.db)

    def totals(self) -> tuple[dict[int, int], int]:
        """(bytes_by_drive, number of files) as of the last commit, read on a connection of its
        own: on a big pool these sums take a while, and this way they hold up no one (the
        mount's `statfs` runs them without its lock)."""
        with self._totals_lock:
            if self._totals_db is None:
                self._totals_db = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                                  check_same_thread=False)
            return _bytes_by_drive(self._totals_db), _count_files(self._totals_db)[0]

    # -- nodes -------------------------------------------------------------------------------

    _NODE_COLS = ("id, parent_id, name, kind, size, mode, mtime_ns, hash, uid, gid, ctime_ns, target, rdev, atime_ns,"
                  " link_to, links")
    # (Made once: the mount asks these at every request, and a new string is hashed each time.)
    _NODE_BY_ID = f"SELECT {_NODE_COLS} FROM nodes WHERE id = ?"
    _NODE_BY_NAME = f"SELECT {_NODE_COLS} FROM nodes WHERE parent_id = ? AND name = ?"
    _SET_COLS: dict[tuple[str, ...], str] = {}  # `set_attrs`'s statements, by the columns set

    def node(self, id_: int) -> Node:
        node = self.node_or_none(id_)
        if node is None:
            raise NoSuchRowError(f"node {id_}")
        return node

    def node_or_none(self, id_: int) -> Node | None:
        if (known := self._nodes.get(id_)) is not None:
            return known
        row = self.db.execute(self._NODE_BY_ID, (id_,)).fetchone()
        if row is None:
            return None
        node = Node.of_row(row)
        if self.track_paths:
            if len(self._nodes) >= CACHED_NODES:
                self._nodes.clear()  # a walk of a big tree: start again rather than grow without end
            self._nodes[id_] = node
        return node

    def _forget(self, *ids: int) -> None:
        """Nodes changed: read them again next time."""
        for i in ids:
            self._nodes.pop(i, None)

    def path_of(self, id_: int) -> str:
        """The pool path of node `id_` ('' for the root)."""
        below: list[tuple[int, str]] = []  # (id, name) up to a known path: no recursion (any depth)
        at, path = id_, ""
        while at != ROOT_ID:
            if (known := self._paths.get(at)) is not None:
                path = known
                break
            row = self.db.execute("SELECT parent_id, name FROM nodes WHERE id = ?", (at,)).fetchone()
            if row is None:
                raise NoSuchRowError(f"node {at}")
            below.append((at, row[1]))
            at = row[0]
        for node_id, name in reversed(below):
            path = f"{path}/{name}" if path else name
            if self.track_paths:
                if len(self._paths) >= CACHED_NODES:
                    self._paths.clear()
                self._paths[node_id] = path
        return path

    def child(self, parent_id: int, name: str) -> Node | None:
        key = (parent_id, name)
        if (seen := self._named.get(key)) is not None and (node := self._nodes.get(seen)) is not None \
                and node.name == name and node.parent_id == parent_id:
            return node  # (the kernel looks a name up, then the request on it looks again)
        if (listed := self._listed_names.get(parent_id)) is not None and name not in listed:
            return None  # (the kernel looks a new name up before it is made)
        row = self.db.execute(self._NODE_BY_NAME, key).fetchone()
        if row is None:
            return None
        node = Node.of_row(row)
        if self.track_paths and len(self._nodes) < CACHED_NODES:
            self._nodes[node.id] = node  # what is done with it next reads it by id
            self._keep_named(key, node.id)
            self._keep_path(node.id, parent_id, name)  # and its path
        return node

    def _keep_named(self, key: tuple[int, str], node_id: int) -> None:
        if len(self._named) >= CACHED_NODES:
            self._named.clear()
        self._named[key] = node_id

    def _keep_path(self, node_id: int, parent_id: int, name: str) -> None:
        """The path of `name` in `parent_id`, if the parent's is known (no query)."""
        if (above := self._paths.get(parent_id, "" if parent_id == ROOT_ID else None)) is not None:
            self._paths[node_id] = f"{above}/{name}" if above else name

    def children(self, parent_id: int) -> list[Node]:
        rows = self.db.execute(
            f"SELECT {self._NODE_COLS} FROM nodes WHERE parent_id = ? ORDER BY name", (parent_id,)
        )
        return [Node.of_row(r) for r in rows]

    def entries(self, parent_id: int, after: int, upto: int) -> dict[int, Entry]:
        """Children as listing entries (an extra name shows the node it names), by their place
        in `listing`: those after place `after`, up to `upto`."""
        rows = self.db.execute(
            "SELECT coalesce(place, id), id, name, kind, size, mode, mtime_ns, uid, gid, ctime_ns, rdev, atime_ns,"
            " links, link_to FROM nodes WHERE parent_id = ? AND coalesce(place, id) > ? AND coalesce(place, id) <= ?",
            (parent_id, after, upto))
        out = {row[0]: Entry._make(row[1:]) for row in rows}
        for place, e in out.items():
            if e.link_to is not None:
                n = self.node(e.link_to)
                out[place] = Entry(n.id, e.name, n.kind, n.size, n.mode, n.mtime_ns, n.uid, n.gid, n.ctime_ns, n.rdev,
                                   n.atime_ns, n.links, None)
        return out

    def listing(self, parent_id: int, after: int = 0, most: int = -1) -> list[Listed]:
        """A page of a directory's listing: (place, id, name, kind, type) of at most `most`
        children, in the order they were made, from the one after place `after` (0: the
        first); `type` is the file type bits of the mode (0 for a file or directory made
        without them). A name's place is its row's id, and stays with the name for as long
        as it names the same thing (an own name that takes an extra name's place takes its
        place too: `remove_name`), so a listing read page by page while entries come and go
        shows each of the others once. An extra name shows the node it names (`entries` has
        the rest of the attributes). The mount keeps whole listings (see `_listings`)."""
        if (kept := self._listings.get(parent_id)) is not None:
            start = bisect_right(kept, after, key=_place) if after else 0
            return kept[start:] if most < 0 else kept[start:start + most]
        rows = self.db.execute("SELECT coalesce(place, id), id, name, kind, mode, link_to FROM nodes"
                               " WHERE parent_id = ? AND coalesce(place, id) > ? ORDER BY coalesce(place, id) LIMIT ?",
                               (parent_id, after, most)).fetchall()
        out: list[Listed] = []
        linked = False
        for place, id_, name, kind, mode, link_to in rows:
            if link_to is not None:
                n = self.node(link_to)
                id_, kind, mode, linked = n.id, n.kind, n.mode, True
            out.append((place, id_, name, kind, stat.S_IFMT(mode)))
        if self.track_paths and not after and (most < 0 or len(out) < most) and not linked:
            self._keep_listing(parent_id, out)  # the whole directory (one with extra names changes with them)
        return out

    def _keep_listing(self, dir_id: int, listed: list[Listed]) -> None:
        self._unkeep(dir_id)
        if self._listed + len(listed) > CACHED_NODES:
            self._clear_listings()  # (a walk of a big tree: start again rather than grow without end)
        self._listings[dir_id] = list(listed)
        self._listed_names[dir_id] = {e[2] for e in listed}
        self._listed += len(listed)

    def _unkeep(self, dir_id: int) -> None:
        if (dropped := self._listings.pop(dir_id, None)) is not None:
            del self._listed_names[dir_id]
            self._listed -= len(dropped)

    def _clear_listings(self) -> None:
        self._listings.clear()
        self._listed_names.clear()
        self._listed = 0

    def _list(self, dir_id: int, entry: Listed) -> None:
        """A kept listing gains an entry (in its place: a moved one keeps the place it had)."""
        if (kept := self._listings.get(dir_id)) is None:
            return
        if entry[3] == "link" or self._listed >= CACHED_NODES:
            self._unkeep(dir_id)  # (an extra name is listed as the node it names)
            return
        if not kept or kept[-1][0] < entry[0]:
            kept.append(entry)  # (most often: a new entry comes last)
        else:
            insort(kept, entry, key=_place)
        self._listed_names[dir_id].add(entry[2])
        self._listed += 1

    def _unlist(self, dir_id: int, place: int, id_: int) -> None:
        """A kept listing loses the entry of node `id_` at `place`."""
        if (kept := self._listings.get(dir_id)) is None:
            return
        i = bisect_left(kept, place, key=_place)
        if i == len(kept) or kept[i][1] != id_:
            self._unkeep(dir_id)  # (not as kept: read again)
            return
        self._listed_names[dir_id].discard(kept.pop(i)[2])
        self._listed -= 1

    def _drop_listings(self, *dir_ids: int | None) -> None:
        """Directories' entries changed otherwise than by a new one: list them again."""
        for i in dir_ids:
            if i is not None:  # (the root's parent)
                self._unkeep(i)

    def resolve(self, node: Node) -> Node:
        """The node a name stands for: an extra name's node, or the node itself."""
        return self.node(node.link_to) if node.link_to is not None else node

    def names_of(self, id_: int) -> list[int]:
        """The ids of node `id_`'s extra names (its 'link' nodes), oldest first."""
        return [r[0] for r in self.db.execute("SELECT id FROM nodes WHERE link_to = ? ORDER BY id", (id_,))]

    def add_link(self, id_: int, parent_id: int, name: str, time_ns: int) -> int:
        """Give node `id_` the extra name `name` in `parent_id`."""
        link_id = self.add_node(parent_id, name, "link", 0, time_ns)
        self.db.execute("UPDATE nodes SET link_to = ? WHERE id = ?", (id_, link_id))
        self.db.execute("UPDATE nodes SET links = links + 1, ctime_ns = MAX(ctime_ns, ?) WHERE id = ?", (time_ns, id_))
        self._forget(link_id, id_)
        return link_id

    def remove_name(self, node: Node) -> bool:
        """Take one name away: an extra name; or a node's own name, when it has extra names
        (the oldest takes its place); or the node. Returns whether the node went with it."""
        self._forget(node.id, *(() if node.link_to is None else (node.link_to,)))
        if node.link_to is not None or node.links and node.kind != "dir":
            self._drop_listings(node.parent_id)  # (the node's other names, or an heir, change listings)
        if node.link_to is not None:
            self.db.execute("DELETE FROM nodes WHERE id = ?", (node.id,))
            self._paths.pop(node.id, None)
            self.db.execute("UPDATE nodes SET links = links - 1, ctime_ns = MAX(ctime_ns, ?) WHERE id = ?",
                            (time.time_ns(), node.link_to))
            return False
        if node.links and node.kind != "dir":
            heir = self.node(self.names_of(node.id)[0])
            place = self.get_val("SELECT coalesce(place, id) FROM nodes WHERE id = ?", (heir.id,))
            self.db.execute("DELETE FROM nodes WHERE id = ?", (heir.id,))
            self._drop_listings(heir.parent_id)
            self._paths.pop(heir.id, None)
            self._forget(heir.id)
            self.db.execute("UPDATE nodes SET parent_id = ?, name = ?, place = ?, links = links - 1,"
                            " ctime_ns = MAX(ctime_ns, ?) WHERE id = ?",
                            (heir.parent_id, heir.name, place, time.time_ns(), node.id))
            self._paths.pop(node.id, None)
            return False
        self.delete_node(node.id, node)
        return True

    def has_links_below(self, id_: int) -> bool:
        """Whether anything at or below node `id_` has more than one name."""
        return self.db.execute(
            """WITH RECURSIVE sub(id) AS (SELECT ? UNION ALL
                   SELECT n.id FROM nodes n JOIN sub ON n.parent_id = sub.id)
               SELECT 1 FROM nodes WHERE id IN sub AND (link_to IS NOT NULL OR kind != 'dir' AND links > 0)
               LIMIT 1""",
            (id_,)).fetchone() is not None

    def links(self) -> list[tuple[int, int]]:
        """(extra name's id, the node it names) of every extra name in the pool."""
        return [(int(a), int(b)) for a, b in self.db.execute("SELECT id, link_to FROM nodes WHERE link_to IS NOT NULL")]

    def has_children(self, id_: int) -> bool:
        return self.db.execute("SELECT 1 FROM nodes WHERE parent_id = ? LIMIT 1", (id_,)).fetchone() is not None

    def _new_id(self) -> int:
        """An id for a new node: above every id and every place (a place is an id that a name
        kept after its node went: `remove_name`), so no two entries of a listing share a place."""
        if self._next_id is not None:
            # The mount's (`keep_in_memory`): its inode numbers are node ids, so never the id of
            # a node deleted while the kernel may still know it (SQLite reuses the highest id).
            self._next_id += 1
            return self._next_id - 1
        return self._highest_id_or_place() + 1

    def _highest_id_or_place(self) -> int:
        return int(self.get_val("SELECT max(coalesce((SELECT max(id) FROM nodes), 0),"
                                " coalesce((SELECT max(place) FROM nodes WHERE place IS NOT NULL), 0))"))

    def keep_in_memory(self) -> None:
        """Serve a mount: keep what is read and written in memory (`track_paths`), and hand
        out new ids from the highest now on, never one twice (a node deleted while open is
        still the kernel's inode, however high its id was)."""
        self.track_paths = True
        self._next_id = self._highest_id_or_place() + 1

    def add_node(self, parent_id: int, name: str, kind: str, mode: int, mtime_ns: int,
                 size: int = 0, hash_: str | None = None, uid: int = 0, gid: int = 0,
                 target: str | None = None, rdev: int = 0, node_id: int | None = None) -> int:
        """A new node; its id, or `node_id` (one a failed commit undid, made again as it was)."""
        new_id = self._new_id() if node_id is None else node_id
        cur = self.db.execute(
            "INSERT INTO nodes (id, parent_id, name, kind, size, mode, mtime_ns, hash, uid, gid, ctime_ns, target,"
            " rdev, atime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (new_id, parent_id, name, kind, size, mode, mtime_ns, hash_, uid, gid, mtime_ns, target, rdev, mtime_ns),
        )
        assert cur.lastrowid is not None
        if kind == "dir":
            self.db.execute("UPDATE nodes SET links = links + 1 WHERE id = ?", (parent_id,))
            self._forget(parent_id)
        self._list(parent_id, (cur.lastrowid, cur.lastrowid, name, kind, stat.S_IFMT(mode)))
        if kind == "dir" and node_id is None and self.track_paths:
            self._keep_listing(cur.lastrowid, [])  # a new directory is empty
        if self.track_paths and len(self._nodes) < CACHED_NODES:  # as inserted: asked for next
            self._nodes[cur.lastrowid] = Node.of_row((cur.lastrowid, parent_id, name, kind, size, mode, mtime_ns,
                                                      hash_, uid, gid, mtime_ns, target, rdev, mtime_ns, None, 0))
            if kind == "file":
                self._keep_replicas(cur.lastrowid, [])  # (none can point at a node not there before)
            self._keep_named((parent_id, name), cur.lastrowid)
            self._keep_path(cur.lastrowid, parent_id, name)
        else:
            self._forget(cur.lastrowid)
        return cur.lastrowid

    def upsert_file(self, parent_id: int, name: str, size: int, mode: int, mtime_ns: int, hash_: str | None,
                    uid: int | None = None, gid: int | None = None) -> int | None:
        """Create or update the file `name` in `parent_id`; its id, or None if a dir has that name.
        `uid`, `gid`: the owner of its new copies (None: a file's own, or root's for a new one)."""
        row = self.db.execute(
            "INSERT INTO nodes (id, parent_id, name, kind, size, mode, mtime_ns, hash, ctime_ns, atime_ns, uid, gid)"
            " VALUES (?, ?, ?, 'file', ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (parent_id, name) DO UPDATE SET size = excluded.size, mode = excluded.mode,"
            " mtime_ns = excluded.mtime_ns, hash = excluded.hash, ctime_ns = excluded.mtime_ns,"
            " uid = COALESCE(?, uid), gid = COALESCE(?, gid)"
            " WHERE kind = 'file' RETURNING id",
            (self._new_id(), parent_id, name, size, mode, mtime_ns, hash_, mtime_ns, mtime_ns,
             uid or 0, gid or 0, uid, gid),
        ).fetchone()
        if row is None:
            return None
        self._forget(row[0])
        self._drop_listings(parent_id)
        return int(row[0])

    def update_file(self, id_: int, size: int, mode: int, mtime_ns: int, hash_: str | None) -> None:
        self.db.execute(
            "UPDATE nodes SET size = ?, mode = ?, mtime_ns = ?, hash = ?, ctime_ns = MAX(ctime_ns, ?) WHERE id = ?",
            (size, mode, mtime_ns, hash_, mtime_ns, id_),
        )
        self._forget(id_)
        self._clear_listings()  # (its type bits may be new: rare, a repair by `check`)

    def set_attrs(self, id_: int, **cols: Any) -> None:
        """Set some of a node's columns (the mount's setattr, and its bookkeeping after writes)."""
        assert cols and set(cols) <= {"size", "mode", "mtime_ns", "hash", "uid", "gid", "ctime_ns", "atime_ns"}, cols
        key = tuple(cols)
        if (sql := self._SET_COLS.get(key)) is None:
            sql = self._SET_COLS[key] = f"UPDATE nodes SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?"
        self.db.execute(sql, (*cols.values(), id_))
        if (known := self._nodes.get(id_)) is not None:
            self._nodes[id_] = known.but(**cols)  # (exactly what was set: no read back)

    def touch_dir(self, id_: int, time_ns: int) -> None:
        """A directory's entries changed at `time_ns` (its ctime never goes back)."""
        self.db.execute("UPDATE nodes SET mtime_ns = ?, ctime_ns = MAX(ctime_ns, ?) WHERE id = ?",
                        (time_ns, time_ns, id_))
        self._forget(id_)

    def update_dir(self, id_: int, mode: int, mtime_ns: int) -> None:
        self.db.execute("UPDATE nodes SET mode = ?, mtime_ns = ? WHERE id = ? AND kind = 'dir'", (mode, mtime_ns, id_))
        self._forget(id_)

    def move_node(self, id_: int, parent_id: int, name: str, is_dir: bool) -> None:
        """Give node `id_` a new parent and name."""
        known = self._nodes.get(id_)
        was_in = None  # its directory before, if any listing is kept
        if self._listings:
            was_in = known.parent_id if known is not None else self.get_val(
                "SELECT parent_id FROM nodes WHERE id = ?", (id_,))
        if is_dir:  # a subdirectory less in one directory, one more in the other
            self.db.execute("UPDATE nodes SET links = links - 1 WHERE id = (SELECT parent_id FROM nodes WHERE id = ?)",
                            (id_,))
            self.db.execute("UPDATE nodes SET links = links + 1 WHERE id = ?", (parent_id,))
        moved = self.db.execute(
            "UPDATE nodes SET parent_id = ?, name = ? WHERE id = ? RETURNING coalesce(place, id), kind, mode",
            (parent_id, name, id_)).fetchone()
        if moved is None:
            return  # (no such node: nothing moved, as before the listings were kept)
        place, kind, mode = moved
        if was_in is not None:  # (it keeps its place: after the new parent's newest, or before)
            self._unlist(was_in, place, id_)
            self._list(parent_id, (place, id_, name, kind, stat.S_IFMT(mode)))
        if is_dir:
            self._paths.clear()  # everything below it moved too
            self._nodes.clear()  # and both parents' link counts changed
        else:
            self._paths.pop(id_, None)
            if known is None:
                return
            self._nodes[id_] = known.but(parent_id=parent_id, name=name)  # (what the update changed)
            self._keep_named((parent_id, name), id_)  # (the kernel looks the new name up next)
            self._keep_path(id_, parent_id, name)

    def delete_node(self, id_: int, node: Node | None = None) -> None:
        """Delete node `id_` with its copies' records and its other names. `node`, if the
        caller has it, spares the statements that cannot apply (each costs a delete time)."""
        self._paths.pop(id_, None)
        self._forget(id_)
        self._replicas.pop(id_, None)
        if node is None or node.is_file:
            self.db.execute("DELETE FROM replicas WHERE node_id = ?", (id_,))
        if node is None or node.is_dir and node.parent_id == ROOT_ID:
            self.db.execute("DELETE FROM folders WHERE node_id = ?", (id_,))
            self._folders.clear()
        if node is None or not node.is_dir and node.links:
            names = self.db.execute("DELETE FROM nodes WHERE link_to = ? RETURNING id", (id_,)).fetchall()
            self._forget(*(i for (i,) in names))
            if names:
                self._clear_listings()  # (the names' directories: any)
        gone = self.db.execute("DELETE FROM nodes WHERE id = ? RETURNING parent_id, kind, coalesce(place, id)",
                               (id_,)).fetchone()
        if gone is not None:
            self._unlist(gone[0], gone[2], id_)
            self._unkeep(id_)
        if gone is not None and gone[1] == "dir":
            self.db.execute("UPDATE nodes SET links = links - 1 WHERE id = ?", (gone[0],))
            self._forget(gone[0])

    def wrong_link_counts(self) -> list[tuple[int, int, int]]:
        """(node id, links recorded, links there are) of every node whose count is off."""
        rows = self.db.execute(
            f"""SELECT id, links, CASE kind WHEN 'dir' THEN {_SUBDIRS}
                       ELSE (SELECT COUNT(*) FROM nodes l WHERE l.link_to = nodes.id) END AS real
                FROM nodes WHERE kind != 'link' AND links != real""")
        return [(int(a), int(b), int(c)) for a, b, c in rows]

    def set_links(self, id_: int, links: int) -> None:
        self.db.execute("UPDATE nodes SET links = ? WHERE id = ?", (links, id_))
        self._forget(id_)

    def subtree_files(self, id_: int) -> list[Node]:
        """Every file at or below node `id_`."""
        rows = self.db.execute(
            f"""WITH RECURSIVE sub(id) AS (SELECT ? UNION ALL
                     SELECT n.id FROM nodes n JOIN sub ON n.parent_id = sub.id)
                SELECT {self._NODE_COLS} FROM nodes WHERE id IN sub AND kind = 'file'""",
            (id_,),
        )
        return [Node.of_row(r) for r in rows]

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every node but the root, with its pool path, parents before children."""
        stack: list[tuple[str, int]] = [("", ROOT_ID)]
        while stack:
            prefix, id_ = stack.pop()
            for n in self.children(id_):
                path = f"{prefix}{n.name}"
                yield path, n
                if n.is_dir:
                    stack.append((path + "/", n.id))

    def file_ids(self) -> list[int]:
        """The ids of every file (one query: the tree is not walked)."""
        return [r[0] for r in self.db.execute("SELECT id FROM nodes WHERE kind = 'file' ORDER BY id")]

    def dir_ids(self) -> list[int]:
        """The ids of every directory below the root (one query)."""
        return [r[0] for r in self.db.execute("SELECT id FROM nodes WHERE kind = 'dir' AND id != ? ORDER BY id",
                                              (ROOT_ID,))]

    def entry_ids(self) -> list[int]:
        """The ids of every symlink and special file (one query)."""
        return [r[0] for r in self.db.execute("SELECT id FROM nodes WHERE kind IN ('symlink', 'special') ORDER BY id")]

    def count_files(self) -> tuple[int, int]:
        return _count_files(self.db)

    # -- folders -----------------------------------------------------------------------------

    def folders(self) -> list[tuple[Node, int]]:
        rows = self.db.execute(
            f"SELECT {', '.join('n.' + c.strip() for c in self._NODE_COLS.split(','))}, f.copies "
            "FROM folders f JOIN nodes n ON n.id = f.node_id ORDER BY n.name"
        )
        return [(Node(*r[:-1]), int(r[-1])) for r in rows]

    def folder_by_fold(self, fold: str) -> tuple[int, int] | None:
        """(node id, copies) of the folder with this case-folded name (the mount asks at every create)."""
        if fold in self._folders:
            return self._folders[fold]
        row = self.db.execute("SELECT node_id, copies FROM folders WHERE fold = ?", (fold,)).fetchone()
        found = (int(row[0]), int(row[1])) if row else None
        if self.track_paths:
            if len(self._folders) >= CACHED_FOLDERS:
                self._folders.clear()  # (names looked up at the root that are no folder, say)
            self._folders[fold] = found
        return found

    def folder_copies(self, node_id: int) -> int:
        return int(self.get_val("SELECT copies FROM folders WHERE node_id = ?", (node_id,)))

    def add_folder(self, node_id: int, fold: str, copies: int) -> None:
        self.db.execute("INSERT INTO folders (node_id, fold, copies) VALUES (?, ?, ?)", (node_id, fold, copies))
        self._folders.clear()

    def set_folder_copies(self, node_id: int, copies: int) -> None:
        self.db.execute("UPDATE folders SET copies = ? WHERE node_id = ?", (copies, node_id))
        self._folders.clear()

    def rename_folder(self, node_id: int, fold: str) -> None:
        self.db.execute("UPDATE folders SET fold = ? WHERE node_id = ?", (fold, node_id))
        self._folders.clear()

    # -- replicas ----------------------------------------------------------------------------

    def replicas(self, node_id: int) -> list[Replica]:
        """A file's copies, by drive. The mount keeps them in memory (every open and close asks),
        and every method below that changes them keeps what it set (`_replica_set`)."""
        if (known := self._replicas.get(node_id)) is not None:
            return list(known)
        rows = self.db.execute(
            "SELECT node_id, drive_id, size, mtime_ns, hash, state FROM replicas WHERE node_id = ? ORDER BY drive_id",
            (node_id,),
        )
        found = [_made(Replica, _REPLICA_FIELDS, r) for r in rows]
        self._keep_replicas(node_id, found)
        return list(found)

    def _keep_replicas(self, node_id: int, replicas: list[Replica]) -> None:
        if self.track_paths:
            if len(self._replicas) >= CACHED_NODES:
                self._replicas.clear()
            self._replicas[node_id] = replicas

    def _replica_set(self, node_id: int, drive_id: int, row: Replica | None) -> None:
        """A copy's row changed (None: gone): what the mount keeps of the file's copies follows."""
        if (known := self._replicas.get(node_id)) is not None:
            rest = [r for r in known if r.drive_id != drive_id]
            if row is not None:
                rest.append(row)
                rest.sort(key=_by_drive)
            self._replicas[node_id] = rest

    def replicas_on(self, drive_id: int) -> Iterator[Replica]:
        rows = self.db.execute(
            "SELECT node_id, drive_id, size, mtime_ns, hash, state FROM replicas WHERE drive_id = ?", (drive_id,)
        )
        return (Replica(*r) for r in rows)

    def set_replica(self, node_id: int, drive_id: int, size: int, mtime_ns: int, hash_: str | None,
                    state: str = "ok") -> None:
        # An upsert changes the row in place; OR REPLACE would delete and insert it, rewriting
        # the indexes' pages too (each page written costs a commit more time).
        self.db.execute(
            "INSERT INTO replicas (node_id, drive_id, size, mtime_ns, hash, state) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (node_id, drive_id) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,"
            " hash = excluded.hash, state = excluded.state",
            (node_id, drive_id, size, mtime_ns, hash_, state),
        )
        if node_id in self._replicas:
            self._replica_set(node_id, drive_id, _made(Replica, _REPLICA_FIELDS, (node_id, drive_id, size, mtime_ns,
                                                                                   hash_, state)))

    def set_replica_state(self, node_id: int, drive_id: int, state: str) -> None:
        self.db.execute("UPDATE replicas SET state = ? WHERE node_id = ? AND drive_id = ?", (state, node_id, drive_id))
        was = next((r for r in self._replicas.get(node_id, ()) if r.drive_id == drive_id), None)
        if was is not None:
            self._replica_set(node_id, drive_id, dataclasses.replace(was, state=state))

    def drop_replica(self, node_id: int, drive_id: int) -> None:
        self.db.execute("DELETE FROM replicas WHERE node_id = ? AND drive_id = ?", (node_id, drive_id))
        self._replica_set(node_id, drive_id, None)

    def short_files(self, or_over: bool = False) -> list[tuple[int, int, int]]:
        """(node_id, good copies, wanted copies) of every file short of copies (`or_over`:
        or with more than its folder wants, as after a change of copies cut short)."""
        rows = self.db.execute(
            f"""
            WITH RECURSIVE top(id, folder) AS (
                SELECT node_id, node_id FROM folders
                UNION ALL SELECT n.id, top.folder FROM nodes n JOIN top ON n.parent_id = top.id
            )
            SELECT n.id,
                   (SELECT COUNT(*) FROM replicas r JOIN drives d ON d.id = r.drive_id
                     WHERE r.node_id = n.id AND r.state = 'ok' AND d.state = 'active') AS good,
                   f.copies
            FROM nodes n JOIN top ON top.id = n.id JOIN folders f ON f.node_id = top.folder
            WHERE n.kind = 'file' AND good {'<>' if or_over else '<'} f.copies
            """
        )
        return [(int(a), int(b), int(c)) for a, b, c in rows]

    # -- steps owed to missing drives -------------------------------------------------------

    def owe(self, drive_id: int, payload: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO owed (drive_id, payload) VALUES (?, ?)", (drive_id, to_json(payload)))

    def has_table(self, name: str) -> bool:
        return self.db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                               (name,)).fetchone() is not None

    def owed(self, drive_id: int) -> list[tuple[int, dict[str, Any]]]:
        rows = self.db.execute("SELECT id, payload FROM owed WHERE drive_id = ? ORDER BY id", (drive_id,))
        return [(int(i), json.loads(p)) for i, p in rows]

    def owed_done(self, owed_id: int) -> None:
        self.db.execute("DELETE FROM owed WHERE id = ?", (owed_id,))

    # -- journal -----------------------------------------------------------------------------

    def journal_add(self, op: str, payload: dict[str, Any], entry_id: int | None = None) -> int:
        """A journal row; its id, or `entry_id` (a row a failed commit undid, made again as it was)."""
        cur = self.db.execute("INSERT INTO journal (id, op, payload, created) VALUES (?, ?, ?, ?)",
                              (entry_id, op, to_json(payload), time.time()))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def journal_update(self, entry_id: int, payload: dict[str, Any]) -> None:
        self.db.execute("UPDATE journal SET payload = ? WHERE id = ?", (to_json(payload), entry_id))

    def journal_done(self, entry_id: int) -> None:
        self.db.execute("DELETE FROM journal WHERE id = ?", (entry_id,))

    def journal_done_later(self, entry_id: int) -> None:
        """Remove the row with the next commit (the change it covers is recorded and its drive
        steps are done; a crash before then redoes them, harmlessly)."""
        self._done_later.append(entry_id)

    def journal_flush(self) -> None:
        """Commit the removals `journal_done_later` holds back (the mount does every second)."""
        if self._done_later:
            with self.transaction():
                pass

    def journal(self) -> list[JournalEntry]:
        rows = self.db.execute("SELECT id, op, payload, created FROM journal ORDER BY id")
        return [JournalEntry(i, op, json.loads(p), c) for i, op, p, c in rows]


class _Transaction:
    """`Catalog.transaction`: a class, not a generator (the mount opens a few per request)."""

    __slots__ = ("_cat", "_grouped", "_how", "_done")

    def __init__(self, cat: Catalog, grouped: bool) -> None:
        self._cat = cat
        self._grouped = grouped

    def __enter__(self) -> None:
        self._how, self._done = self._cat._begin(self._grouped)

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: object) -> None:
        self._cat._end(self._how, self._done, self._grouped, e)

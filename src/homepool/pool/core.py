"""The `Pool` API: drives, folders, the tree, reads, renames, deletes, copies, and the
journal that makes each change crash-safe (see the package docstring)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import logging
import os
import sqlite3
import stat as stat_
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .. import control, paths, placement
from ..catalog import CURRENT_REV, ROOT_ID, Catalog, Entry, Node, NoSuchRowError
from ..config import CATALOG_FILE, CONFIG_FILE, PoolConfig, PoolLock
from ..drives import (
    CATALOG_COPY,
    META_DIR,
    TREE_DIR,
    Drive,
    mount_of,
    new_identity,
    on_path,
    read_identity,
    write_atomic,
    write_identity,
)
from ..errors import (
    AlreadyExists,
    BadCopies,
    BadDrive,
    DirectoryNotEmpty,
    FolderExists,
    HomepoolError,
    IsADirectory,
    LinksAcrossFolders,
    NewerPool,
    NoPool,
    NoReadableCopy,
    NoSuchFolder,
    NotAPool,
    NotFound,
    NotInFolder,
    PoolExists,
    PoolFull,
)
from ..errors import NotADirectory as NotADir
from ..streams import CHUNK, Target, copy_to
from ..units import human
from . import newfiles
from .batch import WriteBatch
from .live import DRIVES_TTL, PASSTHROUGH_ROOM, CloseRecord, LiveFile, LiveOps, Looked, NewCreate
from .newfiles import NewFiles
from .ondrive import (
    conflict_name,
    copy_is_at_fault,
    copy_xattrs,
    keep_aside,
    kept_xattrs,
    link_name,
    make_entry,
    rename_on,
    scan_tree,
    unlink_names,
    xattrs_of,
)

log = logging.getLogger(__name__)

MAX_COPIES = 16

# The prescriptive namespace: where things go, and how many copies they deserve. Things that
# cannot be replaced get 2; big things that can be re-ripped or re-downloaded get 1.
DEFAULT_FOLDERS: dict[str, int] = {
    "Documents": 2,
    "Photos": 2,
    "Music": 2,
    "Videos": 1,
    "Recorded TV": 1,
    "Software": 1,
    "Users": 2,
}


@dataclass
class DriveInfo:
    """What `drive list` and `status` show of one drive."""

    id: int
    label: str
    path: str
    state: str  # active | missing
    fstype: str
    size: int
    free: int
    used: int  # by the pool's files
    files: int
    max_size: int | None
    shared_device: bool


@dataclass
class FolderInfo:
    name: str
    copies: int
    files: int
    bytes: int
    short: int  # files with fewer good copies than `copies`


def _now_ns() -> int:
    return time.time_ns()


def named(cat: Catalog, parent_id: int, name: str) -> Node | None:
    """What the entry `name` in directory `parent_id` names (folders match as Windows would)."""
    found = cat.child(parent_id, name)
    if found is None and parent_id == ROOT_ID:
        folder = cat.folder_by_fold(paths.fold(name))
        found = cat.node(folder[0]) if folder else None
    return found if found is None else cat.resolve(found)


GROUP_MAX = 256  # renames and deletes recorded in one commit at most (`Pool.group_steps`)


@dataclass
class _Queued:
    """A rename or delete recorded in the open group: its drive steps, run after the commit."""
    entry: int  # its journal row
    op: str
    payload: dict
    drives: dict[int, Drive]
    gone: dict[int, tuple[int, int]]  # size and time of the copies it removes, by drive
    committed: bool = False  # its group was committed: its steps must run (a crash would redo them)


def _step_paths(p: dict) -> set[str]:
    """The paths a rename's or drop's drive steps act on."""
    return {p[k] for k in ("path", "src", "dst", "heir") if k in p} | set(p.get("links", ()))


class Pool(LiveOps):
    """An open pool. Use `Pool.create` or `Pool.open`, and close it (or use `with`)."""

    def __init__(self, state_dir: Path, config: PoolConfig, catalog: Catalog, lock: PoolLock | None) -> None:
        self.state_dir = state_dir
        self.config = config
        self.cat = catalog
        self.lock = lock
        self._changed = False
        # Serving a mount (`go_live`): open files by node, files deleted while open, and a
        # drive snapshot (taken at, drives) reused for DRIVES_TTL seconds.
        self.live = False
        self.passthrough_room = PASSTHROUGH_ROOM
        self._open: dict[int, list[LiveFile]] = {}
        self._orphans: dict[int, Node] = {}
        self._recording: set[int] = set()  # files whose last handle is being recorded (`release_file`)
        self._reconcile_at_release: set[int] = set()  # files whose copies change once closed
        self._reconcile_soon: set[int] = set()  # files moved to another folder: `copy_moved_files`
        self._dir_times: dict[int, int] = {}  # directories changed through the mount: their new mtime
        # Around copying a file's data to make a new copy: the mount lets its lock go there, so
        # a big file does not hold up every other request (the copy is checked afterwards).
        self.unlocked_io: Callable[[], AbstractContextManager[object]] = nullcontext
        self._copying: dict[tuple[int, str], int] = {}  # (drive, temp file) -> file: new copies being made
        # While the mount repairs (`check --repair` while mounted): the entries repairs add or
        # change, as (directory, name, node), for the kernel to forget once the lock is let go.
        self.kernel_news: list[tuple[int | None, str, int]] | None = None
        self.retaken: list[int] = []  # files whose content a returning drive changed (`take_newer`)
        self.copies_changing = False  # the mount is giving a folder's files their new copies
        self._changes: dict[int, int] = {}  # node id -> changes made through open files
        self.drive_cache: tuple[float, list[Drive]] | None = None
        # The mount's renames and deletes of files, recorded in groups (`group_steps`): their
        # drive steps wait for their group's commit (`settle_steps`), with the paths they touch.
        self.grouping = False
        self.groups_undone = 0  # groups whose commit failed (`Looked`)
        self._queued: list[_Queued] = []
        self._queued_paths: set[str] = set()
        self.group_waiting = threading.Event()  # set while a group waits for its commit (the mount's, soon)
        # Nodes and directories the open group changed: the lock-free looks are unsure of them
        # (`Glance`). And the close records in it, with the journal row each one removes.
        self.group_touched: set[int] = set()
        self._group_records: list[CloseRecord] = []
        # New files in the open group, and the note that names their copies until its commit
        # (see pool/newfiles.py).
        self._group_creates: list[NewCreate] = []
        self._new_files: NewFiles | None = None
        self._cands: tuple[object, list[int], list[placement.Candidate]] | None = None

    # -- opening and closing -----------------------------------------------------------------

    @classmethod
    def create(cls, state_dir: Path, folders: dict[str, int] | None = None,
               config: PoolConfig | None = None) -> Pool:
        """Make a new pool in `state_dir` (empty or not yet there) with the default folders
        (`recover` passes the recovered config and no folders)."""
        if (state_dir / CONFIG_FILE).exists() or (state_dir / CATALOG_FILE).exists():
            raise PoolExists(path=state_dir)
        if state_dir.exists() and not state_dir.is_dir():
            raise NotAPool(path=state_dir, why="it is a file")
        state_dir.mkdir(parents=True, exist_ok=True)
        lock = PoolLock(state_dir)
        lock.acquire()
        if config is None:
            created = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
            config = PoolConfig(pool_id=str(uuid.uuid4()), created=created)
        cat = Catalog.create(state_dir / CATALOG_FILE, config.pool_id, _now_ns())
        config.save(state_dir)  # last: a pool.toml means a complete pool
        pool = cls(state_dir, config, cat, lock)
        for name, copies in (DEFAULT_FOLDERS if folders is None else folders).items():
            pool.add_folder(name, copies)
        return pool

    @classmethod
    def open(cls, state_dir: Path, write: bool = True) -> Pool:
        """Open an existing pool; with `write`, take its lock (one changer at a time)."""
        if not state_dir.exists():
            raise NoPool(path=state_dir)
        if not state_dir.is_dir():
            raise NotAPool(path=state_dir, why="it is not a directory")
        if not (state_dir / CONFIG_FILE).exists():
            if any(state_dir.iterdir()):
                raise NotAPool(path=state_dir, why=f"it has no {CONFIG_FILE}")
            raise NoPool(path=state_dir)
        if not (state_dir / CATALOG_FILE).exists():
            raise NotAPool(path=state_dir, why=f"its {CATALOG_FILE} is missing; `homepool recover` rebuilds it")
        config = PoolConfig.load(state_dir)
        lock = None
        if write:
            lock = PoolLock(state_dir)
            lock.acquire()
        else:
            control.settle(state_dir)  # a mount commits what it holds back: this reader sees it
        try:
            try:
                cat = Catalog(state_dir / CATALOG_FILE)
                rev = cat.schema_rev()
            except sqlite3.Error as e:
                raise NotAPool(path=state_dir, why=f"{CATALOG_FILE} is damaged ({e}); `homepool recover --force "
                               "DRIVE...` rebuilds it from the drives") from None
            if rev > CURRENT_REV:
                cat.close()
                raise NewerPool(path=state_dir, found=rev, known=CURRENT_REV)
            if cat.meta("pool_id") != config.pool_id:
                cat.close()
                raise NotAPool(path=state_dir, why=f"{CATALOG_FILE} belongs to another pool than {CONFIG_FILE}")
            if rev < CURRENT_REV:
                # An older catalog is upgraded in place (under the lock, also for a reader).
                if lock is None:
                    with_lock = PoolLock(state_dir)
                    with_lock.acquire()
                    try:
                        cat.upgrade()
                    finally:
                        with_lock.release()
                else:
                    cat.upgrade()
                log.info("upgraded the catalog from revision %d to %d", rev, CURRENT_REV)
        except BaseException:
            if lock:
                lock.release()
            raise
        pool = cls(state_dir, config, cat, lock)
        if write:
            try:
                # We hold the lock, so whatever is in the journal was left by a crashed process:
                # finish it now, before any new change could be overtaken by an old one replayed.
                # New files it made and never committed first: a rename replayed finds them.
                for line in pool.take_in_new_files():
                    log.warning("%s", line)
                for line in pool.finish_journal():
                    log.warning("%s", line)
                for line in pool.remove_orphan_temps():
                    log.warning("%s", line)
                for d in pool.drives(present_only=True):
                    for line in pool.settle_owed(d):
                        log.info("%s", line)
            except BaseException:
                pool.close()
                raise
        return pool

    def close(self) -> None:
        try:
            if self.live:
                self.catch_up()
            if self._changed:
                self.save_catalog_copies()
        finally:
            if self._new_files is not None:
                self._new_files.close()
            self.cat.close()
            if self.lock:
                self.lock.release()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def save_catalog_copies(self) -> None:
        """Put a copy of the catalog on every present drive, so `recover` keeps the settings."""
        for d in self.drives(present_only=True):
            tmp = d.meta / f"{CATALOG_COPY}.{os.getpid()}.tmp"  # the mount and a command may both save
            try:
                with suppress(FileNotFoundError):
                    tmp.unlink()
                self.cat.backup_to(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, d.meta / CATALOG_COPY)
                write_atomic(d.meta / CONFIG_FILE, self.config.dumps().encode())
            except OSError as e:
                log.warning("could not save the catalog copy on %s: %s", d.name, e)
        self._changed = False

    # -- drives ------------------------------------------------------------------------------

    def drives(self, present_only: bool = False) -> list[Drive]:
        """A snapshot of the member drives; records drives that went missing or came back.
        Drive steps still waiting for their group's commit run first (`settle_steps`): what
        is asked for the drives next finds them as the catalog says."""
        self.settle_steps()
        return self._drive_snapshot(present_only)

    def _drive_snapshot(self, present_only: bool = False) -> list[Drive]:
        if self.live:
            if self.drive_cache is None or time.monotonic() - self.drive_cache[0] > DRIVES_TTL:
                self.cat.commit_group()  # (looking at the drives may wait: see `_drives_for`)
                self.drive_cache = (time.monotonic(), self._look_at_drives())
            return [d for d in self.drive_cache[1] if d.row.state == "active" or not present_only]
        out = self._look_at_drives()
        return [d for d in out if d.row.state == "active" or not present_only]

    def drives_by_id(self) -> dict[int, Drive]:
        return {d.id: d for d in self.drives()}

    def _look_at_drives(self) -> list[Drive]:
        out = []
        for row in self.cat.drives():
            d = Drive(row, self._folder_attrs)
            state = "active" if d.present() else "missing"
            if state != row.state:
                log.warning("drive %s is %s", d.name, "missing" if state == "missing" else "back")
                with self.cat.transaction():
                    self.cat.set_drive_state(d.id, state)
                d = Drive(dataclasses.replace(row, state=state), self._folder_attrs)
                if state == "active" and self.lock is not None:
                    self.settle_owed(d)
            out.append(d)
        return out

    def _folder_attrs(self, path: str) -> tuple[int, int, int] | None:
        """The mode and owner the pool shows for folder `path`, which a drive that lacks it
        makes on the way to a copy (`Drive.makedirs`): as its folder elsewhere, not root's 0o755."""
        node = self.lookup(path)
        return (node.mode, node.uid, node.gid) if node is not None and node.is_dir else None

    def drive(self, drive_id: int) -> Drive:
        for d in self.drives():
            if d.id == drive_id:
                return d
        raise KeyError(drive_id)

    def add_drive(self, path: Path, label: str | None = None, max_size: int | None = None,
                  allow_shared_device: bool = False, adopt: bool = False) -> Drive:
        """Make the filesystem mounted at `path` a member. Checks everything before changing
        anything; with `adopt`, a drive of another pool joins with its files."""
        shown = str(path)
        if not path.exists():
            raise BadDrive(path=shown, why="no such directory")
        if not path.is_dir():
            raise BadDrive(path=shown, why="it is not a directory")
        real = Path(os.path.realpath(path))
        if not os.access(real, os.W_OK) or os.statvfs(real).f_flag & os.ST_RDONLY:
            raise BadDrive(path=shown, why="it is read-only; the pool needs to write to its drives")
        if max_size is not None and max_size <= 0:
            raise BadDrive(path=shown, why="--max-size must be more than 0")
        state = Path(os.path.realpath(self.state_dir))
        if real == state or state.is_relative_to(real) or real.is_relative_to(state):
            raise BadDrive(path=shown, why=f"it overlaps the pool's state directory {state}")
        ident = read_identity(real)
        members = self.cat.drives()
        for m in members:
            mreal = Path(os.path.realpath(m.path))
            if ident is not None and ident.drive_id == m.uuid:
                if mreal == real:
                    raise BadDrive(path=shown, why=f"it is already in the pool as {m.label!r}")
                if not Drive(m).present():  # the same drive, mounted somewhere else now
                    with self.cat.transaction():
                        self.cat.set_drive_path(m.id, str(real))
                        self.cat.set_drive_state(m.id, "active")
                    self._changed = True
                    self.drive_cache = None  # the mount's snapshot of the drives is out of date
                    if self.lock is not None:
                        self.settle_owed(self.drive(m.id))  # what it missed, before anything looks at it
                    log.info("drive %r is now at %s", m.label, real)
                    return self.drive(m.id)
                raise BadDrive(path=shown, why=f"it is a second view of drive {m.label!r} at {m.path}")
            if mreal == real:
                raise BadDrive(path=shown, why=f"it is already in the pool as {m.label!r}")
            if real.is_relative_to(mreal) or mreal.is_relative_to(real):
                raise BadDrive(path=shown, why=f"it is inside or above drive {m.label!r} at {m.path}")
        dev = os.stat(real).st_dev
        shared = [m for m in members if os.path.exists(m.path) and os.stat(m.path).st_dev == dev]
        if shared and not allow_shared_device:
            raise BadDrive(
                path=shown,
                why=f"it is on the same filesystem as drive {shared[0].label!r} ({shared[0].path}), so two "
                "copies there would not survive a failed disk; use a different disk, or "
                "--allow-shared-device for testing",
            )
        if ident is not None and ident.pool_id != self.config.pool_id and not adopt:
            raise BadDrive(
                path=shown,
                why=f"it belongs to another pool ({ident.pool_id}); add --adopt to bring it and its files in",
            )
        if ident is None and (real / META_DIR).exists():
            raise BadDrive(path=shown, why=f"its {META_DIR}/ folder is damaged; rename it away and try again")
        if (real / TREE_DIR).exists() and ident is None:
            raise BadDrive(path=shown, why=f"it already has a {TREE_DIR}/ folder that is not a pool's; rename it away")
        label = label if label is not None and label != "" else (ident.label if ident and adopt else real.name)
        if "/" in label or "\\" in label or not label.isprintable() or len(label) > 64:
            raise BadDrive(path=shown, why="a label is at most 64 printable characters, without / or \\")
        new = new_identity(self.config.pool_id, label)
        with self.cat.transaction():
            drive_id = self.cat.add_drive(new.drive_id, str(real), label, new.added_at, max_size, bool(shared))
            write_identity(real, new)  # inside the transaction: a failure here adds nothing
        self._changed = True
        self.drive_cache = None  # the mount's snapshot of the drives is out of date
        drive = self.drive(drive_id)
        for folder, _ in self.cat.folders():
            drive.makedirs(folder.name, folder.mode)
        for node_id in self.cat.entry_ids():  # symlinks and special files are on every drive
            node = self.cat.node(node_id)
            try:
                self.remake_entry(node, drive, self.path_of(node_id))
            except OSError as e:
                log.error("could not make %s on %s: %s", self.path_of(node_id), drive.name, e)
        log.info("added drive %r at %s", label, real)
        if adopt and ident is not None:
            self.register_tree(drive)
        return drive

    def drive_infos(self) -> list[DriveInfo]:
        used = self.cat.bytes_by_drive()
        counts = dict(self.cat.db.execute("SELECT drive_id, COUNT(*) FROM replicas GROUP BY drive_id").fetchall())
        out = []
        drives = self.drives()
        devices = [d.device() for d in drives]
        for d, dev in zip(drives, devices, strict=True):
            size = free = 0
            fstype = "?"
            if d.row.state == "active":
                size, free = d.capacity(used.get(d.id, 0))
                fstype = mount_of(d.root)[1]
            shared = dev is not None and devices.count(dev) > 1
            out.append(DriveInfo(d.id, d.label, str(d.root), d.row.state, fstype, size, free, used.get(d.id, 0),
                                 int(counts.get(d.id, 0)), d.row.max_size, shared))
        return out

    def _candidates(self, drives: list[Drive]) -> list[placement.Candidate]:
        if self.live:  # per create through the mount: a snapshot refreshed with the drive one
            ids = [d.id for d in drives]
            if self._cands is None or self._cands[0] != self.drive_cache or self._cands[1] != ids:
                self._cands = (self.drive_cache, ids, self._look_at_room(drives))
            return self._cands[2]
        return self._look_at_room(drives)

    def _look_at_room(self, drives: list[Drive]) -> list[placement.Candidate]:
        used = self.cat.bytes_by_drive()
        return [placement.Candidate(d.id, d.room(used.get(d.id, 0)), d.device())
                for d in drives if d.row.state == "active"]

    # -- folders -----------------------------------------------------------------------------

    def add_folder(self, name: str, copies: int = 1, mode: int = 0o755, uid: int | None = None,
                   gid: int | None = None) -> Node:
        """A new top-level folder; `uid`, `gid`: its owner (by default, whoever runs this)."""
        name = paths.check_folder_name(name)
        self._check_copies(copies)
        clash = self.cat.folder_by_fold(paths.fold(name))
        if clash is not None:
            existing = self.cat.node(clash[0]).name
            why = "" if existing == name else f" (the same name as {name!r} to Windows)"
            raise FolderExists(existing=existing, clash=why)
        return self._make_dir(ROOT_ID, name, name, mode, uid, gid, copies=copies)

    def _make_dir(self, parent_id: int, name: str, path: str, mode: int, uid: int | None, gid: int | None,
                  copies: int | None = None, drives: list[Drive] | None = None) -> Node:
        """A new directory (`copies`: a top-level folder's), recorded first with a `mkdir`
        journal row, then made on every present drive (`drives`: a snapshot to reuse): a
        crash in between has the next opening make it there (`_apply_mkdir`)."""
        mode = stat_.S_IFDIR | (mode & 0o7777)
        uid, gid = os.geteuid() if uid is None else uid, os.getegid() if gid is None else gid
        with self.cat.transaction():
            node_id = self.cat.add_node(parent_id, name, "dir", mode, _now_ns(), uid=uid, gid=gid)
            if copies is not None:
                self.cat.add_folder(node_id, paths.fold(name), copies)
            entry = self.cat.journal_add("mkdir", {"id": node_id, "path": path})
        self._changed = True
        node = self.cat.node(node_id)
        self._dir_on_drives(node, path, drives if drives is not None else self.drives(present_only=True))
        if self.live:
            self.cat.journal_done_later(entry)  # (the mount's next commit: one costs more than a mkdir)
        else:
            with self.cat.transaction():  # (joining an open one, the row never reaches the disk)
                self.cat.journal_done(entry)
        return node

    @staticmethod
    def _dir_on_drives(node: Node, path: str, drives: list[Drive]) -> None:
        """Directory `node` at `path` on each of `drives`, with its owner and mode (mkdir's
        mode loses the umask's bits, and chown the set-id ones): as `Drive.makedirs` gives a
        folder it makes, or set here on one already there. One that fails is logged: the
        folders on the way to a copy are made with it."""
        for d in drives:
            try:
                if not d.makedirs(path, node.mode):
                    d.do(os.lchown, path, node.uid, node.gid)
                    d.do(os.chmod, path, node.mode & 0o7777)
            except OSError as e:
                log.error("could not make folder %s on %s: %s", path, d.name, e)

    @staticmethod
    def _rmdir_on(drives: Iterable[Drive], path: str) -> list[int]:
        """Remove folder `path` from each of `drives`; the ones it is owed to (away, failing, or
        with something the catalog does not know in it there)."""
        later = []
        for d in drives:
            try:
                if d.row.state != "active" or not d.rmdir(path):
                    later.append(d.id)
            except OSError as e:
                log.error("could not remove %s on %s: %s", path, d.name, e)
                later.append(d.id)
        return later

    def _owe_rmdir(self, drive_ids: list[int], path: str) -> None:
        for drive_id in drive_ids:  # tried again when the drive is back, or at each mount
            self.cat.owe(drive_id, {"op": "rmdir", "path": path})

    def _apply_rmdir(self, p: dict, drives: dict[int, Drive]) -> list[int]:
        """A folder's removal a crash cut short (`delete`): made on the drives now, unless a
        folder was made at that path since (whose own row follows). Returns the drives owed it."""
        if self.lookup(p["path"]) is not None:
            return []
        return self._rmdir_on(drives.values(), p["path"])

    def _apply_mkdir(self, p: dict, drives: dict[int, Drive]) -> None:
        """A directory a crash cut short (`_make_dir`): made on the drives now, where it is."""
        node = self.cat.node_or_none(p["id"])
        if node is not None and node.is_dir:
            present = [d for d in drives.values() if d.row.state == "active"]  # (`drives()` looked)
            self._dir_on_drives(node, self.path_of(node.id), present)

    def _check_copies(self, copies: int) -> None:
        if not isinstance(copies, int) or not 1 <= copies <= MAX_COPIES:
            raise BadCopies(copies=copies, max=MAX_COPIES)

    def folder(self, name: str) -> tuple[Node, int]:
        """(folder node, copies) of the folder called `name` (matched as Windows would)."""
        found = self.cat.folder_by_fold(paths.fold(name.strip("/")))
        if found is None:
            raise NoSuchFolder(name=name)
        return self.cat.node(found[0]), found[1]

    def set_copies(self, name: str, copies: int) -> list[str]:
        """Set a folder's copies and add or remove copies of its files to match.
        Returns the paths still short of copies afterwards."""
        self._check_copies(copies)
        node, _ = self.folder(name)
        with self.cat.transaction():
            self.cat.set_folder_copies(node.id, copies)
        self._changed = True
        short = []
        for f in self.cat.subtree_files(node.id):
            if self.reconcile(f) < copies:
                short.append(self.path_of(f.id))
        return short

    def folder_infos(self) -> list[FolderInfo]:
        short_by_folder: dict[int, int] = {}
        for node_id, _, _ in self.cat.short_files():
            top = self._folder_of(node_id)
            short_by_folder[top] = short_by_folder.get(top, 0) + 1
        out = []
        for node, copies in self.cat.folders():
            files = self.cat.subtree_files(node.id)
            out.append(FolderInfo(node.name, copies, len(files), sum(f.size for f in files),
                                  short_by_folder.get(node.id, 0)))
        return out

    def _folder_of(self, node_id: int) -> int:
        node = self.cat.node(node_id)
        while node.parent_id != ROOT_ID:
            assert node.parent_id is not None, "the root is in no folder"
            node = self.cat.node(node.parent_id)
        return node.id

    def copies_wanted(self, node_id: int) -> int:
        if self.cat.track_paths:  # the mount: the path is cached, its first part is the folder
            found = self.cat.folder_by_fold(paths.fold(self.cat.path_of(node_id).partition("/")[0]))
            if found is not None:
                return found[1]
        return self.cat.folder_copies(self._folder_of(node_id))

    # -- the tree ----------------------------------------------------------------------------

    def lookup(self, path: str) -> Node | None:
        node = self.cat.node(ROOT_ID)
        for part in paths.split(path):
            if not node.is_dir:
                return None
            child = self.cat.child(node.id, part)
            if child is None and node.id == ROOT_ID:  # folders match as Windows would
                found = self.cat.folder_by_fold(paths.fold(part))
                child = self.cat.node(found[0]) if found else None
            if child is None:
                return None
            node = child
        return node

    def stat(self, path: str) -> Node:
        node = self.lookup(path)
        if node is None:
            raise NotFound(path=paths.normalize(path) or "/")
        return node

    def path_of(self, node_id: int) -> str:
        try:
            return self.cat.path_of(node_id)
        except NoSuchRowError:
            raise NotFound(path=f"#{node_id}") from None

    def listdir(self, path: str) -> list[Node]:
        node = self.stat(path)
        if not node.is_dir:
            raise NotADir(path=paths.normalize(path))
        return self.cat.children(node.id)

    def walk(self, path: str = "") -> Iterator[tuple[str, Node]]:
        """(pool path, node) of everything below `path`, parents first."""
        top = self.stat(path)
        base = paths.normalize(path)
        stack = [(base, top)]
        while stack:
            prefix, node = stack.pop()
            for child in self.cat.children(node.id):
                p = f"{prefix}/{child.name}" if prefix else child.name
                yield p, child
                if child.is_dir:
                    stack.append((p, child))

    def replicas(self, path: str) -> list[tuple[Drive, str]]:
        """(drive, state) of each recorded copy of the file at `path`."""
        node = self.cat.resolve(self.stat(path))
        drives = {d.id: d for d in self.drives()}
        return [(drives[r.drive_id], r.state) for r in self.cat.replicas(node.id)]

    def mkdir(self, path: str, mode: int = 0o755, exist_ok: bool = False, drives: list[Drive] | None = None) -> Node:
        """Create a directory in the catalog and on every present drive (a top-level one is a
        new folder with 1 copy). `drives`: a snapshot to reuse across many calls."""
        parts = paths.split(path)
        if not parts:
            raise AlreadyExists(path="/")
        if len(parts) == 1:
            existing = self.lookup(parts[0])
            if existing is not None and exist_ok:
                return existing
            return self.add_folder(parts[0], mode=mode)
        parent = self.stat(paths.join(parts[:-1]))
        if not parent.is_dir:
            raise NotADir(path=paths.join(parts[:-1]))
        existing = self.cat.child(parent.id, parts[-1])
        if existing is not None:
            if exist_ok and existing.is_dir:
                return existing
            raise AlreadyExists(path=paths.join(parts))
        return self._make_dir(parent.id, parts[-1], paths.join(parts), mode, None, None, drives=drives)

    def makedirs(self, path: str, mode: int = 0o755, drives: list[Drive] | None = None) -> Node:
        parts = paths.split(path)
        node = self.cat.node(ROOT_ID)
        for i in range(1, len(parts) + 1):
            node = self.mkdir(paths.join(parts[:i]), mode, exist_ok=True, drives=drives)
            if not node.is_dir:
                raise NotADir(path=paths.join(parts[:i]))
        return node

    def makedirs_many(self, dirs: list[str], mode: int = 0o755) -> None:
        """Create many directories (and their parents) with one catalog commit, as an import
        does. A crash half-way leaves directories on drives that `check --repair` takes in."""
        drives = self.drives(present_only=True)
        with self.cat.transaction():
            for d in dirs:
                self.makedirs(d, mode, drives)

    # -- writing files -----------------------------------------------------------------------

    def write(self, path: str, src: BinaryIO, size: int, mode: int = 0o644, mtime_ns: int | None = None) -> Node:
        """Create or replace the file at `path` with the content of `src` (`size` bytes
        expected), on as many drives as its folder wants. Durable when it returns."""
        with self.batch(durability="fsync") as b:
            b.put(path, src, size, mode, mtime_ns if mtime_ns is not None else _now_ns())
        return self.stat(path)

    def write_bytes(self, path: str, data: bytes, mode: int = 0o644, mtime_ns: int | None = None) -> Node:
        import io

        return self.write(path, io.BytesIO(data), len(data), mode, mtime_ns)

    def add_symlink(self, path: str, target: str, mtime_ns: int | None = None) -> Node:
        """A symbolic link at `path` (an import's, in a folder that exists), owned by whoever
        runs this: recorded, then made on every present drive. Killed in between, `check
        --repair` makes it on the drives (`entries_match`)."""
        parts = paths.split(path)
        parent = self.stat(paths.join(parts[:-1])) if len(parts) > 1 else None
        if parent is None or not parent.is_dir:
            raise NotADir(path=paths.join(parts[:-1]) or "/")
        if self.cat.child(parent.id, parts[-1]) is not None:
            raise AlreadyExists(path=path)
        return self._add_entry(parent.id, parts[-1], path, stat_.S_IFLNK | 0o777,
                               mtime_ns if mtime_ns is not None else _now_ns(), os.geteuid(), os.getegid(), target)

    def _add_entry(self, parent_id: int, name: str, path: str, mode: int, mtime_ns: int, uid: int, gid: int,
                   target: str | None, rdev: int = 0, found_on: Drive | None = None) -> Node:
        """Record a symlink (`target`) or special file, then make it on every present drive
        (but `found_on`, which has it already). A drive that fails is logged, and `check`
        shows it (`entries_match`)."""
        with self.cat.transaction():
            node_id = self.cat.add_node(parent_id, name, "symlink" if target is not None else "special", mode,
                                        mtime_ns, len(os.fsencode(target)) if target is not None else 0, None,
                                        uid, gid, target, rdev)
        self._changed = True
        node = self.cat.node(node_id)
        for d in self.drives(present_only=True):
            if found_on is None or d.id != found_on.id:
                try:
                    self.remake_entry(node, d, path)
                except OSError as e:
                    log.error("could not make %s on %s: %s", path, d.name, e)
        return node

    def batch(self, durability: str = "syncfs", max_files: int = 5000, max_bytes: int = 512 << 20,
              max_seconds: float = 3.0) -> WriteBatch:
        """A batch of new files made durable together (see `WriteBatch`). Each commit costs
        two flushes per drive, so batches are large; `max_seconds` keeps what an import has
        done showing up in the pool every few seconds."""
        return WriteBatch(self, durability, max_files, max_bytes, max_seconds)

    def _targets_for(self, node: Node | None, path: str, size: int, copies: int,
                     cands: list[placement.Candidate]) -> tuple[list[int], list[int]]:
        """(target drive ids, drives whose old copy to drop) for a new version of a file."""
        old = [r.drive_id for r in self.cat.replicas(node.id)] if node else []
        old_size = node.size if node else 0
        # A new version stays where the old one was if it fits there (no needless moves).
        keep = [c.drive_id for c in cands if c.drive_id in old and c.room + old_size >= size][:copies]
        more = placement.choose(self.config.placement, cands, size, copies - len(keep), exclude=keep)
        targets = keep + more
        if not targets:
            largest = max((c.room for c in cands), default=0)
            raise PoolFull(path=path, size=human(size), largest=human(largest))
        return targets, [d for d in old if d not in targets]

    # -- the journal: switching staged data into place --------------------------------------

    # Each op has drive steps (`_apply_*`: idempotent, a failing drive is logged and skipped,
    # never raised, so a journal row can always be finished) and catalog steps (`_record_*`,
    # inside the transaction that deletes the journal row). Steps a missing drive could not
    # take are recorded in `owed` and applied when it is back (`settle_owed`).

    def _apply_write(self, p: dict, drives: dict[int, Drive], made: set[tuple[int, str]] | None = None) -> list[int]:
        """Drive steps of a 'write'. Returns the targets that hold the new data.
        `made` remembers directories already created on each drive during a batch."""
        done = []
        parent = p["path"].rpartition("/")[0]
        made = made if made is not None else set()
        for key, tmp_name in p["targets"].items():
            d = drives.get(int(key))
            if d is None or d.row.state != "active":
                continue
            tmp = f"{d.tmpdir_s}/{tmp_name}"
            final = d.full(p["path"])
            try:
                if (d.id, parent) not in made:
                    if (link := d.symlink_on_the_way(parent)) is not None:  # never write (or mkdir) through it
                        raise OSError(errno.ELOOP, f"folder {link} there is a symlink; `homepool check --repair`")
                    d.makedirs(parent)
                    made.add((d.id, parent))
                try:
                    on_path(os.replace, tmp, final)
                    switched = True
                except FileNotFoundError:
                    st = d.do(os.stat, p["path"])
                    switched = stat_.S_ISREG(st.st_mode) and (st.st_size, st.st_mtime_ns) == (p["size"], p["mtime_ns"])
                if switched:  # now, or before a crash
                    done.append(d.id)
                    for name in p.get("links", ()):  # the file's other names: hard links of the new copy
                        try:
                            link_name(d, p["path"], name)
                        except OSError as e:  # `check` shows the name missing
                            log.error("could not link %s to %s on %s: %s", name, p["path"], d.name, e)
                else:
                    log.error("copy of %s on %s was lost before it was switched into place", p["path"], d.name)
            except FileNotFoundError:
                log.error("copy of %s on %s was lost before it was switched into place", p["path"], d.name)
            except OSError as e:
                log.error("could not put %s into place on %s: %s", p["path"], d.name, e)
        if not done:
            return done  # nothing new is in place: the old copies stay, all of them
        self._unlink_on(drives, p["drop"], p["path"], "old copy")  # a failure leaves it for `check`
        return done

    def _record_write(self, p: dict, done: list[int], parent: Node | None, drives: dict[int, Drive]) -> None:
        """Catalog steps of a 'write' (inside the caller's transaction)."""
        if not done:
            return  # the old state stands
        parts = paths.split(p["path"])
        parent = parent or self.lookup(paths.join(parts[:-1]))
        if parent is None or not parent.is_dir:
            log.error("the folder of %s is gone; its new copies are left for `check`", p["path"])
            return
        old = {r.drive_id: r for r in self.cat.replicas(n.id)} if (n := self.cat.child(parent.id, parts[-1])) else {}
        node_id = self.cat.upsert_file(parent.id, parts[-1], p["size"], p["mode"], p["mtime_ns"], p["hash"],
                                       p.get("uid"), p.get("gid"))
        if node_id is None:
            log.error("%s became a folder; its new copies are left for `check`", p["path"])
            return
        for drive_id in done:
            self.cat.set_replica(node_id, drive_id, p["size"], p["mtime_ns"], p["hash"])
        # Every other copy that does not hold the new content is no copy of this file any
        # more: the dropped old copies, and targets whose new copy did not make it.
        dropped = set(map(int, p["drop"]))
        for drive_id, r in old.items():
            if drive_id in done or (r.hash == p["hash"] and drive_id not in dropped):
                continue
            self.cat.drop_replica(node_id, drive_id)
            d = drives.get(drive_id) if drives is not None else None
            if drive_id in dropped and (d is None or d.row.state != "active"):
                self.cat.owe(drive_id, {"op": "unlink", "path": p["path"], "size": r.size, "mtime_ns": r.mtime_ns})

    @staticmethod
    def _unlink_on(drives: dict[int, Drive], keys: list, path: str, what: str) -> set[int]:
        """Remove `path` on the present drives among `keys`; returns the ones that failed."""
        failed = set()
        for key in keys:
            d = drives.get(int(key))
            if d is not None and d.row.state == "active":
                try:
                    d.unlink(path)
                except OSError as e:
                    log.error("could not remove the %s of %s on %s: %s", what, path, d.name, e)
                    failed.add(d.id)
        return failed

    def _apply_drop(self, p: dict, drives: dict[int, Drive]) -> set[int]:
        """Drive steps of a 'drop'; returns the drives that could not take them. Copies dropped
        from a file that stays go with its other names (`links`) there; a file's own name
        goes only once its `heir` is there (`_hand_over`)."""
        failed = set()
        for key in p["drives"]:
            d = drives.get(int(key))
            if d is None or d.row.state != "active":
                continue
            try:
                if self._hand_over(d, p["path"], p):
                    unlink_names(d, p["path"], p.get("links", ()))
                    d.unlink(p["path"])
            except OSError as e:
                log.error("could not remove the copy of %s on %s: %s", p["path"], d.name, e)
                failed.add(d.id)
        return failed

    @staticmethod
    def _hand_over(d: Drive, path: str, p: dict) -> bool:
        """Whether the entry at `path` on drive `d` may go (be removed or renamed over). When
        it is a file's own name and the file keeps another name (`heir`, which takes its place
        in the catalog), only once the heir is a hard link of it there: a crash or a failed
        step may have left the heir missing, and the copy would go with the name. An heir that
        is another file is left alone, and so is `path` (for `check`)."""
        if not p.get("heir") or d.id not in map(int, p["heir_drives"]):
            return True
        try:
            st = d.lstat(path)
        except FileNotFoundError:
            return True  # gone already
        if not d.lexists(p["heir"]):
            link_name(d, path, p["heir"])
        if os.path.samestat(st, d.lstat(p["heir"])):
            return True
        log.error("%s on %s is not the file its other name %s is; left for `homepool check`", path, d.name, p["heir"])
        return False

    def _owe_removal(self, drive_id: int, path: str, size: int | None, mtime_ns: int | None, p: dict) -> None:
        """A drive is owed the removal of `path`, a copy of that size and time, or (None) of
        whatever copy is there, its size and time not known (`dropped`); or, if it is a file's
        own name handed to another, `_owe_hand_over`."""
        if self._owe_hand_over(drive_id, path, p):
            return
        if size is None:
            self.cat.owe(drive_id, {"op": "unlink", "path": path, "dropped": True})
        else:
            self.cat.owe(drive_id, {"op": "unlink", "path": path, "size": size, "mtime_ns": mtime_ns})

    def _owe_hand_over(self, drive_id: int, path: str, p: dict) -> bool:
        """If `path` is a file's own name handed to its heir (`_hand_over`), a drive is owed its
        removal once the heir is linked there (one step: nothing owed later relies on another)."""
        if not p.get("heir") or drive_id not in map(int, p["heir_drives"]):
            return False
        self.cat.owe(drive_id, {"op": "unlink", "path": path, "heir": p["heir"]})
        return True

    def _record_drop(self, p: dict, drives: dict[int, Drive], failed: set[int],
                     looked: Looked | None = None) -> dict[int, tuple[int, int]]:
        """Returns the size and time, by drive, of the copies it dropped."""
        node = self._journaled_node(p, "path")
        if node is None:  # recorded already (see `_run_recorded_first`)
            self._owe_failed("drop", p, drives, failed)
            for key in p["drives"]:  # a drive away now: the copy there goes when it is back
                d = drives.get(int(key))
                if d is None or d.row.state != "active":
                    for path in (*p.get("links", ()), p["path"]):
                        self._owe_removal(int(key), path, None, None, p)
            return {}
        file = self.cat.resolve(node)
        reps = {r.drive_id: r for r in (looked.replicas if looked else self.cat.replicas(file.id))}
        for key in p["drives"]:
            r = reps.get(int(key))
            d = drives.get(int(key))
            if r is not None and (d is None or d.row.state != "active" or r.drive_id in failed):
                for path in (*p.get("links", ()), p["path"]):
                    self._owe_removal(r.drive_id, path, r.size, r.mtime_ns, p)
            if not p.get("node"):  # a name going takes no copy with it (the last one: all, with the node)
                self.cat.drop_replica(file.id, int(key))
        if p.get("node"):
            self.cat.remove_name(node)
        return {d: (r.size, r.mtime_ns) for d, r in reps.items()}

    def _apply_rename(self, p: dict, drives: dict[int, Drive]) -> set[int]:
        """Drive steps of a 'rename'; returns the drives that could not take them."""
        failed = set()
        for key in p["unlink_dst"]:
            d = drives.get(int(key))
            if d is not None and d.row.state == "active":
                try:
                    if self._hand_over(d, p["dst"], p):
                        d.unlink(p["dst"])
                except OSError as e:
                    log.error("could not remove the replaced copy of %s on %s: %s", p["dst"], d.name, e)
                    failed.add(d.id)
        for key in p["moves"]:
            d = drives.get(int(key))
            if d is not None and d.row.state == "active":
                try:
                    # Not yet moved here (a replay may find it done): the entry it replaces may go.
                    # (Only a name handed to an heir may have to stay: no lstat for the others.)
                    if p.get("heir") and d.lexists(p["src"]) and not self._hand_over(d, p["dst"], p):
                        keep_aside(d, p["dst"])
                    rename_on(d, p["src"], p["dst"], p["kind"])
                except OSError as e:
                    log.error("could not rename %s to %s on %s: %s", p["src"], p["dst"], d.name, e)
                    failed.add(d.id)
        return failed

    def _record_rename(self, p: dict, drives: dict[int, Drive], failed: set[int],
                       looked: Looked | None = None) -> dict[int, tuple[int, int]]:
        """Returns the size and time, by drive, of the replaced file's copies it dropped."""
        node = self._journaled_node(p, "src")
        if node is None:  # recorded already (see `_run_recorded_first`)
            self._owe_failed("rename", p, drives, failed)
            return {}
        if "dparent" in p:  # (the mount's: its new name was checked)
            parent, name = self.node(p["dparent"]), p["dst"].rpartition("/")[2]
        else:
            dparts = paths.split(p["dst"])
            parent, name = self.stat(paths.join(dparts[:-1])), dparts[-1]
        old = looked.old if looked else self.cat.child(parent.id, name)
        replaced: dict[int, tuple[int, int]] = {}
        if old is not None and old.id != node.id:
            for r in self.cat.replicas(self.cat.resolve(old).id):
                replaced[r.drive_id] = (r.size, r.mtime_ns)
                d = drives.get(r.drive_id)
                if d is None or d.row.state != "active" or r.drive_id in failed:
                    self._owe_removal(r.drive_id, p["dst"], r.size, r.mtime_ns, p)
            self.cat.remove_name(old)
        for key in p["moves"]:
            d = drives.get(int(key))
            if d is None or d.row.state != "active" or int(key) in failed:
                self.cat.owe(int(key), {"op": "rename", "src": p["src"], "dst": p["dst"], "kind": p["kind"]})
        was_folder = node.parent_id == ROOT_ID
        self.cat.move_node(node.id, parent.id, name, node.is_dir)
        if parent.id == ROOT_ID:
            if was_folder:
                self.cat.rename_folder(node.id, paths.fold(name))
            else:  # a subfolder became a top-level folder: it keeps the copies it had
                self.cat.add_folder(node.id, paths.fold(name), int(p.get("copies", 1)))
        return replaced

    def _journaled_node(self, p: dict, key: str) -> Node | None:
        """The node a journal entry is about: by its id where the entry has one (the mount's
        entries do: no walk down the tree), if it is still at the entry's path."""
        if "id" in p:
            node = self.cat.node_or_none(p["id"])
            return node if node is not None and self.cat.path_of(node.id) == p[key] else None
        return self.lookup(p[key])

    def _run(self, op: str, payload: dict, group: bool = False, looked: Looked | None = None) -> list[int] | None:
        """Journal `op`, do its drive steps, record it: the crash-safe path for every change.
        With `group` (a file's rename or delete through the mount, see `group_steps`), the
        steps may wait for the commit of a group of such changes. `looked`: what the mount
        looked up for it (see `Looked`)."""
        if self.live and op in ("rename", "drop"):
            if group:  # (`LiveOps._groups`: only while grouping)
                self._run_grouped(op, payload, looked)
            else:
                self._run_recorded_first(op, payload, looked)
            return None
        with self.cat.transaction():
            entry = self.cat.journal_add(op, payload)
        self._changed = True
        return self._finish(entry, op, payload, {d.id: d for d in self.drives()})

    def _run_recorded_first(self, op: str, payload: dict, looked: Looked | None = None) -> None:
        """The mount's renames and deletes, in one commit instead of two (a commit costs more
        than the rest of the change): the journal row goes in with the catalog's new state,
        then the drive steps run. The row stays until the next commit removes it, so a crash
        in between redoes the drive steps (`_finish`; they are idempotent, and its records see
        the change made). A drive that fails its step is owed it, as in `_finish`."""
        q = self._record_first(op, payload, {d.id: d for d in self.drives()}, looked=looked)
        try:
            self._take_steps(q)
        finally:  # never replayed later, after other changes
            self.cat.journal_done_later(q.entry)

    def _record_first(self, op: str, payload: dict, drives: dict[int, Drive], grouped: bool = False,
                      looked: Looked | None = None) -> _Queued:
        """The journal row and the catalog's new state of a rename or drop, in one transaction
        (`grouped`: left open for those that follow); its drive steps are still to take."""
        payload = {**payload, "recorded": True}
        with self.cat.transaction(grouped=grouped):
            entry = self.cat.journal_add(op, payload)
            if looked is not None and looked.undone != self.groups_undone:
                looked = None  # a group was undone since it was looked at: what it saw may be gone
            # The copies it removes: what a drive that fails to remove one is owed.
            record = self._record_drop if op == "drop" else self._record_rename
            gone = record(payload, drives, set(), looked)
        self._changed = True
        return _Queued(entry, op, payload, drives, gone)

    def _take_steps(self, q: _Queued) -> None:
        """The drive steps of a rename or drop recorded first; a drive that fails one is owed it."""
        failed = self._apply_drop(q.payload, q.drives) if q.op == "drop" else self._apply_rename(q.payload, q.drives)
        if failed:
            with self.cat.transaction():
                self._owe_failed(q.op, q.payload, q.drives, failed, q.gone)

    # -- the mount's renames and deletes, a group to a commit --------------------------------

    def group_steps(self) -> None:
        """Serve a mount with renames and deletes of files grouped: each is recorded, with its
        journal row, in a transaction left open for those that follow, and its drive steps
        run once the group is committed (`settle_steps`). The mount settles them within a few
        milliseconds, and any change, look at the drives or fsync first.

        A commit costs more than the rest of such a change, so a group of them costs about
        what one did. A crash undoes a group not yet committed as a whole, with nothing done
        on the drives; one committed has journal rows that redo its steps (`_finish`), as for
        any change recorded first. So a crash loses at most the last few milliseconds of
        renames and deletes (as ext4 loses seconds), never half of one.

        New files and close records join the group too (`create_file`, `record_file`); a new
        file's copies, made before the commit, are noted until it (see pool/newfiles.py), and
        taken in after a crash."""
        self.grouping = True
        self._new_files = NewFiles(self.state_dir)
        self.cat.settle_group = self.settle_steps  # before any other transaction: its commit may rely on them
        self.cat.group_ended = self._group_ended
        self.cat.steps_waiting = lambda: bool(self._queued)

    def _group_ended(self, committed: bool) -> None:
        """The open group was committed (its steps may run now) or undone (they never may)."""
        fresh = [q for q in self._queued if not q.committed]
        records, self._group_records = self._group_records, []
        creates, self._group_creates = self._group_creates, []
        self.group_touched = set()
        if committed:
            for q in fresh:
                q.committed = True
            if self._new_files is not None:
                self._new_files.committed()
            return
        self.groups_undone += 1
        if fresh or records or creates:
            log.error("could not record the last %d rename(s) and delete(s), %d close(s) and %d new file(s): "
                      "they are undone", len(fresh), len(records), len(creates))
        self._queued = [q for q in self._queued if q.committed]
        self._queued_paths = {p for q in self._queued for p in _step_paths(q.payload)}
        self.creates_undone(creates)  # (first: the close records made again are of those files too)
        self.records_undone(records)

    def _drives_for(self, *paths: str, commit: bool = True) -> dict[int, Drive]:
        """The drives, to act on these paths of files: steps waiting on other paths may go on
        waiting (they change nothing here); those on these paths run first. With `commit`,
        the open group is committed first: what the lock-free looks read (`Glance`) is then
        what the pool shows, should the drives keep this request waiting."""
        if self._queued_paths.intersection(paths):
            self.settle_steps()
        elif commit:
            self.cat.commit_group()
        return {d.id: d for d in self._drive_snapshot()}

    def _run_grouped(self, op: str, payload: dict, looked: Looked | None = None) -> None:
        touched = _step_paths(payload)
        # (Recorded before `_queued` is looked at: its transaction may end a group, and replace it.)
        q = self._record_first(op, payload, self._drives_for(*touched, commit=False), grouped=True, looked=looked)
        self._queued.append(q)
        self._queued_paths |= touched
        self._group_waits()
        if len(self._queued) >= GROUP_MAX:
            self.settle_steps()

    def _group_waits(self) -> None:
        if not self.group_waiting.is_set():
            self.group_waiting.set()

    def settle_steps(self) -> None:
        """Commit the group of renames and deletes and run their drive steps, in order. If the
        commit fails, the group is undone (the catalog as before it, and the drives untouched;
        steps of a group committed before still run)."""
        try:
            if self._queued or self.cat.group_open:
                self.cat.commit_group()  # (`_group_ended` keeps only the steps that may run)
                queued, self._queued = self._queued, []
                self._queued_paths = set()
                self._run_steps(queued)
        finally:  # (last: an fsync seeing it set waits for this; another transaction may have committed)
            if self.group_waiting.is_set() and not self._queued and not self.cat.group_open:
                self.group_waiting.clear()

    def _run_steps(self, queued: list[_Queued]) -> None:
        for i, q in enumerate(queued):
            try:
                self._take_steps(q)
            except BaseException:
                # Committed: the next settle runs them, this one again (its steps are idempotent).
                self._queued[:0] = queued[i:]
                self._queued_paths |= {p for q in queued[i:] for p in _step_paths(q.payload)}
                raise
            self.cat.journal_done_later(q.entry)  # (never replayed later, after other changes)

    def _owe_failed(self, op: str, p: dict, drives: dict[int, Drive], failed: set[int],
                    gone: dict[int, tuple[int, int]] | None = None) -> None:
        """Drives that failed the steps of a rename or drop already recorded: each is owed its
        step. A copy left behind is removed by its recorded size and time (`gone`), or, when
        the records went with the change (a replay), by what is there now."""
        for drive_id in failed:
            if op == "rename" and drive_id in map(int, p["moves"]):
                self._owe_hand_over(drive_id, p["dst"], p)  # the own name it replaces, if it is one
                self.cat.owe(drive_id, {"op": "rename", "src": p["src"], "dst": p["dst"], "kind": p["kind"]})
                continue
            path = p["path"] if op == "drop" else p["dst"]
            known = (gone or {}).get(drive_id)
            if known is None:
                try:
                    st = drives[drive_id].lstat(path)
                except FileNotFoundError:
                    continue  # not there after all
                except OSError as e:
                    log.error("could not look at %s on %s (%s); if it is still there, `homepool check` shows it",
                              path, drives[drive_id].name, e)
                    continue
                known = (st.st_size, st.st_mtime_ns)
            self._owe_removal(drive_id, path, known[0], known[1], p)

    def _taken_since(self, op: str, p: dict) -> bool:
        """A rename or drop recorded before its drive steps, replayed: is something else at the
        path those steps would act on now? (The next commit removes such a row, so this does
        not happen; if it did, the drives' file there would be that newer entry's.) A drop of
        some copies of a file that stays (`reconcile`) finds that file there: taken only if
        it is another one now, or has a copy on one of those drives again."""
        found = self.lookup(p["src"] if op == "rename" else p["path"])
        if found is None or op != "drop" or p.get("node") or "id" not in p:
            return found is not None
        file = self.cat.resolve(found)
        return file.id != p["id"] or any(r.drive_id in map(int, p["drives"]) for r in self.cat.replicas(file.id))

    def _finish(self, entry: int, op: str, payload: dict, drives: dict[int, Drive]) -> list[int] | None:
        done: list[list[int]] = []
        failed: set[int] = set()
        kept = None
        owed: list[tuple[int, dict]] = []
        owed_rmdir: list[int] = []
        if payload.get("recorded") and self._taken_since(op, payload):
            # Neither its drive steps nor its records (found by path) may touch the newer entry.
            log.warning("left an interrupted %s as it was: something newer is at its path", describe(op, payload))
            with self.cat.transaction():
                self.cat.journal_done(entry)
            return None
        if op == "write":
            made: set[tuple[int, str]] = set()
            done = [self._apply_write(f, drives, made) for f in payload["files"]]
        elif op == "drop":
            failed = self._apply_drop(payload, drives)
        elif op == "rename":
            failed = self._apply_rename(payload, drives)
        elif op == "live":
            kept = self._apply_live(payload, drives)
        elif op == "link":
            owed = self._apply_link(payload, drives)
        elif op == "attrs":
            self._apply_attrs(payload)
        elif op == "mkdir":
            self._apply_mkdir(payload, drives)
        elif op == "rmdir":
            owed_rmdir = self._apply_rmdir(payload, drives)
        elif op == "xattr":
            self._apply_xattr(payload)
        else:
            raise ValueError(f"unknown journal op {op!r}")
        self._sync_drives(drives, payload)
        with self.cat.transaction():
            if op == "write":
                for f, targets in zip(payload["files"], done, strict=True):
                    self._record_write(f, targets, None, drives)
            elif op == "drop":
                self._record_drop(payload, drives, failed)
            elif op == "live":
                self._record_live(payload, kept)
            elif op == "rename":
                self._record_rename(payload, drives, failed)
            elif op == "link":
                self._record_link(owed)
            elif op == "rmdir":
                self._owe_rmdir(owed_rmdir, payload["path"])
            self.cat.journal_done(entry)
        return done[0] if op == "write" and len(done) == 1 else None

    def _sync_drives(self, drives: dict[int, Drive], payload: dict) -> None:
        if self.live:
            return  # through the mount: as durable as a local filesystem (see pool/live.py)
        keys = set(map(str, payload.get("drives", []))) | set(map(str, payload.get("moves", []))) \
            | set(map(str, payload.get("unlink_dst", [])))
        for f in payload.get("files", []):
            keys |= set(f["targets"]) | set(map(str, f["drop"]))
        for key in keys:
            d = drives.get(int(key))
            if d is not None and d.row.state == "active":
                try:
                    d.syncfs()
                except OSError as e:
                    log.error("could not flush %s: %s", d.name, e)

    def owed_paths(self, drive_id: int) -> set[str]:
        """Paths on a drive that a step still owed to it will remove or move."""
        return {step.get("path") or step["src"] for _, step in self.cat.owed(drive_id)
                if step["op"] not in ("link", "newer")}

    def settle_owed(self, drive: Drive) -> list[str]:
        """Apply the steps a drive missed while it was away (deletes, renames, old copies to
        remove), before anything else looks at it. An old copy is removed only if the file
        there is still exactly that copy; anything else is left for `check`."""
        out = []
        for owed_id, step in self.cat.owed(drive.id):
            try:
                if step["op"] == "unlink" and "heir" in step:  # a file's own name, once the heir has it
                    if self._hand_over(drive, step["path"], {"heir": step["heir"], "heir_drives": [drive.id]}):
                        drive.do(os.unlink, step["path"])
                        out.append(f"removed {step['path']} from {drive.name} (now named {step['heir']})")
                elif step["op"] == "unlink":
                    node = self.lookup(step["path"])
                    recorded = node is not None and any(r.drive_id == drive.id
                                                        for r in self.cat.replicas(self.cat.resolve(node).id))
                    st = drive.do(os.stat, step["path"])
                    # (`dropped`: a copy that failed mid-write, its drive pulled out; or one of a
                    # file deleted, when its drive was away at the replay: sizes unknown)
                    if not recorded and (step.get("dropped") or (st.st_size, st.st_mtime_ns) == (step["size"],
                                                                                                  step["mtime_ns"])):
                        drive.do(os.unlink, step["path"])
                        out.append(f"removed {step['path']} from {drive.name} (deleted while it was away)")
                elif step["op"] == "link":
                    # Only while `dst` still names that file (it may have gone, or been reused).
                    name = self.lookup(step["dst"])
                    if name is not None and self.cat.resolve(name).id == step["node"] \
                            and not drive.lexists(step["dst"]):
                        link_name(drive, step["src"], step["dst"])
                        out.append(f"linked {step['dst']} to {step['src']} on {drive.name} (while it was away)")
                elif step["op"] == "newer":
                    if (line := self.take_newer(drive, step)) is not None:
                        out.append(line)
                elif step["op"] == "rmdir":
                    if drive.rmdir(step["path"]):
                        out.append(f"removed folder {step['path']} from {drive.name} (deleted while it was away)")
                elif step["op"] == "rename":
                    if step.get("kind", "file") == "file" and drive.exists(step["src"]) and drive.exists(step["dst"]):
                        # Something is at the destination there (maybe edited elsewhere): keep it.
                        aside = conflict_name(step["dst"], drive.label, drive.lexists)
                        drive.rename(step["dst"], aside)
                        out.append(f"kept {step['dst']} on {drive.name} aside as {aside}")
                    rename_on(drive, step["src"], step["dst"], step.get("kind", "file"))
                    out.append(f"renamed {step['src']} to {step['dst']} on {drive.name} (while it was away)")
            except FileNotFoundError:
                pass
            except OSError as e:
                log.error("could not catch %s up (%s of %s): %s", drive.name, step["op"],
                          step.get("path") or step.get("src"), e)
                continue
            with self.cat.transaction():
                self.cat.owed_done(owed_id)
            self._changed = True
        if out:
            try:
                drive.syncfs()
            except OSError as e:
                log.error("could not flush %s: %s", drive.name, e)
        return out

    def take_in_new_files(self) -> list[str]:
        """The copies of new files a mount made and was killed before committing (see
        pool/newfiles.py): taken in as files found on a drive (`register_file`), then given
        the copies their folder wants (`reconcile`). The longest copy is the file: a copy that
        holds the start of it only (a crash between two copies' writes) is made again from it;
        one that differs otherwise is kept aside under a conflict name. Returns a line for each."""
        notes = newfiles.read(self.state_dir)
        if not notes:
            return []
        committed = self.cat.committed_group()
        drives = self.drives_by_id()
        out: list[str] = []
        left: list[newfiles.Note] = []
        for note in notes:
            if note.group is not None and note.group <= committed:
                continue  # committed: the catalog has it, and the journal what became of it since
            present = [drives[i] for i in note.drives if i in drives and drives[i].row.state == "active"]
            away = [i for i in note.drives if i in drives and drives[i].row.state != "active"]
            if note.stale:
                self._take_in_stale(note.path, present, out)
                stale = True
            else:  # once taken in here, its copy on a drive away is an old mirror
                stale = self._take_in_new(note.path, present, out)
            left += [newfiles.Note(note.path, [i], None, stale) for i in away]  # (kept until it is back)
        newfiles.done(self.state_dir, left)
        return out

    def _take_in_new(self, path: str, present: list[Drive], out: list[str]) -> bool:
        """`take_in_new_files` for one new file's copies on `present` drives: whether any was."""
        found: list[tuple[int, Drive]] = []
        for d in present:
            try:
                if d.lexists(path) and not self._holds_copy(d, path, st := d.lstat(path)):
                    found.append((st.st_size, d))
            except OSError as e:
                out.append(f"left {path} on {d.name} alone: {e}")
        found.sort(key=lambda c: -c[0])  # (stable: the first drive among equals)
        taken: list[str] = []
        for i, (size, d) in enumerate(found):
            try:
                if i and path in taken and size < found[0][0] and _starts(found[0][1], d, path):
                    d.do(os.unlink, path)
                    out.append(f"removed the copy of new file {path} on {d.name}: the start of the one on "
                               f"{found[0][1].name} (it is made again from that)")
                    continue
                out.append(f"took in a new file a stopped mount had not recorded: "
                           f"{self.register_file(d, path, recorded=taken)}")
            except (OSError, HomepoolError) as e:
                out.append(f"left {path} on {d.name} alone: {e}")
        self._reconcile_paths(taken)
        return bool(taken)

    def _take_in_stale(self, path: str, present: list[Drive], out: list[str]) -> None:
        """A copy of a new file taken in from another drive while this one was away: recorded
        if it is the pool's file at that path (the same content), else removed (the file was
        renamed, deleted or written since; the pool's copies are made again from the others)."""
        for d in present:
            try:
                if not d.lexists(path) or self._holds_copy(d, path, d.lstat(path)):
                    continue
                node = self.lookup(path)
                if node is not None and node.is_file and d.hash(path) == node.hash:
                    out.append(self.register_file(d, path))
                else:
                    d.do(os.unlink, path)
                    out.append(f"removed an old copy of new file {path} on {d.name} (taken in from another drive)")
                self._reconcile_paths([path])
            except (OSError, HomepoolError) as e:
                out.append(f"left {path} on {d.name} alone: {e}")

    def _reconcile_paths(self, recorded: list[str]) -> None:
        for path in dict.fromkeys(recorded):
            node = self.lookup(path)
            if node is not None and node.is_file:
                self.reconcile(node)  # the copies its folder wants

    def finish_journal(self) -> list[str]:
        """Complete every operation a crash interrupted. Returns a line for each."""
        drives = {d.id: d for d in self.drives()}
        out = []
        # A file that was open, or given a new name, takes its copies from where the catalog
        # says it is: a rename recorded before its drive steps (`_run_recorded_first`) is made
        # on the drives first.
        written = []
        for e in sorted(self.cat.journal(), key=lambda e: (e.op == "live", e.op == "link", e.id)):
            self._finish(e.id, e.op, e.payload, drives)
            self._changed = True
            out.append(f"finished an interrupted {describe(e.op, e.payload)}")
            if e.op == "live" and e.payload["node"] not in written:
                written.append(e.payload["node"])
        # The copies dropped are made again once every writer's row is finished (a file open
        # twice has two: the second would drop a copy made after the first).
        for node_id in written:
            if (node := self.cat.node_or_none(node_id)) is not None:
                self.reconcile(node)
        return out

    def copies_pending(self, node_id: int) -> bool:
        """Whether a file's copies are about to change: it is open in the mount (it gets them at
        its release), or a new copy of it is being made."""
        return bool(self._open.get(node_id)) or node_id in self._reconcile_at_release \
            or node_id in self._reconcile_soon or node_id in self._copying.values()

    def journal_tmp_names(self) -> dict[int, set[str]]:
        """Temp files that unfinished operations still need, by drive (and new copies being
        made: their journal row comes once the data is there)."""
        out: dict[int, set[str]] = {}
        for drive_id, name in self._copying:
            out.setdefault(drive_id, set()).add(name)
        for e in self.cat.journal():
            for f in e.payload.get("files", []):
                for key, name in f["targets"].items():
                    out.setdefault(int(key), set()).add(name)
        return out

    # -- reading -----------------------------------------------------------------------------

    def open_read(self, path: str) -> BinaryIO:
        """Open the file at `path` for reading from a good copy, falling over to the next."""
        node = self.cat.resolve(self.stat(path))
        if node.is_dir:
            raise IsADirectory(path=paths.normalize(path))
        fd, _ = self.open_copy(node.id)
        return os.fdopen(fd, "rb")

    # -- by node id (the FUSE adapter's view: node ids are its inode numbers) ----------------

    def child(self, parent_id: int, name: str) -> Node | None:
        return named(self.cat, parent_id, name)

    def entries(self, node_id: int, after: int, upto: int) -> dict[int, Entry]:
        """`Catalog.entries`, with files being written through the mount as they are now."""
        out = self.cat.entries(node_id, after, upto)
        for place, e in out.items():
            if e.id in self._open or e.id in self._dir_times:
                n = self.node(e.id)
                out[place] = e._replace(size=n.size, mode=n.mode, uid=n.uid, gid=n.gid, mtime_ns=n.mtime_ns,
                                        ctime_ns=n.ctime_ns, atime_ns=n.atime_ns)
        return out

    def open_copy(self, node_id: int, exclude: frozenset[int] = frozenset(),
                  busy: dict[int, int] | None = None) -> tuple[int, Drive]:
        """An O_RDONLY file descriptor on a good copy of file `node_id` (not on `exclude`d
        drives), and its drive: the least `busy` one (readers per drive), so concurrent readers
        spread over the copies. A copy that fails to open is marked bad if it is at fault."""
        node = self.node(node_id)
        path = self.path_of(node_id)
        drives = self._drives_for(path)  # (not held up by steps of other files, on a drive that hangs, say)
        tried = []
        replicas = sorted(self.cat.replicas(node_id), key=lambda r: (busy or {}).get(r.drive_id, 0))
        for r in replicas:
            d = drives.get(r.drive_id)
            if r.state != "ok" or d is None or d.row.state != "active" or d.id in exclude:
                continue
            tried.append(d.label)
            try:
                return d.open(path, os.O_RDONLY), d
            except OSError as e:
                self.copy_failed(node.id, d, e)
        raise NoReadableCopy(path=path, tried=", ".join(tried) or "no drive holds a copy")

    def copy_failed(self, node_id: int, drive: Drive, err: OSError) -> None:
        """A copy could not be read: log it, and mark it bad if the copy itself is at fault."""
        log.error("copy of %s on %s is unreadable (%s); using another copy", self.path_of(node_id), drive.name, err)
        if copy_is_at_fault(err):
            self.mark_bad(node_id, drive.id)

    def copy_xattrs(self, node_id: int) -> dict[bytes, bytes]:
        """The extended attributes of a file's copy (or of a folder, symlink or special file,
        which every drive has), read from the first present drive that has it. Copies carry
        the same ones (written to all)."""
        if self.unlinked(node_id):  # open with no name left: through a descriptor on its copy
            fds = self.open_fds(node_id)
            if not fds:
                raise OSError(errno.ENOENT, "no open copy left")
            return {os.fsencode(n): os.getxattr(fds[0], n) for n in os.listxattr(fds[0])}
        node = self.node(node_id)
        path = self.path_of(node_id)
        drives = self.drives(present_only=True)
        holders = {r.drive_id for r in self.cat.replicas(node_id) if r.state == "ok"} if node.is_file else None
        for d in drives:
            if holders is not None and d.id not in holders:
                continue
            try:
                return d.do(xattrs_of, path)
            except FileNotFoundError:
                continue
        return {}

    def space(self, used: dict[int, int] | None = None) -> tuple[int, int]:
        """(size, free) of the pool: the sum over present drives, as the pool may use them
        (`used`: bytes stored per drive, if already known)."""
        used = self.cat.bytes_by_drive() if used is None else used
        size = free = 0
        for d in self.drives(present_only=True):
            s, f = d.capacity(used.get(d.id, 0))
            size += s
            free += f
        return size, free

    def read_bytes(self, path: str) -> bytes:
        with self.open_read(path) as f:
            return f.read()

    def mark_bad(self, node_id: int, drive_id: int) -> None:
        with self.cat.transaction():
            self.cat.set_replica_state(node_id, drive_id, "bad")
        self._changed = True

    # -- rename and delete -------------------------------------------------------------------

    def rename(self, src: str, dst: str) -> None:
        """Move a file or folder within the pool, replacing a file (or empty dir) at `dst`."""
        sparts, dparts = paths.split(src), paths.split(dst)
        if not sparts or not dparts:
            raise NotFound(path="/")
        node = self.stat(src)
        dparent = self.stat(paths.join(dparts[:-1]))
        if not dparent.is_dir:
            raise NotADir(path=paths.join(dparts[:-1]))
        ancestor: Node | None = dparent
        while ancestor is not None:  # compared by identity: spelling and case do not matter
            if ancestor.id == node.id:
                raise AlreadyExists(path=f"{paths.join(dparts)} (a folder cannot move into itself)")
            ancestor = self.cat.node(ancestor.parent_id) if ancestor.parent_id is not None else None
        if dparent.id == ROOT_ID:
            if not node.is_dir:
                raise NotInFolder(path=paths.join(dparts))
            paths.check_folder_name(dparts[-1])
            clash = self.cat.folder_by_fold(paths.fold(dparts[-1]))
            if clash is not None and clash[0] != node.id:
                raise FolderExists(existing=self.cat.node(clash[0]).name, clash="")
        elif node.parent_id == ROOT_ID:
            raise NotInFolder(path=f"{paths.join(sparts)} is a top-level folder; it")
        sfull, dfull = self.path_of(node.id), paths.join([*paths.split(self.path_of(dparent.id)), dparts[-1]])
        file = self.cat.resolve(node)  # what the name names (a hard link names another node)
        old = self.cat.child(dparent.id, dparts[-1])
        if old is not None and self.cat.resolve(old).id == file.id:
            return  # two names of one file (or one name): nothing to do, as rename(2)
        if self._parts_names(node, file, dfull):
            raise LinksAcrossFolders(path=sfull)
        heir = self.heir(old, self.cat.resolve(old)) if old is not None else {}
        if old is not None:
            old = self.cat.resolve(old)
            if old.is_dir != node.is_dir:
                raise (IsADirectory if old.is_dir else NotADir)(path=dfull)
            if old.is_dir and self.cat.has_children(old.id):
                raise DirectoryNotEmpty(path=dfull)
        drives = self.drives()
        present = [d for d in drives if d.row.state == "active"]
        if node.is_dir:
            # Every drive may hold the directory; missing ones are caught up when they return.
            moves = [d.id for d in drives if d.row.state != "active" or d.is_dir(sfull)]
            unlink_dst: list[int] = []
        elif not file.is_file:  # a symlink or special file: on every drive, as a directory
            moves = [d.id for d in drives if d.row.state != "active" or d.lexists(sfull)]
            unlink_dst = []
        else:
            moves = [r.drive_id for r in self.cat.replicas(file.id)]
            had = [r.drive_id for r in self.cat.replicas(old.id)] if old else []
            unlink_dst = [d for d in had if d not in moves]
        for d in present:  # something the catalog does not know in the way: refuse up front
            if d.id not in moves or not d.lexists(dfull):
                continue
            where = f"{dfull} (on drive {d.label!r}; `homepool check` shows it)"
            if node.is_dir and (not d.is_dir(dfull) or d.listdir(dfull)):
                raise DirectoryNotEmpty(path=where)
            if not node.is_dir and d.is_dir(dfull):
                raise IsADirectory(path=where)
        before = self._folder_of(node.id) if node.parent_id != ROOT_ID else node.id
        self._run("rename", {"src": sfull, "dst": dfull, "kind": file.kind, "moves": moves, "unlink_dst": unlink_dst,
                             **heir,
                             "copies": self.copies_wanted(node.id) if node.parent_id != ROOT_ID else 0})
        if before != self._folder_of(node.id):  # moved to another folder: its copies may differ
            files = self.cat.subtree_files(node.id)
            if self.live:  # the mount's own thread makes them (`copy_moved_files`), not the rename
                self._reconcile_soon.update(f.id for f in files)
            else:
                for f in files:
                    self.reconcile(f)

    def delete(self, path: str) -> None:
        """Delete a file, symlink or special file, or an empty folder, from the pool and every drive."""
        node = self.stat(path)
        full = self.path_of(node.id)
        if not full:
            raise NotFound(path="/")
        if node.is_dir:
            if self.cat.has_children(node.id):
                raise DirectoryNotEmpty(path=full)
            # Recorded first, with a journal row: killed before every drive has it, the next
            # opening removes it there (`_apply_rmdir`), as a mkdir is made (`_make_dir`).
            with self.cat.transaction():
                self.cat.delete_node(node.id)
                entry = self.cat.journal_add("rmdir", {"path": full, "id": node.id})
            self._changed = True
            later = self._rmdir_on(self.drives(), full)
            if self.live and not later:
                self.cat.journal_done_later(entry)  # (the mount's next commit)
            else:
                with self.cat.transaction():
                    self._owe_rmdir(later, full)
                    self.cat.journal_done(entry)
            return
        file = self.cat.resolve(node)
        if not file.is_file:  # a symlink or special file: on every drive
            drives = [d.id for d in self.drives() if d.row.state == "active"]
        else:
            drives = [r.drive_id for r in self.cat.replicas(file.id)]
        self._run("drop", {"path": full, "drives": drives, "node": True, **self.heir(node, file)})

    # -- copies ------------------------------------------------------------------------------

    def reconcile(self, node: Node) -> int:
        """Add or remove copies of a file until it has what its folder wants (or as many as
        the drives allow). Returns the number of good copies it has afterwards.

        Copies are removed (extra ones, or bad ones) only after the copies that stay were seen
        on their drives as recorded: the catalog may be stale, the drives are the truth."""
        wanted = self.copies_wanted(node.id)
        drives = self.drives()
        active = {d.id: d for d in drives if d.row.state == "active"}
        path = self.path_of(node.id)

        def good() -> list[int]:
            return [r.drive_id for r in self.cat.replicas(node.id) if r.state == "ok" and r.drive_id in active]

        def verified() -> list[int]:
            out = []
            for r in self.cat.replicas(node.id):
                if r.state != "ok" or r.drive_id not in active:
                    continue
                try:
                    st = active[r.drive_id].do(os.stat, path)
                except FileNotFoundError:
                    log.error("copy of %s on %s is gone", path, active[r.drive_id].name)
                    with self.cat.transaction():
                        self.cat.drop_replica(node.id, r.drive_id)
                    self._changed = True
                    continue
                if (st.st_size, st.st_mtime_ns) == (r.size, r.mtime_ns):
                    out.append(r.drive_id)
            return out

        def intact(drive_id: int) -> bool:
            try:
                return active[drive_id].hash(path) == node.hash
            except OSError:
                return False

        bad = [r.drive_id for r in self.cat.replicas(node.id) if r.state == "bad" and r.drive_id in active]
        if bad:
            # A copy marked bad after a passing hiccup may be fine: keep it if it hashes right.
            # The rest go only when a good copy has proved itself by its hash.
            for d in [d for d in bad if intact(d)]:
                with self.cat.transaction():
                    self.cat.set_replica_state(node.id, d, "ok")
                self._changed = True
            bad = [d for d in bad if d not in good()]
            if bad and any(intact(d) for d in verified()):
                self._run("drop", {"path": path, "drives": bad, "links": self.other_names(node.id), "id": node.id})
        have = good()
        if len(have) > wanted:
            sure = verified()
            if len(sure) >= wanted:
                # Keep verified copies, on the drives with the most room; drop only other
                # verified ones. A copy whose size or time changed is left for `check`, which
                # keeps it aside: it may be someone's edit.
                rooms = {c.drive_id: c.room for c in self._candidates(drives)}
                keep = sorted(sure, key=lambda d: -rooms.get(d, 0))[:wanted]
                extra = [d for d in sure if d not in keep]
                if extra:
                    self._run("drop", {"path": path, "drives": extra, "links": self.other_names(node.id),
                                       "id": node.id})
            return len(good())
        while have and len(have) < wanted:
            holders = [r.drive_id for r in self.cat.replicas(node.id)]
            target = placement.choose(self.config.placement, self._candidates(drives), node.size, 1, exclude=holders)
            if not target:
                break
            self._add_copy(self.cat.node(node.id), path, [active[d] for d in have], active[target[0]],
                           still_wanted=lambda: len(good()) < self.copies_wanted(node.id))
            now = good()
            if len(now) <= len(have):  # the copy failed: do not spin on it
                break
            have = now
        return len(good())

    def _add_copy(self, node: Node, path: str, sources: list[Drive], target: Drive,
                  still_wanted: Callable[[], bool]) -> bool:
        """Copy a file from a good copy to `target`, verifying the content hash on the way.
        A source that cannot be read or does not match is marked bad and the next one tried;
        a failing target ends the attempt (the caller picks another drive next time). The
        copy is switched in only if `still_wanted()` then (its folder's copies may have been
        lowered while the data was copied without the mount's lock)."""
        for src_drive in sources:
            tmp = target.new_tmp()
            self._copying[(target.id, tmp.name)] = node.id  # not an orphan for `check` meanwhile
            try:
                source_error: OSError | None = None
                try:
                    with self.unlocked_io(), os.fdopen(src_drive.open(path, os.O_RDONLY), "rb") as src:
                        try:
                            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                        except OSError as e:
                            log.error("could not make a copy of %s on %s: %s", path, target.name, e)
                            return False
                        t = Target(target.id, fd)
                        try:
                            n, digest = copy_to(src, [t], node.size, fsync=False)  # raises for the source only
                            if t.error is None:
                                try:
                                    copy_xattrs(src.fileno(), fd, path, target.name)
                                    os.fchown(fd, node.uid, node.gid)  # before the mode: chown clears set-id bits
                                    os.fchmod(fd, node.mode & 0o7777)
                                    os.utime(fd, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns))
                                    os.fsync(fd)
                                except OSError as e:
                                    t.error = e
                        except OSError as e:
                            source_error = e
                        finally:
                            os.close(fd)
                except OSError as e:  # opening the source
                    source_error = e
                except BaseException:
                    with suppress(OSError):
                        tmp.unlink()
                    raise
                if source_error is not None or t.error is not None or n != node.size or digest != node.hash:
                    with suppress(OSError):
                        tmp.unlink()
                if self._changed_meanwhile(node, path):  # (which explains a source that read otherwise)
                    with suppress(OSError):
                        tmp.unlink()
                    log.info("%s changed while a copy of it was made; it gets its copy later", path)
                    if self._open.get(node.id):
                        self._reconcile_at_release.add(node.id)  # opened meanwhile: at its last close
                    elif self.live and self.cat.node_or_none(node.id) is not None:
                        self._reconcile_soon.add(node.id)  # (the mount's copy thread, a second later)
                    return False
                if source_error is not None:
                    log.error("copy of %s on %s is unreadable (%s)", path, src_drive.name, source_error)
                    if copy_is_at_fault(source_error):
                        self.mark_bad(node.id, src_drive.id)
                    continue
                if t.error is not None:
                    log.error("could not make a copy of %s on %s: %s", path, target.name, t.error)
                    return False
                if n != node.size or digest != node.hash:
                    log.error("copy of %s on %s does not match its checksum; not copying it", path, src_drive.name)
                    self.mark_bad(node.id, src_drive.id)
                    continue
                if not still_wanted():
                    with suppress(OSError):
                        tmp.unlink()
                    return False
                payload = {"path": path, "targets": {str(target.id): tmp.name}, "drop": [], "size": node.size,
                           "mode": node.mode, "mtime_ns": node.mtime_ns, "hash": node.hash,
                           "links": self.other_names(node.id)}
                done = self._run("write", {"files": [payload]})
                return bool(done)
            finally:
                self._copying.pop((target.id, tmp.name), None)
        return False

    def _changed_meanwhile(self, node: Node, path: str) -> bool:
        """Whether a file copied outside the mount's lock (`unlocked_io`) was changed (content,
        owner, mode, xattrs: anything that moves its ctime), moved, deleted or opened in the
        meantime: then its new copy is not switched in."""
        now = self.cat.node_or_none(node.id)
        seen = (node.size, node.mtime_ns, node.hash, node.mode, node.uid, node.gid, node.ctime_ns)
        return (now is None or (now.size, now.mtime_ns, now.hash, now.mode, now.uid, now.gid, now.ctime_ns) != seen
                or self.path_of(node.id) != path or bool(self._open.get(node.id)))

    # -- repairs (`check --repair` decides, these do) ---------------------------------------

    def give_up_owed(self, owed_id: int) -> None:
        with self.cat.transaction():
            self.cat.owed_done(owed_id)
        self._changed = True

    def orphan_temps(self, drives: list[Drive]) -> Iterator[tuple[Drive, str]]:
        """Temp files on these drives that no unfinished operation needs: what a process
        killed while it wrote them left (they were never in the pool)."""
        needed = self.journal_tmp_names()
        for d in drives:
            try:
                names = os.listdir(d.tmpdir)
            except FileNotFoundError:
                continue
            for name in sorted(names):
                if name not in needed.get(d.id, set()):
                    yield d, name

    def remove_orphan_temp(self, drive: Drive, name: str) -> None:
        """Delete a temp file no journal row needs (an interrupted write; never in the pool)."""
        with suppress(FileNotFoundError):
            os.unlink(drive.tmpdir / name)

    def remove_orphan_temps(self) -> list[str]:
        """At opening, under the lock (which every process that writes temp files holds), once
        the journal is finished: the temp files a killed process left go. A line per drive."""
        removed: Counter[str] = Counter()
        for d, name in list(self.orphan_temps(self.drives(present_only=True))):
            self.remove_orphan_temp(d, name)
            removed[d.name] += 1
        return [f"removed {n} unfinished temp file(s) on {name} (an interrupted copy)" for name, n in removed.items()]

    def forget_copy(self, node_id: int, drive_id: int) -> None:
        """The copy is gone from its drive: stop counting it (`reconcile` re-makes it)."""
        with self.cat.transaction():
            self.cat.drop_replica(node_id, drive_id)
        self._changed = True

    def restore_copy(self, node_id: int, drive_id: int) -> None:
        """A copy marked bad has proved intact (it hashes right): serve it again."""
        with self.cat.transaction():
            self.cat.set_replica_state(node_id, drive_id, "ok")
        self._changed = True

    def retime_copy(self, node: Node, drive: Drive, state: str) -> None:
        """A copy with the right content but another time: give it the file's time back."""
        path = self.path_of(node.id)
        drive.do(os.utime, path, ns=(node.mtime_ns, node.mtime_ns))
        with self.cat.transaction():
            self.cat.set_replica(node.id, drive.id, node.size, node.mtime_ns, node.hash, state)
        self._changed = True

    @staticmethod
    def give_owner(node: Node, drive: Drive, path: str) -> None:
        """A copy or folder on `drive` whose owner or mode was changed outside the pool: given
        the pool's back (the mode last: chown clears set-id bits)."""
        drive.do(os.lchown, path, node.uid, node.gid)
        if not stat_.S_ISLNK(node.mode):  # (chmod would follow a symlink: its own mode is always 0777)
            drive.do(os.chmod, path, node.mode & 0o7777)

    @staticmethod
    def give_xattrs(drive: Drive, path: str, shown: dict[bytes, bytes]) -> None:
        """A copy or folder on `drive` whose extended attributes differ from the ones the pool
        shows (`shown`, from the copy it reads them from): made the same."""
        have = kept_xattrs(drive, path)
        for name in have.keys() - shown.keys():
            drive.do(os.removexattr, path, name, follow_symlinks=False)
        for name, value in shown.items():
            if have.get(name) != value:
                drive.do(os.setxattr, path, name, value, follow_symlinks=False)

    def set_copy_aside(self, node: Node, drive: Drive) -> str:
        """A copy changed outside the pool while the pool has the right content elsewhere:
        keep the changed one as a file of its own, `name (conflict LABEL).ext`."""
        path = self.path_of(node.id)
        aside = conflict_name(path, drive.label, lambda q: self.lookup(q) is not None or drive.lexists(q))
        drive.rename(path, aside)
        unlink_names(drive, aside, self.other_names(node.id))  # hard links of the changed copy, kept aside
        drive.fsync_dir(aside.rpartition("/")[0])
        self.forget_copy(node.id, drive.id)
        self.register_file(drive, aside)
        return aside

    def set_link_count(self, node_id: int, links: int) -> None:
        """Correct the count of a node's other links (its names, or its subdirectories)."""
        with self.cat.transaction():
            self.cat.set_links(node_id, links)
        self._changed = True
        node = self.cat.node(node_id)
        self._news(node.parent_id, node.name, node_id)

    def _news(self, parent_id: int | None, name: str, node_id: int) -> None:
        """An entry a repair added or changed, for the kernel to forget while mounted."""
        if self.kernel_news is not None:
            self.kernel_news.append((parent_id, name, node_id))

    def relink(self, node: Node, name: str, drive: Drive) -> str | None:
        """Make the extra name `name` of `node` a hard link of its copy on `drive` again; a
        different file found there is kept aside (its name is returned)."""
        aside = link_name(drive, self.path_of(node.id), name)
        drive.fsync_dir(name.rpartition("/")[0])
        return aside

    def take_edited_copy(self, node: Node, drive: Drive) -> Node:
        """Every copy was changed outside the pool: this one's content becomes the file's, the
        others are marked bad (and re-made from it)."""
        path = self.path_of(node.id)
        st = drive.do(os.stat, path)
        digest = drive.hash(path)
        with self.cat.transaction():
            self.cat.update_file(node.id, st.st_size, st.st_mode, st.st_mtime_ns, digest)
            for r in self.cat.replicas(node.id):
                if r.drive_id != drive.id:
                    self.cat.set_replica_state(node.id, r.drive_id, "bad")
            self.cat.set_replica(node.id, drive.id, st.st_size, st.st_mtime_ns, digest)
        self._changed = True
        self._news(node.parent_id, node.name, node.id)  # new content: the kernel's size and data are stale
        return self.cat.node(node.id)

    # -- files that are on a drive but not in the catalog ------------------------------------

    def register_tree(self, drive: Drive, known: dict[str, tuple[int, int, str]] | None = None,
                      only_known: bool = False, inodes: dict[int, str] | None = None) -> list[str]:
        """Record every file under the drive's HomePool/ that the catalog does not know, as
        `drive add --adopt`, `check --repair` and `recover` need. `known` maps paths to a
        (size, mtime_ns, hash) believed right: those files are not read again, and with
        `only_known` only they are recorded (so `recover` can take the current versions first
        and put stale ones aside after). Hard links on the drive become extra names of one
        file (`inodes`: the path recorded for each inode, kept across calls). Returns a line
        for each thing it did."""
        out = []
        inodes = {} if inodes is None else inodes
        recorded = {self.path_of(r.node_id) for r in self.cat.replicas_on(drive.id)}
        owed = self.owed_paths(drive.id)  # on their way out: not to be taken in
        for path, kind in scan_tree(drive):
            if path in recorded or path in owed or any(path.startswith(o + "/") for o in owed):
                continue
            try:
                if kind != "file":
                    if not only_known and self.lookup(path) is None:
                        if kind == "dir":
                            self._register_dir(drive, self._canonical(path))
                        else:
                            out.append(self.register_entry(drive, path))
                    continue
                if (row := self.lookup(path)) is not None and row.is_link:
                    continue  # an extra name already (`check` sees that it is linked)
                st = drive.do(os.stat, path)
                first = inodes.get(st.st_ino) if st.st_nlink > 1 else None
                if first is not None and not only_known and self._add_name(drive, first, path):
                    out.append(f"recorded {path} on {drive.name} as another name of {first}")
                    continue
                hint = None
                if known is not None and path in known:
                    size, mtime_ns, digest = known[path]
                    hint = digest if (st.st_size, st.st_mtime_ns) == (size, mtime_ns) else None
                if only_known and hint is None:
                    continue
                out.append(self.register_file(drive, path, hint))
                if st.st_nlink > 1 and self._holds_copy(drive, path, st):
                    inodes.setdefault(st.st_ino, path)
            except HomepoolError as e:
                out.append(f"left {path} on {drive.name} alone: {e}")
        return out

    def _holds_copy(self, drive: Drive, path: str, st: os.stat_result) -> bool:
        """Whether the pool's file at `path` has its copy on `drive` in the file `st` (say, not
        kept aside because the pool has other content there, nor renamed since)."""
        node = self.lookup(path)
        try:
            return (node is not None and node.is_file and os.path.samestat(st, drive.lstat(path))
                    and any(r.drive_id == drive.id for r in self.cat.replicas(node.id)))
        except FileNotFoundError:
            return False

    def _add_name(self, drive: Drive, path: str, name: str) -> bool:
        """Record `name`, found on `drive` as a hard link of the file at `path`, as its extra
        name, if it can be one (a new name, in the same folder)."""
        parts = paths.split(name)
        node = self.lookup(path)
        if (node is None or not node.is_file or len(parts) < 2 or self.lookup(name) is not None
                or path.partition("/")[0] != name.partition("/")[0]):
            return False
        parent = self._register_dir(drive, paths.join(parts[:-1]))
        with self.cat.transaction():
            self.cat.add_link(node.id, parent.id, parts[-1], _now_ns())
        self._changed = True
        self._news(parent.id, parts[-1], node.id)
        return True

    def adopt_name(self, drive: Drive, path: str, inodes: dict[int, str]) -> str | None:
        """A file found on `drive` that is a hard link of a recorded copy in its folder (made
        behind the pool's back, with `ln` or `cp -al` on the drive): record it as that file's
        other name, linked on its other copies too, rather than as a file of its own (which
        would share that copy's data on this drive). None if it is no such link. `inodes`:
        the drive's recorded copies by inode, filled at the first call and again if what it
        found has changed since (the caller keeps it, and adds the files it records)."""
        st = drive.lstat(path)
        if st.st_nlink < 2 or not stat_.S_ISREG(st.st_mode):
            return None
        first = inodes.get(st.st_ino)
        stale = first is not None and not self._holds_copy(drive, first, st)  # renamed meanwhile, say
        if stale or (first is None and -1 not in inodes):
            inodes.clear()
            for r in self.cat.replicas_on(drive.id):
                recorded = self.path_of(r.node_id)
                with suppress(FileNotFoundError):
                    inodes[drive.lstat(recorded).st_ino] = recorded
            inodes[-1] = ""  # filled: a miss is a miss
            first = inodes.get(st.st_ino)
        if first is None or not self._add_name(drive, first, path):  # (a fresh map holds only recorded copies)
            return None
        node = self.cat.resolve(self.stat(first))
        for r in self.cat.replicas(node.id):
            d = self.drives_by_id().get(r.drive_id)
            if r.drive_id != drive.id and d is not None and d.row.state == "active":
                self.relink(node, path, d)
        return f"recorded {path} on {drive.name} as another name of {first}"

    def _canonical(self, path: str) -> str:
        """`path` with its folder spelt as the pool spells it (`photos/x` -> `Photos/x`)."""
        parts = paths.split(path)
        found = self.cat.folder_by_fold(paths.fold(parts[0])) if parts else None
        if found is None:
            return path
        return paths.join((self.cat.node(found[0]).name, *parts[1:]))

    def _register_dir(self, drive: Drive, path: str) -> Node:
        """The folders on the way to `path` (itself included) that the catalog lacks, recorded
        with the owner and mode they have on `drive`, where they were found."""
        parts = paths.split(path)
        node = self.cat.node(ROOT_ID)
        for i in range(1, len(parts) + 1):
            sub = paths.join(parts[:i])
            child = self.lookup(sub)
            if child is None:
                try:
                    st = drive.lstat(sub)
                    mode, uid, gid = st.st_mode & 0o7777, st.st_uid, st.st_gid
                except OSError:  # (not there as spelt: the pool's spelling of a folder above)
                    mode, uid, gid = 0o755, os.geteuid(), os.getegid()
                if i == 1:
                    child = self.add_folder(parts[0], DEFAULT_FOLDERS.get(parts[0], 1), mode, uid, gid)
                else:
                    with self.cat.transaction():
                        child = self.cat.node(self.cat.add_node(node.id, parts[i - 1], "dir", stat_.S_IFDIR | mode,
                                                                _now_ns(), uid=uid, gid=gid))
                    self._changed = True
                self._news(node.id, parts[i - 1], child.id)
            if not child.is_dir:
                raise NotADir(path=f"{sub} (a file in the pool, a folder on a drive)")
            node = child
        return node

    def register_file(self, drive: Drive, path: str, known_hash: str | None = None,
                      recorded: list[str] | None = None) -> str:
        """Record the plain file `path` found on `drive`. Never deletes or overwrites it: if the
        pool already has different content at that path, the file is renamed aside; if its
        folder is spelt differently from the pool's, it moves into the pool's spelling.
        `recorded` gets the pool path it was recorded at."""
        parts = paths.split(path)
        if len(parts) == 1:
            return f"left {path} on {drive.name} alone: files belong inside a folder"
        canonical = self._canonical(path)
        if canonical != path:
            self._register_dir(drive, canonical.rpartition("/")[0])  # NotADirectory if a file is in the way
            try:
                dest = self._move_on(drive, path, canonical)
            except OSError as e:
                return f"left {path} on {drive.name} alone: could not move it: {e}"
            return self.register_file(drive, dest, known_hash, recorded) + f" (moved from {path})"
        st = drive.lstat(path)
        if not stat_.S_ISREG(st.st_mode):  # a symlink would be followed out of the pool, a FIFO never read
            return f"left {path} on {drive.name} alone: it is not a regular file"
        parent = self._register_dir(drive, paths.join(parts[:-1]))
        digest = known_hash or drive.hash(path)
        node = self.cat.child(parent.id, parts[-1])
        if node is not None and not node.is_dir and node.hash == digest:
            with self.cat.transaction():
                self.cat.set_replica(node.id, drive.id, st.st_size, st.st_mtime_ns, digest)
            self._changed = True
            if recorded is not None:
                recorded.append(path)
            return f"recorded a copy of {path} on {drive.name}"
        if node is not None:
            taken = lambda p: self.lookup(p) is not None or drive.lexists(p)  # noqa: E731
            aside = conflict_name(path, drive.label, taken)
            drive.rename(path, aside)
            drive.fsync_dir(aside.rpartition("/")[0])
            self.register_file(drive, aside, digest, recorded)
            return f"{path} on {drive.name} differs from the pool's; kept it as {aside}"
        with self.cat.transaction():
            node_id = self.cat.add_node(parent.id, parts[-1], "file", st.st_mode, st.st_mtime_ns, st.st_size, digest,
                                        st.st_uid, st.st_gid)
            self.cat.set_replica(node_id, drive.id, st.st_size, st.st_mtime_ns, digest)
        self._changed = True
        self._news(parent.id, parts[-1], node_id)
        if recorded is not None:
            recorded.append(path)
        return f"added {path} from {drive.name}"


    def register_entry(self, drive: Drive, path: str) -> str:
        """Record the symlink or special file `path` found on `drive` (made there by hand, or
        left by a pool whose catalog was lost) as it is there, and make it on the other present
        drives, where every symlink and special file is. A symlink is never followed: its target
        is only text, read by programs through the mount."""
        parts = paths.split(path)
        if len(parts) == 1:
            return f"left {path} on {drive.name} alone: only folders belong at the top"
        canonical = self._canonical(path)
        if canonical != path or self.lookup(path) is not None:  # (the pool has another thing there)
            try:
                dest = self._move_on(drive, path, canonical)
            except OSError as e:
                return f"left {path} on {drive.name} alone: could not move it: {e}"
            return self.register_entry(drive, dest) + f" (moved from {path})"
        st = drive.lstat(path)
        target = drive.do(os.readlink, path) if stat_.S_ISLNK(st.st_mode) else None
        parent = self._register_dir(drive, paths.join(parts[:-1]))
        node = self._add_entry(parent.id, parts[-1], path, st.st_mode, st.st_mtime_ns, st.st_uid, st.st_gid, target,
                               st.st_rdev, found_on=drive)
        self._news(parent.id, parts[-1], node.id)
        return f"added {path} ({'a symlink' if target is not None else 'a special file'}) from {drive.name}"

    def _move_on(self, drive: Drive, path: str, canonical: str) -> str:
        """Move what was found at `path` on `drive` to `canonical` (its folder as the pool spells
        it), or, if the pool or the drive has something there, beside it under a conflict name;
        returns where it went."""
        taken = lambda p: self.lookup(p) is not None or drive.lexists(p)  # noqa: E731
        dest = conflict_name(canonical, drive.label, taken) if taken(canonical) else canonical
        drive.makedirs(dest.rpartition("/")[0])
        drive.rename(path, dest)
        drive.fsync_dir(dest.rpartition("/")[0])
        return dest

    @classmethod
    def remake_entry(cls, node: Node, drive: Drive, path: str) -> str | None:
        """Symlink or special file `node` made again at `path` on `drive` (the same one there
        already only gets its owner and mode); something else there is kept aside (returns its
        new name), never deleted."""
        try:
            st: os.stat_result | None = drive.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and same_entry(drive, path, st, node):
            cls.give_owner(node, drive, path)
            return None
        aside = keep_aside(drive, path) if st is not None else None
        make_entry(drive, path, node.mode, node.uid, node.gid, node.target, node.rdev)
        return aside


def same_entry(d: Drive, path: str, st: os.stat_result, node: Node) -> bool:
    """Whether what lstat found at `path` on drive `d` (`st`) is the symlink or special file
    `node`: its kind, and its target or device."""
    if stat_.S_IFMT(st.st_mode) != stat_.S_IFMT(node.mode):
        return False
    if node.target is not None:
        return d.do(os.readlink, path) == node.target
    return not (stat_.S_ISCHR(st.st_mode) or stat_.S_ISBLK(st.st_mode)) or st.st_rdev == node.rdev


def _starts(a: Drive, b: Drive, path: str) -> bool:
    """Whether the file at `path` on drive `b` holds the start of the one on drive `a`, and no more."""
    fa, fb = a.open(path, os.O_RDONLY), b.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fb, CHUNK):
            if os.read(fa, len(chunk)) != chunk:
                return False
        return True
    finally:
        os.close(fa)
        os.close(fb)


def describe(op: str, payload: dict) -> str:
    """A journal entry for people: 'write of Photos/a.jpg (and 41 more)'."""
    if op == "write":
        files = payload["files"]
        more = f" (and {len(files) - 1} more)" if len(files) > 1 else ""
        return f"write of {files[0]['path'] if files else '?'}{more}"
    if op == "live":
        return f"change of {payload['path']} through the mount"
    if op == "link":
        return f"link of {payload['dst']} to {payload['src']}"
    if op == "attrs":
        return f"change of the owner, mode or times of file #{payload['id']} through the mount"
    if op == "xattr":
        return f"change of an extended attribute of file #{payload['id']} through the mount"
    return f"{op} of {payload.get('path') or payload.get('src')}"



"""One member drive: its identity, its space, and plain-file I/O on it.

A member drive is any mounted filesystem (or, with --allow-shared-device, a directory). It holds:
  .homepool/drive.toml   who it is: pool id, drive id, label, when added
  .homepool/catalog.db   a recent copy of the pool's catalog (for `recover`)
  .homepool/tmp/         files being written; never visible in the tree
  HomePool/<pool path>   the pool's files, as plain files any PC can read
Called by the pool layer (`pool/`) only (and `recover.py`, which reads identities).
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import logging
import os
import stat
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import tomli_w

from .catalog import DriveRow
from .streams import hash_file

log = logging.getLogger(__name__)

META_DIR = ".homepool"
TREE_DIR = "HomePool"
IDENTITY_FILE = "drive.toml"
CATALOG_COPY = "catalog.db"
FORMAT = 1

GiB = 1 << 30
MiB = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")

# The kernel takes a path whole only if it is shorter than PATH_MAX (4096 bytes), and a pool
# path can be longer than that once the drive's own path is in front (a local filesystem has
# no limit on depth). Such a path is reached through a descriptor of a folder on the way.
WHOLE = 4000  # bytes of a path passed on as it is; "/proc/self/fd/N/" must fit in what is left

README = """\
This drive is a member of a homepool storage pool.

Its files are ordinary files under HomePool/, with the same folders and names as in the pool:
you can plug this drive into any PC and copy them off, with or without homepool.

This folder (.homepool) holds the drive's identity and a recent copy of the pool's catalog, so
that `homepool recover` can rebuild the pool from its drives. Please leave it alone.
"""


@dataclass(frozen=True)
class Identity:
    pool_id: str
    drive_id: str
    label: str
    added_at: str
    format: int = FORMAT


def new_identity(pool_id: str, label: str) -> Identity:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    return Identity(pool_id=pool_id, drive_id=str(uuid.uuid4()), label=label, added_at=now)


def read_identity(root: Path) -> Identity | None:
    """The identity of the drive at `root`, or None if it has none (or an unreadable one)."""
    try:
        with open(root / META_DIR / IDENTITY_FILE, "rb") as f:
            data = tomllib.load(f)
        return Identity(
            pool_id=str(data["pool_id"]),
            drive_id=str(data["drive_id"]),
            label=str(data.get("label", "")),
            added_at=str(data.get("added_at", "")),
            format=int(data.get("format", FORMAT)),
        )
    except (OSError, tomllib.TOMLDecodeError, KeyError, ValueError):
        return None


def write_identity(root: Path, ident: Identity) -> None:
    meta = root / META_DIR
    (meta / "tmp").mkdir(parents=True, exist_ok=True)
    (root / TREE_DIR).mkdir(exist_ok=True)
    write_atomic(meta / "README.txt", README.encode())
    data = tomli_w.dumps(
        {
            "pool_id": ident.pool_id,
            "drive_id": ident.drive_id,
            "label": ident.label,
            "added_at": ident.added_at,
            "format": ident.format,
        }
    )
    write_atomic(meta / IDENTITY_FILE, b"# homepool member drive identity; do not edit\n" + data.encode())


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new content."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # two processes may write the same file
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def syncfs(path: Path) -> None:
    """Flush everything written to the filesystem holding `path` (one journal commit for a batch)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


@contextmanager
def reach(full: str) -> Iterator[str]:
    """`full` (a path) as the kernel takes it: itself, or, when it is too long,
    /proc/self/fd/N/REST, where N is a descriptor of a folder on the way, opened here (and
    closed after) one stretch of the path at a time."""
    raw = os.fsencode(full)
    if len(raw) < WHOLE:
        yield full
        return
    fd = os.open("/" if raw.startswith(b"/") else ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        rest = raw.lstrip(b"/")
        while len(rest) >= WHOLE:
            cut = rest.rfind(b"/", 0, WHOLE)  # names are at most 255 bytes: there is one
            inner = os.open(rest[:cut], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd, rest = inner, rest[cut + 1:]
        yield f"/proc/self/fd/{fd}/{os.fsdecode(rest)}"
    finally:
        os.close(fd)


def on_path(fn: Callable[..., T], *fulls: str, **kw: object) -> T:
    """`fn(*fulls, **kw)`, where `fulls` are absolute paths: passed whole (no cost when they
    fit, the common case), and again through `reach` if the kernel found one too long."""
    try:
        return fn(*fulls, **kw)
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG or all(len(os.fsencode(f)) < WHOLE for f in fulls):
            raise
    with ExitStack() as stack:
        try:
            return fn(*(stack.enter_context(reach(f)) for f in fulls), **kw)
        except OSError as e:  # named by the paths asked for, not by descriptors closed by now
            e.filename, e.filename2 = fulls[0], fulls[1] if len(fulls) > 1 else None
            raise


def mount_of(path: Path) -> tuple[str, str, str]:
    """(mount point, filesystem type, source) of the filesystem holding `path`."""
    real = os.path.realpath(path)
    best = ("/", "?", "?")
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                mnt = left.split()[4].encode().decode("unicode_escape")
                fstype, source = right.split()[:2]
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, source)
    except OSError:
        pass
    return best


def reserve_for(total: int) -> int:
    """Space placement leaves free on a drive: 2% of it, at most 1 GiB, at least 1 MiB.

    Filesystems slow down and fragment when full, and a drive filled to the last byte cannot
    take the catalog copy or a temp file for a repair."""
    return max(MiB, min(GiB, total // 50))


# (mode, uid, gid) the pool shows for a folder, by its pool path; None if it has none.
FolderAttrs = Callable[[str], tuple[int, int, int] | None]


class Drive:
    """A member drive as this process sees it (a snapshot of its catalog row)."""

    def __init__(self, row: DriveRow, folder_attrs: FolderAttrs | None = None) -> None:
        self.row = row
        # The owner and mode a folder made here takes (`makedirs`): the pool's, where it has one.
        self.folder_attrs = folder_attrs
        self.id = row.id
        self.uuid = row.uuid
        self.label = row.label
        self.root = Path(row.path)
        self.tree = self.root / TREE_DIR
        self.meta = self.root / META_DIR
        self.tmpdir = self.meta / "tmp"
        # String forms for the per-file hot paths (pathlib costs more than the syscalls there).
        self.tree_s = str(self.tree)
        self.tmpdir_s = str(self.tmpdir)

    def __repr__(self) -> str:
        return f"<Drive {self.id} {self.label!r} at {self.root}>"

    @property
    def name(self) -> str:
        return f"{self.label!r} ({self.root})"

    def present(self) -> bool:
        """True if the drive is mounted where the catalog says and carries its identity."""
        ident = read_identity(self.root)
        return ident is not None and ident.drive_id == self.uuid

    def device(self) -> int | None:
        """The filesystem's device number (two drives on one disk share it), None if missing."""
        if self.row.state != "active":
            return None
        try:
            return os.stat(self.root).st_dev
        except OSError:
            return None

    def real(self, pool_path: str) -> Path:
        """Where `pool_path` is on this drive, to show (I/O goes through the methods below)."""
        return self.tree / pool_path if pool_path else self.tree

    def full(self, pool_path: str) -> str:
        """Where `pool_path` is on this drive, for `on_path` (the methods below use it)."""
        return f"{self.tree_s}/{pool_path}" if pool_path else self.tree_s

    # -- plain-file I/O by pool path (any length: see `reach`) ----------------------------

    def do(self, fn: Callable[..., T], pool_path: str, *args: object, **kw: object) -> T:
        """`fn(path, *args, **kw)` with the path of `pool_path` on this drive."""
        return on_path(lambda full: fn(full, *args, **kw), self.full(pool_path))

    def lstat(self, pool_path: str) -> os.stat_result:
        return on_path(os.lstat, self.full(pool_path))

    def lexists(self, pool_path: str) -> bool:
        """Whether anything is at `pool_path` here (a symlink is not followed)."""
        try:
            self.lstat(pool_path)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def exists(self, pool_path: str) -> bool:
        """Whether `pool_path` leads to something here (a symlink is followed)."""
        try:
            self.do(os.stat, pool_path)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    def is_dir(self, pool_path: str) -> bool:
        """Whether a folder is at `pool_path` here (not a symlink to one)."""
        try:
            return stat.S_ISDIR(self.lstat(pool_path).st_mode)
        except (FileNotFoundError, NotADirectoryError):
            return False

    def open(self, pool_path: str, flags: int, mode: int = 0o777) -> int:
        return self.do(os.open, pool_path, flags, mode)

    def rename(self, src: str, dst: str) -> None:
        on_path(os.rename, self.full(src), self.full(dst))

    def link(self, src: str, dst: str) -> None:
        on_path(lambda s, t: os.link(s, t, follow_symlinks=False), self.full(src), self.full(dst))

    def hash(self, pool_path: str) -> str:
        """The content hash of the file at `pool_path` here."""
        return on_path(hash_file, self.full(pool_path))

    def listdir(self, pool_dir: str) -> list[str]:
        return on_path(os.listdir, self.full(pool_dir))

    def fsync_dir(self, pool_dir: str) -> None:
        """Flush a folder's entries here (names made or moved in it)."""
        on_path(fsync_dir, self.full(pool_dir))

    def new_tmp(self) -> Path:
        return self.tmpdir / self.new_tmp_name()

    def new_tmp_name(self) -> str:
        return f"{uuid.uuid4().hex}.part"

    def statvfs(self) -> tuple[int, int]:
        """(size, free for unprivileged writers) of the filesystem, in bytes."""
        st = os.statvfs(self.root)
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize

    def capacity(self, used_by_pool: int, stats: tuple[int, int] | None = None) -> tuple[int, int]:
        """(size, free) as the pool may use them: the filesystem (or `stats`, a recent
        `statvfs()`), limited by --max-size."""
        size, free = stats if stats is not None else self.statvfs()
        if self.row.max_size is not None:
            size = min(size, self.row.max_size)
            free = min(free, max(0, self.row.max_size - used_by_pool))
        return size, free

    def room(self, used_by_pool: int, stats: tuple[int, int] | None = None) -> int:
        """Bytes placement may still put here, after the reserve."""
        size, free = self.capacity(used_by_pool, stats)
        return max(0, free - reserve_for(size))

    def syncfs(self) -> None:
        syncfs(self.root)

    def makedirs(self, pool_dir: str, mode: int = 0o755) -> bool:
        """Make folder `pool_dir` here, and the ones on the way that are not here yet, from the
        top down without recursion (a tree may be deeper than Python's stack). Each takes the
        owner and mode the pool shows for it (`folder_attrs`), or else `mode` (`pool_dir`)
        or 0o777 (those on the way), less the umask. The tree's own folder is made again
        only on the drive itself, never in the empty mount point of a drive that is away.
        Returns whether it made `pool_dir` with the pool's owner and mode."""
        if not pool_dir:
            return False
        made = False
        missing = []
        at = pool_dir
        while True:
            if not at:
                if not self.present():
                    raise FileNotFoundError(errno.ENOENT, "the drive is not there", self.tree_s)
                with suppress(FileExistsError):
                    os.mkdir(self.tree_s)
                break
            try:
                made = self._mkdir(at, mode if at == pool_dir else 0o777) and at == pool_dir
            except FileNotFoundError:  # a folder on the way is missing too
                missing.append(at)
                at = at.rpartition("/")[0]
                continue
            except FileExistsError:
                pass
            break
        for folder in reversed(missing):
            with suppress(FileExistsError):  # (`pool_dir` is the last)
                made = self._mkdir(folder, mode if folder == pool_dir else 0o777) and folder == pool_dir
        if not stat.S_ISDIR(self.do(os.stat, pool_dir).st_mode):
            raise FileExistsError(errno.EEXIST, "something else is in the folder's place", self.full(pool_dir))
        return made

    def _mkdir(self, pool_dir: str, mode: int) -> bool:
        """mkdir, then the owner and mode the pool shows, if it has them: whether it gave them."""
        attrs = self.folder_attrs(pool_dir) if self.folder_attrs is not None else None
        self.do(os.mkdir, pool_dir, mode & 0o7777 if attrs is None else attrs[0] & 0o777)
        if attrs is None:
            return False
        try:  # (chown clears set-id bits: the mode goes last)
            self.do(os.lchown, pool_dir, attrs[1], attrs[2])
            self.do(os.chmod, pool_dir, attrs[0] & 0o7777)
            return True
        except OSError as e:  # (a drive without owners, say): the pool shows its own anyway
            log.debug("folder %s on %s keeps the owner and mode it was made with: %s", pool_dir, self.name, e)
            return False

    def symlink_on_the_way(self, pool_dir: str) -> str | None:
        """The first folder on the way to pool folder `pool_dir` (itself included) that is a
        symlink on this drive (put there behind the pool's back: going through it would read
        or write outside the pool, or in another folder), None if there is none."""
        parts = [p for p in pool_dir.split("/") if p]
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            try:
                if stat.S_ISLNK(self.lstat(sub).st_mode):
                    return sub
            except FileNotFoundError:
                return None
        return None

    def unlink(self, pool_path: str) -> bool:
        """Remove a file's copy; False if it was not there."""
        try:
            on_path(os.unlink, self.full(pool_path))
            return True
        except FileNotFoundError:
            return False

    def rmdir(self, pool_path: str) -> bool:
        """Remove an empty directory; False if something (not in the catalog) is still in it."""
        try:
            on_path(os.rmdir, self.full(pool_path))
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False  # left for `check` to report
        return True

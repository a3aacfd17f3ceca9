"""The pool's state directory: where it is, its config file, and its lock.

  DIR/pool.toml     readable settings (pool id, placement policy)
  DIR/catalog.db    the catalog (SQLite, WAL)
  DIR/lock          held (flock) by a command while it changes the pool

DIR comes from --pool, else $HOMEPOOL_POOL, else /var/lib/homepool for root and
$XDG_DATA_HOME/homepool (~/.local/share/homepool) for everyone else.
"""

from __future__ import annotations

import fcntl
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tomli_w

from .errors import BadInput, NotAPool, PoolBusy, PoolMounted

CONFIG_FILE = "pool.toml"
CATALOG_FILE = "catalog.db"
LOCK_FILE = "lock"
STUCK_FILE = "stuck"  # while a change has held the mount too long: since when (see `mount.take_the_pool`)


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/homepool")
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg is not None and xdg != "" else Path.home() / ".local" / "share"
    return base / "homepool"


def resolve_state_dir(option: str | Path | None) -> Path:
    """--pool wins over $HOMEPOOL_POOL, which wins over the default."""
    if option is not None:
        return Path(option).expanduser().absolute()
    env = os.environ.get("HOMEPOOL_POOL")
    if env is not None and env != "":
        return Path(env).expanduser().absolute()
    return default_state_dir()


@dataclass
class PoolConfig:
    pool_id: str
    name: str = "homepool"
    created: str = ""
    placement: str = "mfs"
    extra: dict = field(default_factory=dict)

    def dumps(self) -> str:
        head = (
            "# homepool pool settings. Folders, drives and files live in catalog.db.\n"
            "# placement: which drives new files go to: 'mfs' (most free space, the default),\n"
            "# 'lfs' (least free space: fill one drive first) or 'pfrd' (random, weighted by free space).\n"
        )
        data = {"pool_id": self.pool_id, "name": self.name, "created": self.created,
                "placement": self.placement, **self.extra}
        return head + tomli_w.dumps(data)

    @classmethod
    def load(cls, state_dir: Path) -> PoolConfig:
        path = state_dir / CONFIG_FILE
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise NotAPool(path=state_dir, why=f"{CONFIG_FILE} is not valid TOML: {e}") from None
        try:
            known = {"pool_id", "name", "created", "placement"}
            return cls(
                pool_id=str(data["pool_id"]),
                name=str(data.get("name", "homepool")),
                created=str(data.get("created", "")),
                placement=str(data.get("placement", "mfs")),
                extra={k: v for k, v in data.items() if k not in known},
            )
        except KeyError:
            raise NotAPool(path=state_dir, why=f"{CONFIG_FILE} has no pool_id") from None

    def save(self, state_dir: Path) -> None:
        from .drives import write_atomic

        write_atomic(state_dir / CONFIG_FILE, self.dumps().encode())


def env_number(name: str, default: float) -> float:
    """A number of the environment (a tuning knob such as HOMEPOOL_STUCK_AFTER); anything
    else there is an error that names it, not a traceback."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):  # (NaN too)
        raise BadInput(message=f"{name}={raw!r} is not a number of 0 or more: fix it or unset it")
    return value


def stuck_since(state_dir: Path) -> str | None:
    """When a change began to hold the mount up (a drive that does not answer), if it still
    does: the mount notes it in the state directory for `status`."""
    try:
        return (state_dir / STUCK_FILE).read_text().strip() or None
    except OSError:
        return None


def mounted_at(state_dir: Path) -> str | None:
    """Where the pool is mounted, if a mount holds its lock now; None otherwise. Looks without
    taking the lock (a command that took it, even for a moment, could make a mount that is
    starting fail): the lock file's note names the holder, and that process must have the lock
    file open (or, where its descriptors cannot be read, at least run homepool)."""
    lock = state_dir / LOCK_FILE
    try:
        pid, what = lock.read_text().split("\n")[:2]
        int(pid)
    except (OSError, ValueError):
        return None
    if not what.startswith("mounted at "):
        return None
    try:
        real = os.path.realpath(lock)
        held = any(os.readlink(f"/proc/{pid}/fd/{fd}") == real for fd in os.listdir(f"/proc/{pid}/fd"))
    except PermissionError:  # another user's process
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                held = b"homepool" in f.read()
        except OSError:
            return None
    except OSError:  # gone (a descriptor may also close while we look)
        return None
    return what.removeprefix("mounted at ") if held else None


class PoolLock:
    """An exclusive advisory lock on DIR/lock, held while a command changes the pool."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").split("\n")
            os.close(fd)
            if len(holder) > 1 and holder[1].startswith("mounted at "):
                raise PoolMounted(pid=holder[0], where=holder[1].removeprefix("mounted at ")) from None
            raise PoolBusy(pid=holder[0].strip() or "?") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd

    def note(self, what: str) -> None:
        """Say what holds the lock (the busy error shows it), e.g. 'mounted at /srv/pool'."""
        assert self.fd is not None
        os.pwrite(self.fd, f"{os.getpid()}\n{what}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

"""Running the FUSE mount: `homepool mount` and `homepool unmount`.

`serve(pool, mountpoint)` runs in the foreground until the filesystem is unmounted (by
`homepool unmount`, `fusermount3 -u` or `umount`) or the process gets SIGINT/SIGTERM, and
always unmounts on the way out. `start_background` runs it in a child process and returns once
the mount is up (or says why it did not come up).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import check as check_mod
from .catalog import ROOT_ID
from .config import STUCK_FILE, env_number
from .control import SETTLE_WAIT, ControlServer
from .errors import (
    BadDrive,
    BadInput,
    FuseUnavailable,
    MountFailed,
    MountpointBusy,
    MountpointMissing,
    MountStopping,
    NotMounted,
)

if TYPE_CHECKING:
    from .fuse.ops import PoolOperations
    from .fuse.session import Session
    from .pool import Pool

log = logging.getLogger(__name__)

FSNAME = "homepool"
CATALOG_COPY_EVERY = 600.0  # seconds between catalog copies to the drives while mounted
SYNC_EVERY = 1.0  # seconds between flushes of the catalog (and its log) to the disk while mounted
STUCK_AFTER = 5.0  # seconds a change may hold the pool before the mount says so (`take_the_pool`)
SETTLE_AFTER = 0.005  # seconds a group of renames and deletes gathers before its commit (`settle_steps`)


def check_mountpoint(mountpoint: Path) -> Path:
    if not mountpoint.exists():
        raise MountpointMissing(path=mountpoint)
    if not mountpoint.is_dir():
        raise MountpointMissing(path=mountpoint)
    if os.path.ismount(mountpoint):
        raise MountpointBusy(path=mountpoint, why="something is already mounted there")
    return Path(os.path.realpath(mountpoint))


def check_fuse() -> None:
    if not Path("/dev/fuse").exists():
        raise FuseUnavailable(why="/dev/fuse does not exist (load the fuse module, or run on a machine with FUSE)")


def serve(pool: Pool, mountpoint: Path, allow_other: bool = False) -> None:
    """Mount `pool` at `mountpoint` and serve it until unmounted or signalled."""
    from .fuse.ops import PoolOperations
    from .fuse.session import SLOW_READ, SPIN, Session

    stuck_after = env_number("HOMEPOOL_STUCK_AFTER", STUCK_AFTER)
    spin = env_number("HOMEPOOL_SPIN_US", SPIN * 1e6) / 1e6  # (0: a thread that reads sleeps at once)
    slow_read = env_number("HOMEPOOL_SLOW_READ_US", SLOW_READ * 1e6) / 1e6  # (0: every read from a drive hands on)
    pool.go_live()
    pool.group_steps()
    (pool.state_dir / STUCK_FILE).unlink(missing_ok=True)  # left by a mount killed while held up
    ops = PoolOperations(pool)
    session = Session(ops, mountpoint, FSNAME, allow_other, spin, slow_read)
    ops.session = session  # before mounting: the first requests may come at once
    pool.unlocked_io = ops.unlocked  # a new copy's data is copied without holding up requests
    # Before the umask goes: the socket is made with the usual one, then closed to others.
    control = ControlServer(pool.state_dir, lambda request: answer(pool, ops, request))
    control.start()
    os.umask(0)  # modes come from the callers (the kernel applied their umask)

    def on_signal(signum: int, frame: object) -> None:
        if signum == signal.SIGUSR1:  # `kill -USR1 PID`: what the mount is doing, in its log
            try:
                log.info("requests served so far: %s; the kernel holds %d inode(s)", session.summary(), session.held())
            except Exception:  # a report must never end the mount
                log.exception("reporting the requests served")
            return
        log.info("signal received: unmounting %s", mountpoint)
        session.stop()

    # Before mounting: a signal that comes as soon as the mount is there still unmounts it.
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    mounted = False
    try:
        try:
            session.mount()
        except OSError as e:
            raise MountFailed(path=mountpoint, why=e.strerror or str(e)) from None
        mounted = True
        log.info("mounted the pool at %s", mountpoint)
        threading.Thread(target=raise_readahead, args=(mountpoint,), daemon=True).start()
        threading.Thread(target=copy_moved_files, args=(pool, ops, session), name="copies", daemon=True).start()
        settle_after = env_number("HOMEPOOL_SETTLE_AFTER", SETTLE_AFTER)
        threading.Thread(target=settle_steps, args=(pool, ops, session, settle_after), name="settle",
                         daemon=True).start()
        copied = time.monotonic()
        while not session.done.wait(SYNC_EVERY):
            try:
                take_the_pool(ops, pool, stuck_after)
                try:
                    pool.catch_up()
                finally:
                    ops.lock.release()
                pool.sync_catalog()
                if time.monotonic() - copied > CATALOG_COPY_EVERY:
                    with ops.lock:  # `recover` rebuilds the pool from the newest catalog copy on the drives
                        pool.save_catalog_copies()
                    copied = time.monotonic()
            except Exception:  # the state drive full, say: the mount goes on; the next round tries again
                log.exception("keeping the catalog up to date")
    finally:
        control.stop()
        for s, handler in old.items():
            signal.signal(s, handler)
        session.stop()
        # Requests still running finish their catalog work first; then the pool may close.
        if not ops.lock.acquire(timeout=30):
            log.error("a request is still running after 30 s; closing the pool anyway")
        ops.close()
        if mounted:
            log.info("unmounted %s; requests served: %s", mountpoint, session.summary())


def take_the_pool(ops: PoolOperations, pool: Pool, stuck_after: float = STUCK_AFTER) -> None:
    """Take the pool's lock for the mount's every-second work. A change that holds it
    `stuck_after` seconds (a drive that does not answer holds it until the kernel answers or
    fails the call) is reported until it lets go: in the log, and to `status` (the state
    directory's STUCK_FILE). The wait has no end, unmounting or not: the pool is never
    closed under a change. What was committed meanwhile still reaches the disk every second."""
    if ops.lock.acquire(timeout=stuck_after):
        return
    held = time.monotonic() - stuck_after
    log.warning("a change has held the pool for %.0f s (a drive that does not answer?): files can still be found, "
                "listed and read, changes and opens wait", stuck_after)
    note = pool.state_dir / STUCK_FILE
    with contextlib.suppress(OSError):  # (the state drive full, say: the log has it)
        note.write_text(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(time.time() - stuck_after)) + "\n")
    while not ops.lock.acquire(timeout=SYNC_EVERY):
        with contextlib.suppress(Exception):  # (the loop that calls this logs its failures)
            pool.sync_catalog()
    log.warning("the pool answers again, after %.0f s", time.monotonic() - held)
    with contextlib.suppress(OSError):  # (a state drive gone read-only: `status` looks for the mount first)
        note.unlink(missing_ok=True)


def settle_steps(pool: Pool, ops: PoolOperations, session: Session, settle_after: float = SETTLE_AFTER) -> None:
    """Renames and deletes of files are committed a group at a time (`Pool.group_steps`):
    `settle_after` seconds after the first of a group, its commit and its drive steps, on this
    thread (sooner if a change or an fsync needs them; the every-second round commits it)."""
    while not session.done.is_set():
        if not pool.group_waiting.wait(SYNC_EVERY) or session.done.wait(settle_after):
            continue  # (at unmount, closing the pool settles them)
        try:
            with ops.lock:
                pool.settle_steps()
        except Exception:  # the state drive full, say: the group is undone, and said so
            log.exception("recording renames and deletes")
            session.done.wait(SYNC_EVERY)  # (steps that keep failing are tried again, not in a loop)


def copy_moved_files(pool: Pool, ops: PoolOperations, session: Session) -> None:
    """Every second, a drive plugged in or pulled is noticed (`Pool.notice_drives`), and
    files moved to another folder get its copies (`Pool.copy_moved_files`),
    on this thread: the data is copied with the lock let go, and a big file takes a while.
    Those still waiting at unmount get them at the next mount (as does any file short of
    copies, or with extra ones, whose copies are all there: `Pool.queue_for_their_copies`).
    The kernel forgets what it holds of a file whose content a returning drive changed
    (`Pool.take_newer`)."""
    try:
        off = pool.not_at_their_copies()
        with ops.lock:
            if not session.done.is_set():  # (an unmount meanwhile closes the catalog)
                pool.queue_for_their_copies(off)
    except Exception:  # (the round below, and `check`, go on without)
        log.exception("looking for files not at their folder's copies")
    while not session.done.wait(SYNC_EVERY):
        with ops.lock:
            if session.done.is_set():  # (an unmount meanwhile closes the catalog)
                return
            try:  # (first: a drive back may have newer content for the kernel to forget)
                pool.notice_drives()
            except Exception:  # (the next round tries again)
                log.exception("looking at the drives")
            retaken, pool.retaken = pool.retaken, []
        for ino in retaken:  # (outside the lock, as for `add_folder`; before the copies: they take a while)
            session.forget_inode(ino)
        try:
            with ops.lock:
                pool.copy_moved_files()
        except Exception:  # a drive gone mid-copy, say: the next round (or `check`) tries again
            log.exception("giving moved files their copies")


def answer(pool: Pool, ops: PoolOperations, request: dict[str, Any]) -> dict[str, Any]:
    """What a command asks of the mount over the control socket (see control.py)."""
    op, lock = request.get("op"), ops.lock
    if op == "settle":  # a command about to read the catalog (`control.settle`)
        if not lock.acquire(timeout=SETTLE_WAIT):
            return {"settled": False}  # held up (see `take_the_pool`): it reads what was committed
        try:
            pool.cat.commit_group()  # (the drive steps are the settle thread's: none waits on a drive here)
        finally:
            lock.release()
        return {"settled": True}
    if op == "set_copies":
        copies = int(request["copies"])
        with lock:
            if pool.copies_changing:  # two at once: the older count could win a file
                raise BadInput(message="another change of a folder's copies is running in the mount; wait for it "
                               "to end")
            node, before, files = pool.change_copies(str(request["folder"]), copies)
            pool.copies_changing = True
        short, waiting = [], 0
        try:
            for node_id in files:  # the lock is let go between files: the mount goes on serving
                if ops.session is not None and ops.session.done.is_set():
                    raise MountStopping(path=ops.session.mountpoint, what="the folder's other files get their "
                                        "copies at the next `homepool check --repair`")
                with lock:
                    got = pool.reconcile_unless_open(node_id)
                    if pool.cat.node_or_none(node_id) is None:
                        continue  # deleted since (or while its copy was made)
                    if got is None or pool.copies_pending(node_id):
                        waiting += 1  # open, or changed while its copy was made: a little later
                    elif got < copies:
                        short.append(pool.path_of(node_id))
        finally:
            pool.copies_changing = False
        with lock:
            drives = len(pool.drives(present_only=True))
        return {"name": node.name, "before": before, "short": short, "drives": drives, "waiting": waiting}
    if op == "add_folder":
        with lock:
            pool.add_folder(str(request["folder"]), int(request["copies"]))
            node, _ = pool.folder(str(request["folder"]))
            drives = len(pool.drives(present_only=True))
        # Outside the lock: the kernel takes the root's own lock for this, which a request
        # waiting for ours may hold.
        if ops.session is not None:  # the kernel may remember that the name was not there
            ops.session.forget_entry(ROOT_ID, node.name.encode())
        return {"drives": drives}
    if op == "add_drive":
        if request.get("adopt"):  # its files would appear under the kernel's cached listings
            raise BadInput(message="a drive is adopted with its files only while the pool is not mounted: "
                           f"`homepool unmount {ops.session.mountpoint if ops.session else 'MOUNTPOINT'}` first")
        # Before the lock: looking at a path inside the mount is a request to this mount.
        path = Path(os.path.realpath(request["path"]))
        if ops.session is not None and (path.is_relative_to(os.path.realpath(ops.session.mountpoint))
                                        or _same_device(path, ops.session.mountpoint)):  # a bind mount of it
            raise BadDrive(path=request["path"], why="it is inside the pool's own mount; a drive is a disk "
                           "mounted elsewhere, such as /mnt/disk3")
        with lock:
            d = pool.add_drive(Path(request["path"]), label=request.get("label"), max_size=request.get("max_size"),
                               allow_shared_device=bool(request.get("allow_shared_device")))
            size, free = d.capacity(pool.cat.bytes_on_drive(d.id))
        return {"label": d.label, "root": str(d.root), "size": size, "free": free}
    if op == "check":
        @contextlib.contextmanager
        def hold() -> Iterator[None]:
            if ops.session is not None and ops.session.done.is_set():
                raise MountStopping(path=ops.session.mountpoint, what="check again once it is mounted")
            with lock:
                pool.settle_steps()  # (a rename or delete made since the last hold: on the drives first)
                yield

        with lock:
            if pool.kernel_news is not None:
                raise BadInput(message="another `homepool check` is running in the mount; wait for it to end")
            pool.kernel_news = []  # what repairs add or change, noted as they are made
        try:
            problems = check_mod.check(pool, repair=bool(request.get("repair")), hold=hold)
        finally:
            news, pool.kernel_news = pool.kernel_news, None
            if ops.session is not None:  # outside the lock, as for `add_folder`
                for parent, name, ino in news:
                    if parent is not None:  # (the root has no entry)
                        ops.session.forget_entry(parent, name.encode())
                    ops.session.forget_inode(ino)
        return {"problems": [dataclasses.asdict(p) for p in problems]}
    raise BadInput(message=f"the mount does not know the request {op!r}; is it an older homepool?")


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False  # not there: `add_drive` says so


READAHEAD_KB = 2048


def raise_readahead(mountpoint: Path) -> None:
    """FUSE mounts get 128 KiB of read-ahead, member drives usually megabytes; cold sequential
    reads follow it (bench/BASELINE.md). Root may raise it on the mount's bdi. Runs once the
    mount answers (it stats the mount point), so in a thread beside the FUSE loop."""
    try:
        st = os.stat(mountpoint)
        bdi = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
        bdi.write_text(f"{READAHEAD_KB}\n")
        log.info("read-ahead of %s set to %d KiB", mountpoint, READAHEAD_KB)
    except OSError as e:
        log.info("read-ahead of %s left as it was (%s)", mountpoint, e)


def start_background(state_dir: Path, mountpoint: Path, allow_other: bool, timeout: float = 20.0) -> Path:
    """Run `homepool mount --foreground` in its own session; return its log file once mounted."""
    logfile = state_dir / "mount.log"
    args = [sys.executable, "-m", "homepool", "--pool", str(state_dir), "-v", "mount", "--foreground", str(mountpoint)]
    if allow_other:
        args.append("--allow-other")
    # posix_spawn, not Popen: the daemon outlives this process, which never waits for it.
    pid = os.posix_spawn(sys.executable, args, dict(os.environ), setsid=True, file_actions=[
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(logfile), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ])
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            last = logfile.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise MountFailed(path=mountpoint, why=last[0].removeprefix("homepool: error: "))
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGTERM)
            raise MountFailed(path=mountpoint, why=f"not mounted after {timeout:.0f} s; see {logfile}")
        time.sleep(0.05)  # waiting for the child to mount; bounded by the deadline
    return logfile


def pidfile(state_dir: Path, mountpoint: Path) -> Path:
    """Where the daemon serving `mountpoint` notes its pid, so `unmount` can wait for its end."""
    name = hashlib.sha1(os.fsencode(os.path.realpath(mountpoint))).hexdigest()[:16]
    return state_dir / "mounts" / f"{name}.pid"


def write_pidfile(state_dir: Path, mountpoint: Path) -> Path:
    path = pidfile(state_dir, mountpoint)
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"{os.getpid()}\n{os.path.realpath(mountpoint)}\n")
    return path


def wait_for_daemon(state_dir: Path, mountpoint: Path, deadline: float) -> None:
    """After the kernel let go of the mount, wait until its daemon has closed the pool too (it
    may still be writing the catalog's last pages)."""
    path = pidfile(state_dir, mountpoint)
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return  # no daemon of this pool known there
    while path.exists() and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)  # waiting for the daemon to finish; bounded by the deadline


def is_homepool_mount(mountpoint: Path) -> bool:
    real = os.path.realpath(mountpoint)
    with open("/proc/self/mounts") as f:
        for line in f:
            source, target, fstype = line.split()[:3]
            target = target.encode().decode("unicode_escape")
            if target == real and source == FSNAME and fstype.startswith("fuse"):
                return True
    return False


def unmount(state_dir: Path, mountpoint: Path, timeout: float = 20.0) -> None:
    if not is_homepool_mount(mountpoint):
        raise NotMounted(path=mountpoint)
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u", str(mountpoint)] if tool else ["umount", str(mountpoint)]
    deadline = time.monotonic() + timeout
    while True:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode == 0 or not is_homepool_mount(mountpoint):
            wait_for_daemon(state_dir, mountpoint, deadline)
            return
        if time.monotonic() > deadline:
            raise MountpointBusy(path=mountpoint, why=f"still in use ({r.stderr.strip()}); close what uses it")
        time.sleep(0.1)  # busy: a program still has files open there; bounded by the deadline

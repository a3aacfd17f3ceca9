#!/usr/bin/env python3
"""kill -9 stress for the homepool mount: does a killed mount always leave a pool that `check` finds clean?

For each seed: three fresh ext4 loop drives (`poolbench drives up`), a new pool on them (Documents
with 2 copies, Videos with 1), mounted with `homepool mount --foreground` in a child process. The
script then does a random sequence of filesystem operations through the mount (random.Random(seed)):
creates and writes, appends, O_TRUNC overwrites, writes at offsets, truncates, renames (within and
across folders, over existing names), unlinks, mkdir, rmdir, chmod, chown, utime, user.* xattrs,
hard links, symlinks, FIFOs, with some files kept open across operations. After a random number of
operations it sends SIGKILL to the mount daemon: at an operation's end (right away or after a
pause), while further operations run in a thread, or while a thread writes a large file. The dead
mount is lazily unmounted and `homepool check` (no --repair; opening the pool finishes its journal)
must find nothing. The pool is then mounted again: every file must read back, and every copy on the
drives must agree with what the mount shows (content, mode, owner, mtime, user.* xattrs; folders,
symlinks and FIFOs on every drive). After a clean unmount a second `check` must find nothing either.

    python scripts/crash_stress.py --seeds 20 [--first 0] [--workdir /var/tmp/homepool-stress]

Needs root (loop devices, mounts). Standard library only. Everything made is removed at the end, on
failure and on Ctrl-C too: the mount, the loop drives, the work directory.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
HOMEPOOL = REPO / ".venv" / "bin" / "homepool"
POOLBENCH = REPO.parent / "shared" / "bench" / "poolbench"
DRIVE_SIZES = "256M,320M,384M"
FOLDERS = {"Documents": 2, "Videos": 1}
KiB = 1024
MiB = 1024 * KiB
NAMES = [f"f{i}" for i in range(10)] + ["name with spaces", "café.txt"]
DIRNAMES = ["a", "b", "c", "sub dir"]
XATTRS = ["user.a", "user.b", "user.c", "user.tag"]
MODES = [0o600, 0o640, 0o644, 0o664, 0o700, 0o755]
IDS = [0, 1000, 1001, 65534]
MAX_OPEN = 6
SHOWN_OPS = 30
MOUNT_TIMEOUT = 30.0
CHECK_TIMEOUT = 300.0


CUT = {errno.ECONNABORTED, errno.ENOTCONN}  # what an operation cut short by the kill gets


class StressError(Exception):
    """Something the stress tool itself could not do (setup, a hung process): the seed fails."""


# -- processes, mounts ------------------------------------------------------------------------------


def run(cmd: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """`cmd` with stdout and stderr together in `.stdout`."""
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise StressError(f"timed out after {timeout:.0f} s: {' '.join(cmd)}") from e


def homepool(state: Path, *args: str, verbose: bool = False, debug: str = "", timeout: float = 120.0
             ) -> subprocess.CompletedProcess[str]:
    cmd = [str(HOMEPOOL), "--pool", str(state)] + (["-v"] if verbose else []) \
        + (["--debug-modules", debug] if debug else []) + list(args)
    return run(cmd, timeout)


def must(cp: subprocess.CompletedProcess[str]) -> str:
    if cp.returncode != 0:
        raise StressError(f"`{' '.join(map(str, cp.args))}` exited {cp.returncode}: {cp.stdout.strip()}")
    return cp.stdout


def _unescape(field_: str) -> str:
    """A mount point as /proc/self/mountinfo writes it (space, tab, newline, backslash in octal)."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field_ = field_.replace(code, ch)
    return field_


def mounts_under(top: Path) -> list[str]:
    """Mount points at or below `top`, deepest first."""
    prefix = str(top).rstrip("/")
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = _unescape(line.split()[4])
            if mp == prefix or mp.startswith(prefix + "/"):
                out.append(mp)
    return sorted(set(out), key=lambda p: (-p.count("/"), p))


def lazy_unmount(mp: str | Path) -> None:
    """Detach a (possibly dead) mount at once: what a killed FUSE daemon leaves needs no waiting."""
    for cmd in (["fusermount3", "-uz", str(mp)], ["umount", "-l", str(mp)]):
        if str(mp) not in mounts_under(Path(mp)):
            return
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)


def is_mount_daemon(pid: int) -> bool:
    """Whether process `pid` itself holds /dev/fuse (the FUSE daemon, not a launcher)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse" for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
    """Signal our child by its pid (never by name) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def start_mount(state: Path, mnt: Path) -> subprocess.Popen[bytes]:
    """`homepool mount --foreground` in a child (its own session: a Ctrl-C here is ours to handle),
    logging to STATE/mount.log; returns once mounted, with the child checked to be the daemon."""
    with open(state / "mount.log", "ab") as log:
        log.write(f"\n=== crash_stress: mount at {time.strftime('%H:%M:%S')} ===\n".encode())
        log.flush()
        proc = subprocess.Popen([str(HOMEPOOL), "--pool", str(state), "-v", "mount", "--foreground", str(mnt)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + MOUNT_TIMEOUT
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            raise StressError(f"the mount exited {proc.returncode} before mounting; log: {tail(state / 'mount.log')}")
        if time.monotonic() > deadline:
            stop_process(proc)
            lazy_unmount(mnt)
            raise StressError(f"not mounted after {MOUNT_TIMEOUT:.0f} s; log: {tail(state / 'mount.log')}")
        time.sleep(0.02)  # polling for the mount, bounded by the deadline
    if not is_mount_daemon(proc.pid):
        stop_process(proc)
        lazy_unmount(mnt)
        raise StressError(f"pid {proc.pid} does not hold /dev/fuse: it is not the mount daemon")
    return proc


def tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError as e:
        return f"({e})"


# -- the workload -----------------------------------------------------------------------------------


def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


@dataclass
class Workload:
    """Random operations through the mount at `root`, with a loose model of what exists (names only:
    an operation the model gets wrong just fails with an errno, which is fine)."""

    root: Path
    rng: random.Random
    files: set[str] = field(default_factory=set)  # regular files (each hard link's name too)
    dirs: set[str] = field(default_factory=lambda: set(FOLDERS))
    specials: set[str] = field(default_factory=set)  # symlinks and FIFOs
    across: set[str] = field(default_factory=set)  # files moved into another folder (and their names since)
    fds: dict[int, tuple[str, bool]] = field(default_factory=dict)  # open descriptors: path, writable
    history: list[str] = field(default_factory=list)
    done: int = 0
    ok: int = 0
    current: str = ""  # the operation under way (for a kill in the middle of one)
    shown: int = 0  # operations worth showing (those up to the kill), 0: all
    t0: float = field(default_factory=time.monotonic)  # the history's times are from here (the mount)
    desc: str = ""

    def __post_init__(self) -> None:
        w: list[tuple[Callable[[], None], int]] = [
            (self.op_create, 16), (self.op_append, 6), (self.op_overwrite, 6), (self.op_pwrite, 4),
            (self.op_truncate, 5), (self.op_fd_write, 6), (self.op_fd_close, 5), (self.op_open_keep, 2),
            (self.op_read, 3), (self.op_rename, 10), (self.op_rename_dir, 3), (self.op_unlink, 5),
            (self.op_mkdir, 5), (self.op_rmdir, 3), (self.op_chmod, 4), (self.op_chown, 3), (self.op_utime, 4),
            (self.op_setxattr, 4), (self.op_removexattr, 3), (self.op_link, 4), (self.op_symlink, 3),
            (self.op_mkfifo, 2), (self.op_fsync, 1), (self.op_pause, 3),
        ]
        self.ops = [op for op, _ in w]
        self.weights = [n for _, n in w]

    # -- bookkeeping

    def step(self) -> None:
        op = self.rng.choices(self.ops, weights=self.weights)[0]
        if len(self.files) < 4 and self.rng.random() < 0.5:
            op = self.op_create  # keep a few files around to work on
        self.desc = op.__name__.removeprefix("op_")
        self.current = self.desc
        try:
            op()
            result = "ok"
            self.ok += 1
        except OSError as e:
            result = errname(e)
        self.finished(f"{self.desc} -> {result}")

    def finished(self, what: str) -> None:
        """One more operation done: `what` (and its result) goes into the history."""
        self.done += 1
        self.history.append(f"{self.done:4d} {self.clock()} {what}")
        self.current = ""

    def clock(self) -> str:
        return f"{time.monotonic() - self.t0:6.3f}s"

    def say(self, text: str) -> None:
        """Describe the operation before doing it (so a kill in the middle shows what it was)."""
        self.desc = text
        self.current = text

    def last(self, n: int = SHOWN_OPS) -> list[str]:
        return self.history[:self.shown or None][-n:]

    def p(self, rel: str) -> str:
        return str(self.root / rel)

    def folder_of(self, rel: str) -> str:
        return rel.split("/", 1)[0]

    # -- picking names

    def pick_dir(self, folder: str | None = None, depth: int = 3) -> str:
        dirs = sorted(d for d in self.dirs if (folder is None or self.folder_of(d) == folder)
                      and d.count("/") < depth)
        return self.rng.choice(dirs) if dirs else self.rng.choice(sorted(FOLDERS))

    def new_name(self, folder: str | None = None) -> str:
        return f"{self.pick_dir(folder)}/{self.rng.choice(NAMES)}"

    def pick_file(self, new_chance: float = 0.1) -> str:
        if self.files and self.rng.random() >= new_chance:
            return self.rng.choice(sorted(self.files))
        return self.new_name()

    def pick_entry(self, dirs: bool = True) -> str:
        pool = sorted(self.files | self.specials | (self.dirs if dirs else set()))
        return self.rng.choice(pool) if pool else self.new_name()

    def size(self, most: int = 300 * KiB) -> int:
        return 0 if self.rng.random() < 0.1 else self.rng.randint(1, most)

    def regular_or_absent(self, rel: str) -> bool:
        """Never open a FIFO (it would block) or through a symlink: look first."""
        try:
            return stat.S_ISREG(os.lstat(self.p(rel)).st_mode)
        except FileNotFoundError:
            return True

    def write_all(self, fd: int, n: int, offset: int | None = None) -> None:
        """`n` random bytes in random-sized writes (several WRITE requests)."""
        left = n
        while left > 0:
            chunk = self.rng.randbytes(min(left, self.rng.randint(1, 128 * KiB)))
            wrote = os.write(fd, chunk) if offset is None else os.pwrite(fd, chunk, offset + n - left)
            left -= wrote

    def keep_or_close(self, fd: int, rel: str, writable: bool, keep: bool = False) -> None:
        if len(self.fds) < MAX_OPEN and (keep or self.rng.random() < 0.15):
            self.fds[fd] = (rel, writable)
            self.desc += f" (kept open fd {fd})"
        else:
            os.close(fd)

    # -- model updates

    def forget(self, rel: str) -> None:
        for s in (self.files, self.specials, self.dirs, self.across):
            s.discard(rel)
            for x in [x for x in s if x.startswith(rel + "/")]:
                s.discard(x)

    def moved(self, src: str, dst: str) -> None:
        """`src` renamed `dst`. A moved file keeps its old names in `across` too: a rename that
        returned just before the kill may not have been committed (the mount commits renames a
        group at a time), so `check` may find the file at either."""
        was_dir = src in self.dirs
        self.forget(dst)
        for s in (self.files, self.specials, self.dirs, self.across):
            keep = s is self.across
            if src in s:
                if not keep:
                    s.discard(src)
                s.add(dst)
            if was_dir:
                for x in [x for x in s if x.startswith(src + "/")]:
                    if not keep:
                        s.discard(x)
                    s.add(dst + x[len(src):])

    # -- operations (each describes itself, then may raise OSError)

    def op_create(self, keep: bool = False) -> None:
        rel = self.pick_file(new_chance=0.5)
        how = self.rng.choice([("O_TRUNC", os.O_TRUNC), ("O_EXCL", os.O_EXCL), ("", 0)])
        mode, n = self.rng.choice(MODES), self.size()
        self.say(f"create {rel!r} {how[0]} mode {mode:o} write {n}")
        if not self.regular_or_absent(rel):
            self.desc += " (not a regular file: skipped)"
            return
        fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | how[1], mode)
        self.files.add(rel)
        try:
            self.write_all(fd, n)
        except OSError:
            os.close(fd)
            raise
        self.keep_or_close(fd, rel, True, keep)

    def _open_write(self, rel: str, flags: int) -> int:
        if not self.regular_or_absent(rel):
            raise OSError(errno.EINVAL, "not a regular file (skipped)")
        return os.open(self.p(rel), flags | os.O_NOFOLLOW)

    def op_append(self) -> None:
        rel, n = self.pick_file(0), self.size(64 * KiB)
        self.say(f"append {rel!r} {n}")
        fd = self._open_write(rel, os.O_WRONLY | os.O_APPEND)
        try:
            self.write_all(fd, n)
        finally:
            os.close(fd)

    def op_overwrite(self) -> None:
        rel, n = self.pick_file(0), self.size()
        self.say(f"overwrite {rel!r} O_TRUNC write {n}")
        fd = self._open_write(rel, os.O_WRONLY | os.O_TRUNC)
        try:
            self.write_all(fd, n)
        except OSError:
            os.close(fd)
            raise
        self.keep_or_close(fd, rel, True)

    def op_pwrite(self) -> None:
        rel, off, n = self.pick_file(0), self.rng.randint(0, 300 * KiB), self.rng.randint(1, 32 * KiB)
        self.say(f"pwrite {rel!r} at {off} {n}")
        fd = self._open_write(rel, os.O_RDWR)
        try:
            self.write_all(fd, n, offset=off)
        finally:
            os.close(fd)

    def op_truncate(self) -> None:
        rel, n = self.pick_file(0), self.rng.randint(0, 400 * KiB)
        self.say(f"truncate {rel!r} {n}")
        os.truncate(self.p(rel), n)

    def op_fd_write(self) -> None:
        writable = sorted(fd for fd, (_, w) in self.fds.items() if w)
        if not writable:
            self.op_create(keep=True)
            return
        fd = self.rng.choice(writable)
        rel = self.fds[fd][0]
        r = self.rng.random()
        if r < 0.2:
            n = self.rng.randint(0, 300 * KiB)
            self.say(f"ftruncate fd {fd} ({rel!r}) {n}")
            os.ftruncate(fd, n)
        elif r < 0.5:
            off, n = self.rng.randint(0, 300 * KiB), self.rng.randint(1, 64 * KiB)
            self.say(f"pwrite fd {fd} ({rel!r}) at {off} {n}")
            self.write_all(fd, n, offset=off)
        else:
            n = self.size(128 * KiB)
            self.say(f"write fd {fd} ({rel!r}) {n}")
            self.write_all(fd, n)

    def op_fd_close(self) -> None:
        if not self.fds:
            self.op_open_keep()
            return
        fd = self.rng.choice(sorted(self.fds))
        self.say(f"close fd {fd} ({self.fds.pop(fd)[0]!r})")
        os.close(fd)

    def op_open_keep(self) -> None:
        rel, writable = self.pick_file(0), self.rng.random() < 0.5
        self.say(f"open {rel!r} {'O_RDWR' if writable else 'O_RDONLY'}")
        if not self.regular_or_absent(rel):
            raise OSError(errno.EINVAL, "not a regular file (skipped)")
        fd = os.open(self.p(rel), (os.O_RDWR if writable else os.O_RDONLY) | os.O_NOFOLLOW)
        if len(self.fds) < MAX_OPEN:
            self.fds[fd] = (rel, writable)
            self.desc += f" (kept open fd {fd})"
        else:
            os.close(fd)

    def op_read(self) -> None:
        if self.fds and self.rng.random() < 0.4:
            fd = self.rng.choice(sorted(self.fds))
            self.say(f"pread fd {fd} ({self.fds[fd][0]!r})")
            os.pread(fd, 64 * KiB, self.rng.randint(0, 200 * KiB))
            return
        rel = self.pick_file(0)
        self.say(f"read {rel!r}")
        if not self.regular_or_absent(rel):
            raise OSError(errno.EINVAL, "not a regular file (skipped)")
        with open(self.p(rel), "rb") as f:
            while f.read(MiB):
                pass

    def op_rename(self) -> None:
        src = self.rng.choice(sorted(self.files | self.specials)) if self.files | self.specials else self.new_name()
        folder = self.folder_of(src) if self.rng.random() < 0.6 else self.rng.choice(sorted(FOLDERS))
        others = sorted(x for x in self.files | self.specials if x != src)
        dst = self.rng.choice(others) if others and self.rng.random() < 0.3 else self.new_name(folder)
        self.say(f"rename {src!r} -> {dst!r}")
        try:
            same = os.path.samestat(os.lstat(self.p(src)), os.lstat(self.p(dst)))  # two names of one file: a no-op
        except OSError:
            same = False
        try:
            os.rename(self.p(src), self.p(dst))
        except OSError as e:
            if e.errno in CUT and self.folder_of(src) != self.folder_of(dst) and src in self.files:
                self.across.add(dst)  # cut short by the kill: the mount may have made it
            raise
        if same:
            return
        self.moved(src, dst)
        if self.folder_of(src) != self.folder_of(dst) and dst in self.files:
            self.across.add(dst)

    def op_rename_dir(self) -> None:
        dirs = sorted(d for d in self.dirs if "/" in d)
        if not dirs:
            self.say("rename a folder (none)")
            return
        src = self.rng.choice(dirs)
        taken = self.files | self.specials | self.dirs
        empty = [d for d in dirs if d != src and not any(x.startswith(d + "/") for x in taken)]
        if empty and self.rng.random() < 0.3:  # over an empty directory (rename(2) replaces it)
            dst = self.rng.choice(empty)
        elif self.rng.random() < 0.1:  # over a directory that may not be empty, or itself
            dst = self.rng.choice(dirs)
        else:
            parent = self.pick_dir(depth=2)
            dst = f"{parent}/{self.rng.choice(DIRNAMES)}"
        self.say(f"rename dir {src!r} -> {dst!r}")
        try:
            os.rename(self.p(src), self.p(dst))
        except OSError as e:
            if e.errno in CUT and self.folder_of(src) != self.folder_of(dst):  # the mount may have made it
                self.across |= {dst + f[len(src):] for f in self.files if f.startswith(src + "/")}
            raise
        if src != dst:
            self.moved(src, dst)
            if self.folder_of(src) != self.folder_of(dst):  # its files get their new folder's copies
                self.across |= {f for f in self.files if f.startswith(dst + "/")}

    def op_unlink(self) -> None:
        rel = self.pick_entry(dirs=False)
        self.say(f"unlink {rel!r}")
        os.unlink(self.p(rel))
        self.forget(rel)

    def op_mkdir(self) -> None:
        rel = f"{self.pick_dir(depth=3)}/{self.rng.choice(DIRNAMES)}"
        mode = self.rng.choice([0o755, 0o700, 0o775, 0o750])
        self.say(f"mkdir {rel!r} {mode:o}")
        os.mkdir(self.p(rel), mode)
        self.dirs.add(rel)

    def op_rmdir(self) -> None:
        dirs = sorted(d for d in self.dirs if "/" in d)
        rel = self.rng.choice(dirs) if dirs else f"{self.pick_dir()}/{self.rng.choice(DIRNAMES)}"
        self.say(f"rmdir {rel!r}")
        os.rmdir(self.p(rel))
        self.forget(rel)

    def op_chmod(self) -> None:
        rel, mode = self.pick_entry(), self.rng.choice(MODES)
        self.say(f"chmod {rel!r} {mode:o}")
        os.chmod(self.p(rel), mode)

    def op_chown(self) -> None:
        rel = self.pick_entry()
        uid, gid = self.rng.choice(IDS + [-1]), self.rng.choice(IDS + [-1])
        follow = self.rng.random() < 0.7
        self.say(f"{'chown' if follow else 'lchown'} {rel!r} {uid}:{gid}")
        os.chown(self.p(rel), uid, gid, follow_symlinks=follow)

    def op_utime(self) -> None:
        rel = self.pick_entry()
        if self.rng.random() < 0.3:
            self.say(f"utime {rel!r} now")
            os.utime(self.p(rel))
            return
        at = self.rng.randint(0, 2_000_000_000) * 1_000_000_000 + self.rng.randint(0, 999_999_999)
        mt = self.rng.randint(0, 2_000_000_000) * 1_000_000_000 + self.rng.randint(0, 999_999_999)
        self.say(f"utime {rel!r} ns=({at}, {mt})")
        os.utime(self.p(rel), ns=(at, mt))

    def op_setxattr(self) -> None:
        rel, name = self.pick_entry(), self.rng.choice(XATTRS)
        value = self.rng.randbytes(self.rng.randint(0, 100))
        flags = self.rng.choice([("", 0), ("XATTR_CREATE", os.XATTR_CREATE), ("XATTR_REPLACE", os.XATTR_REPLACE)])
        self.say(f"setxattr {rel!r} {name} {len(value)} bytes {flags[0]}")
        os.setxattr(self.p(rel), name, value, flags[1])

    def op_removexattr(self) -> None:
        rel, name = self.pick_entry(), self.rng.choice(XATTRS)
        with contextlib.suppress(OSError):  # mostly one that is there
            there = sorted(n for n in os.listxattr(self.p(rel)) if n.startswith("user."))
            if there and self.rng.random() < 0.7:
                name = self.rng.choice(there)
        self.say(f"removexattr {rel!r} {name}")
        os.removexattr(self.p(rel), name)

    def op_link(self) -> None:
        src = self.pick_file(0)
        dst = self.new_name(self.folder_of(src))
        self.say(f"link {src!r} -> {dst!r}")
        os.link(self.p(src), self.p(dst), follow_symlinks=False)
        self.forget(dst)
        (self.specials if src in self.specials else self.files).add(dst)
        if src in self.across:
            self.across.add(dst)

    def op_symlink(self) -> None:
        rel = self.new_name()
        target = self.rng.choice([self.rng.choice(NAMES), f"../{self.rng.choice(NAMES)}", "/etc/hostname",
                                  "nowhere/at/all", "x" * self.rng.randint(1, 200)])
        self.say(f"symlink {rel!r} -> {target!r}")
        os.symlink(target, self.p(rel))
        self.specials.add(rel)

    def op_mkfifo(self) -> None:
        rel, mode = self.new_name(), self.rng.choice([0o600, 0o644, 0o666])
        self.say(f"mkfifo {rel!r} {mode:o}")
        os.mkfifo(self.p(rel), mode)
        self.specials.add(rel)

    def op_fsync(self) -> None:
        if not self.fds:
            self.op_create(keep=True)
            return
        fd = self.rng.choice(sorted(self.fds))
        self.say(f"fsync fd {fd} ({self.fds[fd][0]!r})")
        os.fsync(fd)

    def op_pause(self) -> None:
        """Time for the mount's own rounds (the group commit after 5 ms, moved files' copies and the
        catalog flush every second): without pauses a whole seed's operations take a tenth of a second."""
        pause = self.rng.choice([0.01, 0.1, self.rng.uniform(0.2, 1.5)])
        self.say(f"pause {pause * 1000:.0f} ms")
        time.sleep(pause)

    # -- what runs while the mount is killed

    def keep_going(self, stop: threading.Event) -> None:
        """More random operations, until stopped (the mount is killed in the middle of one)."""
        while not stop.is_set():
            self.step()

    def big_write(self, stop: threading.Event) -> None:
        """One large write in 128 KiB pieces, until stopped or 32 MiB."""
        rel = self.pick_file(new_chance=0.5)
        trunc = self.rng.random() < 0.5
        self.say(f"write-in-flight {rel!r}{' O_TRUNC' if trunc else ''}")
        written = 0
        try:
            if not self.regular_or_absent(rel):
                raise OSError(errno.EINVAL, "not a regular file (skipped)")
            fd = os.open(self.p(rel), os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_TRUNC if trunc else 0), 0o644)
            try:
                while not stop.is_set() and written < 32 * MiB:
                    written += os.write(fd, self.rng.randbytes(128 * KiB))
            finally:
                os.close(fd)
            result = "ok"
        except OSError as e:
            result = errname(e)
        self.finished(f"{self.desc}: {written} bytes written -> {result}")

    def close_all(self) -> None:
        for fd in list(self.fds):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


# -- the kill ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    kill_after: int  # operations done before the kill phase
    mode: str  # "boundary": kill after the op (after `delay`); "midop": ops go on in a thread; "write": a big write
    delay: float  # seconds between the start of the kill phase and SIGKILL

    def text(self) -> str:
        return f"after {self.kill_after} ops, {self.mode} +{self.delay * 1000:.0f} ms"


def make_plan(seed: int, most_ops: int) -> Plan:
    rng = random.Random(f"plan-{seed}")  # apart from the ops' generator, so a plan never shifts the ops
    kill_after = rng.randint(1, most_ops)
    mode = rng.choices(["boundary", "midop", "write"], weights=[5, 3, 2])[0]
    if mode == "boundary":
        delay = rng.choice([0.0, 0.0, 0.002, 0.008, 0.05, 0.4, 1.3])
    elif mode == "midop":
        delay = rng.uniform(0.0, 0.03)
    else:
        delay = rng.uniform(0.0, 0.08)
    return Plan(kill_after, mode, delay)


# -- checking ---------------------------------------------------------------------------------------


SHORT = re.compile(r"\[found\] copies_met: (.*): has (\d+) of (\d+) copies$")
EXTRA = re.compile(r"\[found\] copies_met: (.*): has (\d+) copies, its folder wants (\d+)$")


def only_moved_copies(bad: list[str], wl: Workload) -> bool:
    """Whether every problem is a file moved into another folder (itself or in a moved directory) that
    is short of copies or has extra ones: the mount gives those their new folder's copies once a second
    (`mount.copy_moved_files`), and after a kill the next mount does (`Pool.queue_for_their_copies`);
    `check` before that reports them, by design."""
    for line in bad:
        m = SHORT.match(line) or EXTRA.match(line)
        if m is None or int(m[2]) == int(m[3]) or int(m[2]) == 0 or m[1] not in wl.across:
            return False
    return bool(bad)


def problem_lines(output: str) -> list[str]:
    """What `check` reported as problems ([found]/[fixed] lines), and ERROR logs (data at risk)."""
    return [ln for ln in output.splitlines() if ln.startswith(("[found]", "[fixed]", "homepool: error:"))]


def xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    out = {}
    for n in names:
        if n.startswith("user."):
            with contextlib.suppress(OSError):
                out[n] = os.getxattr(path, n, follow_symlinks=False)
    return out


def walk(root: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result]]:
    with os.scandir(root / rel if rel else root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        r = f"{rel}/{e.name}" if rel else e.name
        st = os.lstat(e.path)
        yield r, st
        if stat.S_ISDIR(st.st_mode):
            yield from walk(root, r)


def read_all(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        chunks = []
        while chunk := os.read(fd, MiB):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def verify(mnt: Path, drives: list[Path]) -> tuple[int, list[str]]:
    """Every entry of the mounted pool reads back, and its copies on the drives agree with it.
    Returns (entries seen, problems)."""
    problems: list[str] = []
    seen = 0
    for rel, st in walk(mnt):
        seen += 1
        mp = str(mnt / rel)
        kind = stat.S_IFMT(st.st_mode)
        want_x = xattrs(mp) if kind in (stat.S_IFREG, stat.S_IFDIR) else {}
        data = b""
        target = ""
        try:
            if kind == stat.S_IFREG:
                data = read_all(mp)
                if len(data) != st.st_size:
                    problems.append(f"{rel}: read {len(data)} bytes, stat says {st.st_size}")
            elif kind == stat.S_IFLNK:
                target = os.readlink(mp)
        except OSError as e:
            problems.append(f"{rel}: reading through the mount failed: {errname(e)}")
            continue
        copies = 0
        for d in drives:
            cp = str(d / "HomePool" / rel)
            try:
                cst = os.lstat(cp)
            except FileNotFoundError:
                if kind != stat.S_IFREG:  # folders, symlinks and FIFOs are made on every drive
                    problems.append(f"{rel}: missing on {d.name}")
                continue
            copies += 1
            where = f"{rel} on {d.name}"
            if stat.S_IFMT(cst.st_mode) != kind:
                problems.append(f"{where}: a {stat.filemode(cst.st_mode)[0]} where the mount shows "
                                f"a {stat.filemode(st.st_mode)[0]}")
                continue
            if kind != stat.S_IFLNK and stat.S_IMODE(cst.st_mode) != stat.S_IMODE(st.st_mode):
                problems.append(f"{where}: mode {stat.S_IMODE(cst.st_mode):o}, "
                                f"mount shows {stat.S_IMODE(st.st_mode):o}")
            if (cst.st_uid, cst.st_gid) != (st.st_uid, st.st_gid):
                problems.append(f"{where}: owner {cst.st_uid}:{cst.st_gid}, mount shows {st.st_uid}:{st.st_gid}")
            if kind == stat.S_IFREG:
                if cst.st_mtime_ns != st.st_mtime_ns:
                    problems.append(f"{where}: mtime {cst.st_mtime_ns}, mount shows {st.st_mtime_ns}")
                try:
                    if read_all(cp) != data:
                        problems.append(f"{where}: content differs from the mount's ({cst.st_size} vs {len(data)} B)")
                except OSError as e:
                    problems.append(f"{where}: unreadable: {errname(e)}")
            if kind in (stat.S_IFREG, stat.S_IFDIR) and (got := xattrs(cp)) != want_x:
                problems.append(f"{where}: user xattrs {sorted(got)} (values differ?) vs the mount's {sorted(want_x)}")
            if kind == stat.S_IFLNK:
                with contextlib.suppress(OSError):
                    if os.readlink(cp) != target:
                        problems.append(f"{where}: symlink to {os.readlink(cp)!r}, mount shows {target!r}")
        if kind == stat.S_IFREG and copies == 0:
            problems.append(f"{rel}: no copy on any drive")
    return seen, problems


# -- one seed ---------------------------------------------------------------------------------------


@dataclass
class Outcome:
    seed: int
    ok: bool = True
    kind: str = ""  # "moved-copies": only files moved into another folder were not at its copies after the kill
    line: str = ""
    details: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fail(out: Outcome, why: str, *details: str) -> None:
    out.ok = False
    out.reasons.append(why)
    out.details.append(f"  FAILED: {why}")
    out.details.extend(details)


def indent(text: str | list[str], prefix: str = "    ") -> str:
    lines = text.splitlines() if isinstance(text, str) else text
    return "\n".join(prefix + ln for ln in lines) if lines else prefix + "(nothing)"


@dataclass
class Options:
    most_ops: int = 150
    save: Path | None = None  # where failed seeds' state directories go
    check_debug: str = ""  # --debug-modules for the check after the kill
    allow_moved_copies: bool = False  # pass a seed whose only problem is moved files not at their copies


def run_seed(seed: int, workdir: Path, opts: Options) -> Outcome:
    t0 = time.monotonic()
    out = Outcome(seed)
    base = workdir / f"seed{seed}"
    drives_dir, state, mnt = base / "drives", base / "state", base / "mnt"
    proc: subprocess.Popen[bytes] | None = None
    wl: Workload | None = None
    plan = make_plan(seed, opts.most_ops)
    checks: list[str] = []
    stop = threading.Event()
    try:
        if base.exists():
            sweep(base)
        mnt.mkdir(parents=True)
        state.mkdir()
        cp = run([sys.executable, str(POOLBENCH), "drives", "up", str(drives_dir), "--sizes", DRIVE_SIZES])
        drives = [Path(ln) for ln in must(cp).split() if ln.startswith("/")]
        if len(drives) != 3:
            raise StressError(f"poolbench made {drives}")
        must(homepool(state, "init"))
        for d in drives:
            must(homepool(state, "drive", "add", str(d), "--allow-shared-device", "--label", d.name))
        for name, copies in FOLDERS.items():
            must(homepool(state, "folder", "set", name, "--copies", str(copies)))

        proc = start_mount(state, mnt)
        wl = Workload(mnt, random.Random(seed))
        for _ in range(plan.kill_after):
            wl.step()
        worker: threading.Thread | None = None
        if plan.mode == "midop":
            worker = threading.Thread(target=wl.keep_going, args=(stop,), daemon=True)
        elif plan.mode == "write":
            worker = threading.Thread(target=wl.big_write, args=(stop,), daemon=True)
        if worker is not None:
            worker.start()
        time.sleep(plan.delay)
        in_flight, at_kill, ok_at_kill, kill_clock = wl.current, wl.done, wl.ok, wl.clock()
        os.kill(proc.pid, signal.SIGKILL)  # the daemon itself (start_mount checked it holds /dev/fuse)
        stop.set()
        wl.shown = at_kill + (1 if in_flight else 0)  # (what the thread tries after the kill is noise)
        proc.wait(timeout=20)
        if worker is not None:
            worker.join(timeout=20)
            if worker.is_alive():
                raise StressError("the operations' thread still hangs 20 s after the kill")
        wl.close_all()
        lazy_unmount(mnt)
        if os.path.ismount(mnt):
            raise StressError(f"{mnt} still mounted after a lazy unmount")
        killed = f"killed at {kill_clock} {plan.text()}" + (f", in flight: {in_flight}" if in_flight else "")
        out.details.append(f"  {killed}")

        # 1. After the crash: opening the pool finishes the journal; check must find nothing.
        shutil.copytree(state, base / "state-after-kill", ignore=shutil.ignore_patterns("*.sock"))
        cp = homepool(state, "check", verbose=True, debug=opts.check_debug, timeout=CHECK_TIMEOUT)
        checks.append(f"check after the kill (exit {cp.returncode}):\n{indent(cp.stdout)}")
        bad = problem_lines(cp.stdout)
        check1 = "ok" if cp.returncode == 0 and not bad else f"FAIL (exit {cp.returncode}, {len(bad)} problem lines)"
        if check1 != "ok" and only_moved_copies(bad, wl):
            out.kind = "moved-copies"
            check1 = f"FAIL: only {len(bad)} moved file(s) not at their folder's copies"
            if opts.allow_moved_copies:
                check1 = f"{len(bad)} moved file(s) not at their folder's copies (allowed)"
            else:
                fail(out, "check after the kill: files moved into another folder before the kill are not at its "
                     "copies yet (the next mount makes them; --allow-moved-copies passes this)")
        elif check1 != "ok":
            fail(out, "check after the kill reported problems")
        finished = sum("finished an interrupted" in ln or "took in" in ln for ln in cp.stdout.splitlines())

        # 2. Mount again: every file reads, every copy agrees with the mount.
        remount = verified = "-"
        try:
            proc = start_mount(state, mnt)
            remount = "ok"
        except StressError as e:
            proc = None
            remount = "FAIL"
            fail(out, f"the remount failed: {e}")
        if proc is not None:
            time.sleep(1.2)  # the mount gives moved files their copies within a second
            try:
                seen, problems = verify(mnt, drives)
            except OSError as e:
                seen, problems = 0, [f"walking the mount failed: {e}"]
            verified = f"ok ({seen} entries)" if not problems else f"FAIL ({len(problems)})"
            if problems:
                fail(out, "the remounted pool disagrees with its drives", indent(problems[:40]))
            cp = homepool(state, "unmount", str(mnt), timeout=60)
            if cp.returncode != 0:
                fail(out, f"`homepool unmount` exited {cp.returncode}", indent(cp.stdout))
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                fail(out, "the mount did not end after `homepool unmount`")
            proc = None

        # 3. After a clean unmount, check again.
        cp = homepool(state, "check", verbose=True, timeout=CHECK_TIMEOUT)
        checks.append(f"check after the remount (exit {cp.returncode}):\n{indent(cp.stdout)}")
        bad = problem_lines(cp.stdout)
        check2 = "ok" if cp.returncode == 0 and not bad else f"FAIL (exit {cp.returncode})"
        if check2 != "ok":
            fail(out, "check after the remount and a clean unmount reported problems")

        out.line = (f"seed {seed}: ops {at_kill} ({ok_at_kill} ok), killed at {kill_clock.strip()} {plan.text()}; "
                    f"check: {check1}"
                    f" ({finished} finished); remount: {remount}; verify: {verified}; check2: {check2}")
    except StressError as e:
        fail(out, str(e))
    except (OSError, subprocess.SubprocessError) as e:  # the tool's own trouble: the seed fails, the run goes on
        fail(out, f"{type(e).__name__}: {e}")
    finally:
        stop.set()
        stop_process(proc)
        if not out.ok:
            if wl is not None:
                out.details.append(f"  last {SHOWN_OPS} operations (of {wl.shown or wl.done}; the last one in "
                                   "flight if the kill was in the middle of one):")
                out.details.append(indent(wl.last()))
            out.details.extend("  " + c for c in checks)
            out.details.append(f"  mount.log warnings/errors:\n{indent(log_alerts(state / 'mount.log'))}")
            if opts.save is not None:
                save_state(opts.save, seed, base, wl, checks)
        sweep(base)
    if not out.line:
        out.line = f"seed {seed}: ops {wl.done if wl else 0}, plan {plan.text()}; setup or kill FAILED"
    out.seconds = time.monotonic() - t0
    out.line += f"  [{out.seconds:.1f} s]"
    return out


def log_alerts(path: Path) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    keep = [ln for ln in lines if ln.startswith(("homepool: warning:", "homepool: error:", "Traceback", "==="))]
    return keep[-40:]


def save_state(save: Path, seed: int, base: Path, wl: Workload | None, checks: list[str]) -> None:
    """A failed seed's state directory (catalog, logs) as the kill left it and at the end, its operations
    and check outputs, for a closer look."""
    dest = save / f"seed{seed}"
    with contextlib.suppress(OSError):
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name in ("state-after-kill", "state"):
            if (base / name).is_dir():
                shutil.copytree(base / name, dest / name, ignore=shutil.ignore_patterns("*.sock"), symlinks=True)
        (dest / "ops.txt").write_text("\n".join(wl.history if wl else []) + "\n")
        (dest / "checks.txt").write_text("\n\n".join(checks) + "\n")


# -- cleaning up ------------------------------------------------------------------------------------


def sweep(top: Path) -> None:
    """Remove everything made below `top` (the work directory, or one seed's directory): mounts (the
    pool's first, then the drives, deepest first), loop drives, files."""
    if not top.exists():
        return
    seed_dirs = [top] if top.name.startswith("seed") else sorted(top.glob("seed*"))
    for mp in mounts_under(top):
        if mp.endswith("/mnt"):
            lazy_unmount(mp)
    for seed_dir in seed_dirs:
        if (seed_dir / "drives").is_dir():
            with contextlib.suppress(StressError):
                run([sys.executable, str(POOLBENCH), "drives", "down", str(seed_dir / "drives")], timeout=120)
    for mp in mounts_under(top):  # whatever is left: lazily
        lazy_unmount(mp)
    if mounts_under(top):
        print(f"crash_stress: warning: still mounted below {top}: {mounts_under(top)}; not deleting", file=sys.stderr)
        return
    for seed_dir in seed_dirs:
        shutil.rmtree(seed_dir, ignore_errors=True)


def leftovers(workdir: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            fstype = parts[parts.index("-") + 1]
            if fstype.startswith("fuse") and "homepool" in line:
                out.append(f"mount {_unescape(parts[4])} ({fstype})")
    cp = subprocess.run(["losetup", "-a"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out += [f"loop {ln}" for ln in cp.stdout.splitlines() if str(workdir) in ln]
    return out


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seeds", type=int, default=20, help="how many seeds to run (default 20)")
    ap.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/homepool-stress"),
                    help="where drives, pools and mounts are made (removed at the end)")
    ap.add_argument("--ops", type=int, default=150, help="most operations before the kill (default 150)")
    ap.add_argument("--save-failed", type=Path, default=None, metavar="DIR",
                    help="copy a failed seed's state directory, operations and check outputs to DIR/seedN")
    ap.add_argument("--stop-on-failure", action="store_true", help="stop at the first failed seed")
    ap.add_argument("--allow-moved-copies", action="store_true",
                    help="pass a seed whose check after the kill finds only files moved into another folder that "
                    "are short of copies or have extra ones (by design the next mount fixes them)")
    ap.add_argument("--check-debug", default="", metavar="MODULES",
                    help="--debug-modules for the check after the kill (e.g. pool), to see what it finishes")
    args = ap.parse_args(argv)

    if os.geteuid() != 0:
        print("crash_stress: needs root (loop drives, mounts)", file=sys.stderr)
        return 2
    for tool in (HOMEPOOL, POOLBENCH):
        if not tool.exists():
            print(f"crash_stress: {tool} not found", file=sys.stderr)
            return 2
    workdir: Path = args.workdir.resolve()
    if len(workdir.parts) < 3:
        print(f"crash_stress: refusing {workdir} as the work directory (too close to /)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _terminate)
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    t0 = time.monotonic()
    interrupted = False
    try:
        sweep(workdir)  # a previous run's leftovers
        for seed in range(args.first, args.first + args.seeds):
            o = run_seed(seed, workdir, Options(args.ops, args.save_failed, args.check_debug, args.allow_moved_copies))
            outcomes.append(o)
            print(("PASS " if o.ok else "FAIL ") + o.line, flush=True)
            if not o.ok:
                print("\n".join(o.details), flush=True)
                print(f"  reproduce: {sys.executable} {sys.argv[0]} --seeds 1 --first {seed} --ops {args.ops}",
                      flush=True)
                if args.stop_on_failure:
                    break
    except KeyboardInterrupt:
        interrupted = True
        print("\ncrash_stress: interrupted; cleaning up", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not leave drives behind
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sweep(workdir)
        if created:
            with contextlib.suppress(OSError):
                workdir.rmdir()
        deadline = time.monotonic() + 10
        while (left := leftovers(workdir)) and time.monotonic() < deadline:
            time.sleep(0.5)  # a loop device's detach may finish a moment later
        if left:
            print("crash_stress: warning: left behind: " + "; ".join(left), file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    failed = [o.seed for o in outcomes if not o.ok]
    moved = [o.seed for o in outcomes if o.kind == "moved-copies" and len(o.reasons) == 1]
    total = time.monotonic() - t0
    per = sum(o.seconds for o in outcomes) / len(outcomes) if outcomes else 0.0
    print(f"\n{len(outcomes)} seed(s): {len(outcomes) - len(failed)} passed, {len(failed)} failed"
          + (f" (seeds {', '.join(map(str, failed))})" if failed else "")
          + (f"; of these, only moved files not at their folder's copies after the kill: seeds "
             f"{', '.join(map(str, moved))}" if moved else "")
          + f"; {total:.0f} s in all, {per:.1f} s a seed" + ("; INTERRUPTED" if interrupted else ""))
    return 130 if interrupted else (1 if failed else 0)


if __name__ == "__main__":
    sys.exit(main())

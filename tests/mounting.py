"""Mounting the pool in the tests: a real `homepool mount --foreground` in a child process,
always unmounted (and the child reaped) afterwards, even when the test fails."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from homepool import mount as mount_mod
from homepool.errors import FuseUnavailable


def fuse_or_skip() -> None:
    try:
        mount_mod.check_fuse()
    except FuseUnavailable as e:
        pytest.skip(f"LOUD SKIP: {e}")


def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition, bounded by the deadline


def force_unmount(mnt: Path) -> None:
    for cmd in (["fusermount3", "-u", str(mnt)], ["umount", str(mnt)], ["umount", "-l", str(mnt)]):
        if not os.path.ismount(mnt):
            return
        subprocess.run(cmd, capture_output=True)


@contextmanager
def mount_pool(state_dir: Path, tmp_path: Path, name: str = "mnt", env: dict[str, str] | None = None,
               allow_other: bool = False) -> Iterator[tuple[Path, subprocess.Popen]]:
    """The pool mounted at tmp/NAME by `homepool mount --foreground` (with `env` added to its
    environment; `allow_other` lets other users in); always unmounted after. The pool must not
    be open for writing in the test (the mount is its writer)."""
    fuse_or_skip()
    mnt = tmp_path / name
    mnt.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    with open(log, "ab") as out:
        cmd = [sys.executable, "-m", "homepool", "--pool", str(state_dir), "-v", "mount", "-f", str(mnt)]
        if allow_other:
            cmd.append("--allow-other")
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    try:
        wait_for(lambda: os.path.ismount(mnt) or proc.poll() is not None, what="the mount")
        assert os.path.ismount(mnt), log.read_text()
        yield mnt, proc
    finally:
        force_unmount(mnt)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def open_copies(pid: int) -> list[str]:
    """The drive files a mount daemon has open, from /proc."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if "/HomePool/" in target:
                out.append(target)
    return out

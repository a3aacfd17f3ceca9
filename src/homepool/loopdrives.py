"""Throwaway drives: sparse image files formatted ext4 and loop-mounted (needs root).

Used by `homepool demo` and by the tests, which need real filesystems of different sizes.
`down()` always unmounts, detaches and deletes what `up()` made, even after a failure
half-way, and is safe to call twice.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

MKFS = ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0"]


def available() -> str | None:
    """None if loop drives can be made here, else why not."""
    if os.geteuid() != 0:
        return "loop-mounted drives need root"
    for tool in ("mkfs.ext4", "mount", "umount", "losetup"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/dev/loop-control").exists():
        return "no /dev/loop-control (loop devices unavailable)"
    return None


class LoopDrives:
    def __init__(self, base: Path, sizes: list[int], fstype: str = "ext4") -> None:
        self.base = base
        self.sizes = sizes
        self.fstype = fstype
        self.images = base / ".images"
        self.mounts: list[Path] = []

    def __enter__(self) -> list[Path]:
        try:
            return self.up()
        except BaseException:
            self.down()
            raise

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> list[Path]:
        self.images.mkdir(parents=True, exist_ok=True)
        for i, size in enumerate(self.sizes, 1):
            img = self.images / f"d{i}.img"
            mnt = self.base / f"d{i}"
            with open(img, "wb") as f:
                f.truncate(size)
            mkfs = MKFS if self.fstype == "ext4" else [f"mkfs.{self.fstype}", "-q", "-f"]
            subprocess.run([*mkfs, str(img)], check=True, capture_output=True)
            mnt.mkdir(exist_ok=True)
            subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True, capture_output=True)
            self.mounts.append(mnt)
        return list(self.mounts)

    def down(self) -> None:
        points = [self.base / f"d{i}" for i in range(1, len(self.sizes) + 1)]
        for mnt in reversed(points):
            if os.path.ismount(mnt):
                _umount(mnt)
        if self.images.exists():
            for img in self.images.glob("*.img"):
                out = subprocess.run(["losetup", "-j", str(img)], capture_output=True, text=True).stdout
                for line in out.splitlines():
                    subprocess.run(["losetup", "-d", line.split(":")[0]], capture_output=True)
            shutil.rmtree(self.images, ignore_errors=True)
        for mnt in points:
            if mnt.is_dir() and not os.path.ismount(mnt):
                shutil.rmtree(mnt, ignore_errors=True)
        self.mounts = []


FIFREEZE, FITHAW = 0xC0045877, 0xC0045878


def freeze(drive: Path, frozen: bool) -> None:
    """`fsfreeze -f` / `-u` on a drive's filesystem (every write to it waits while frozen, as
    on a disk that stopped answering), without a child process: one would inherit open
    files of the mount, and its close would wait for the mount."""
    fd = os.open(drive, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FIFREEZE if frozen else FITHAW, struct.pack("i", 0))
    finally:
        os.close(fd)


def _umount(mnt: Path, timeout: float = 10.0) -> None:
    """Unmount, retrying while busy; fall back to a lazy unmount."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        r = subprocess.run(["umount", str(mnt)], capture_output=True, text=True)
        if r.returncode == 0 or not os.path.ismount(mnt):
            return
        if time.monotonic() > deadline:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            return
        time.sleep(delay)  # waiting for a busy mount to be released; bounded by `timeout`
        delay = min(delay * 2, 0.5)

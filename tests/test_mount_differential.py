"""Differential test (fsx-style): the same random operations on the mount and on a plain
directory on the test machine's own filesystem must give the same results, errno for errno,
byte for byte, after every step."""

from __future__ import annotations

import errno
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from homepool.pool import Pool

from .helpers import assert_clean
from .mounting import mount_pool

NAMES = ["a", "b", "c", "d/a", "d/b", "d/e/f", "e"]
OPS = 1000


def outcome(fn: Callable[[], object]) -> object:
    """What an operation gave: its value, or the errno it failed with."""
    try:
        return ("ok", fn())
    except OSError as e:
        return ("errno", errno.errorcode.get(e.errno or 0, e.errno))


def describe(root: Path) -> dict[str, tuple]:
    """Everything a program could see of a tree: type, size, mode bits and content."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in sorted(dirs + files):
            p = Path(dirpath) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_nlink)
            else:
                out[rel] = ("file", st.st_size, stat.S_IMODE(st.st_mode), st.st_nlink, p.read_bytes())
    return out


class Runner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.fds: dict[str, int] = {}

    def p(self, name: str) -> Path:
        return self.root / name

    def apply(self, op: tuple) -> object:
        kind, *args = op
        p = self.p(args[0]) if args else None
        if kind == "write":
            _, name, off, data = op

            def write() -> int:
                fd = os.open(self.p(name), os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    return os.pwrite(fd, data, off)
                finally:
                    os.close(fd)
            return outcome(write)
        if kind == "append":
            def append() -> int:
                fd = os.open(p, os.O_WRONLY | os.O_APPEND)
                try:
                    return os.write(fd, args[1])
                finally:
                    os.close(fd)
            return outcome(append)
        if kind == "create_excl":
            return outcome(lambda: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, args[1])))
        if kind == "trunc_open":
            return outcome(lambda: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC)))
        if kind == "truncate":
            return outcome(lambda: os.truncate(p, args[1]))
        if kind == "read":
            def read() -> bytes:
                with open(p, "rb") as f:
                    f.seek(args[1])
                    return f.read(args[2])
            return outcome(read)
        if kind == "unlink":
            return outcome(lambda: os.unlink(p))
        if kind == "mkdir":
            return outcome(lambda: os.mkdir(p, 0o755))
        if kind == "rmdir":
            return outcome(lambda: os.rmdir(p))
        if kind == "rename":
            return outcome(lambda: os.rename(p, self.p(args[1])))
        if kind == "symlink":
            return outcome(lambda: os.symlink(args[1], p))
        if kind == "link":
            return outcome(lambda: os.link(p, self.p(args[1]), follow_symlinks=False))
        if kind == "chmod":
            return outcome(lambda: os.chmod(p, args[1], follow_symlinks=False) if not os.path.islink(p) else None)
        if kind == "stat":
            def st() -> tuple:
                s = os.lstat(p)
                if stat.S_ISDIR(s.st_mode):
                    return stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), 0, s.st_nlink
                return stat.S_IFMT(s.st_mode), stat.S_IMODE(s.st_mode), s.st_size, s.st_nlink
            return outcome(st)
        if kind == "listdir":
            return outcome(lambda: sorted(os.listdir(p)))
        if kind == "open_unlink_read":
            def our() -> bytes:
                with open(p, "rb") as f:
                    os.unlink(p)
                    return f.read()
            return outcome(our)
        raise ValueError(kind)


def random_op(rng: random.Random) -> tuple:
    name = rng.choice(NAMES)
    other = rng.choice(NAMES)
    kind = rng.choices(
        ["write", "append", "create_excl", "trunc_open", "truncate", "read", "unlink", "mkdir", "rmdir",
         "rename", "symlink", "link", "chmod", "stat", "listdir", "open_unlink_read"],
        weights=[20, 5, 4, 3, 5, 10, 6, 6, 4, 8, 2, 5, 3, 6, 3, 2])[0]
    if kind == "write":
        return (kind, name, rng.choice([0, 0, 100, 4095, 70_000]), rng.randbytes(rng.choice([1, 10, 5000, 150_000])))
    if kind == "append":
        return (kind, name, rng.randbytes(rng.randint(1, 3000)))
    if kind == "create_excl":
        return (kind, name, rng.choice([0o600, 0o644]))
    if kind == "truncate":
        return (kind, name, rng.choice([0, 1, 3000, 100_000]))
    if kind == "read":
        return (kind, name, rng.choice([0, 10, 4096]), rng.choice([1, 100, 200_000]))
    if kind in ("rename", "link"):
        return (kind, name, other)
    if kind == "symlink":
        return (kind, name, other)
    if kind == "chmod":
        return (kind, name, rng.choice([0o600, 0o640, 0o755]))
    if kind == "listdir":
        return (kind, rng.choice(["d", "d/e", "a"]))
    return (kind, name)


# 2 copies; 1 copy; 1 copy with writes passed through to the drive too (the capped test drives
# have less room than a writer normally needs for that)
@pytest.mark.parametrize(("folder", "env"), [("Documents", {}), ("Videos", {}),
                                             ("Videos", {"HOMEPOOL_PASSTHROUGH_ROOM": "0"})],
                         ids=["2-copies", "1-copy", "1-copy-writes-passed-through"])
def test_the_mount_behaves_like_a_local_filesystem(dir_pool: Pool, state_dir: Path, tmp_path: Path,
                                                   folder: str, env: dict[str, str]) -> None:
    dir_pool.close()
    plain = tmp_path / "plain"
    plain.mkdir()
    seed = os.environ.get("HOMEPOOL_DIFF_SEED", "homepool")  # another seed explores other sequences
    rng = random.Random(f"{seed}-{folder}" + ("-passed-through" if env else ""))  # (each case its own sequence)
    with mount_pool(state_dir, tmp_path, env=env) as (mnt, _):
        ours, ref = Runner(mnt / folder), Runner(plain)
        for step in range(OPS):
            op = random_op(rng)
            got, want = ours.apply(op), ref.apply(op)
            assert got == want, f"step {step}: {op[:2]} gave {got!r:.200} on the mount, {want!r:.200} on a plain dir"
            assert describe(mnt / folder) == describe(plain), f"trees differ after step {step}: {op[:2]}"
        assert describe(mnt / folder) == describe(plain)
    with Pool.open(state_dir, write=False) as pool:
        assert_clean(pool)

"""The FUSE mount: reading what the pool holds, mount and unmount, failover (real mounts)."""

from __future__ import annotations

import errno
import fcntl
import json
import mmap
import os
import re
import signal
import stat
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import pytest

from homepool import mount as mount_mod
from homepool.cli import main
from homepool.drives import Drive
from homepool.fuse import ops as ops_mod
from homepool.fuse import session as session_mod
from homepool.fuse.ops import PoolOperations
from homepool.fuse.session import Ctx, FuseError
from homepool.loopdrives import freeze
from homepool.pool import LiveFile, Pool

from .helpers import copies_on_disk, out_of_memory, reader
from .mounting import force_unmount, fuse_or_skip, mount_pool, open_copies, wait_for


@pytest.fixture
def mount(dir_pool: Pool, state_dir: Path, tmp_path: Path) -> Iterator[Callable[[], tuple[Path, subprocess.Popen]]]:
    """mount() -> (mount point, daemon): closes the test's pool first (the mount is the writer)."""
    with ExitStack() as stack:
        def start() -> tuple[Path, subprocess.Popen]:
            dir_pool.close()
            return stack.enter_context(mount_pool(state_dir, tmp_path))

        yield start


def fill(pool: Pool) -> dict[str, bytes]:
    files = {"Photos/2010/beach.jpg": os.urandom(300_000), "Photos/2010/notes.txt": b"sunny",
             "Documents/a.txt": b"letter", "Videos/film.mkv": os.urandom(3_000_000)}
    for path, data in files.items():
        pool.makedirs(path.rpartition("/")[0])
        pool.write_bytes(path, data, mode=0o640, mtime_ns=1_300_000_000_000_000_000)
    return files


def test_the_tree_and_attributes_match_the_pool(dir_pool: Pool, state_dir: Path, mount) -> None:
    files = fill(dir_pool)
    mnt, _ = mount()
    with reader(state_dir) as pool:
        assert sorted(os.listdir(mnt)) == sorted(n.name for n in pool.listdir(""))
        assert sorted(os.listdir(mnt / "Photos/2010")) == ["beach.jpg", "notes.txt"]
        for path, data in files.items():
            st = os.stat(mnt / path)
            assert st.st_size == len(data)
            assert st.st_mtime_ns == 1_300_000_000_000_000_000
            assert st.st_mode & 0o7777 == 0o640
            assert st.st_ino == pool.stat(path).id
    assert os.path.isdir(mnt / "Photos/2010")


def test_reads_return_the_content(dir_pool: Pool, mount) -> None:
    files = fill(dir_pool)
    mnt, _ = mount()
    for path, data in files.items():
        assert (mnt / path).read_bytes() == data
    with open(mnt / "Videos/film.mkv", "rb") as f:
        f.seek(1_000_003)
        assert f.read(5000) == files["Videos/film.mkv"][1_000_003:1_005_003]


def test_missing_names_and_case(dir_pool: Pool, mount) -> None:
    fill(dir_pool)
    mnt, _ = mount()
    with pytest.raises(FileNotFoundError):
        os.stat(mnt / "Photos/nope.jpg")
    assert os.path.isdir(mnt / "photos")  # folders match as Windows would


def test_commands_that_change_the_pool_say_it_is_mounted(state_dir: Path, mount, tmp_path: Path, capsys) -> None:
    mnt, proc = mount()
    (tmp_path / "src").mkdir()
    assert main(["--pool", str(state_dir), "import", str(tmp_path / "src"), "Documents"]) == 6
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"mounted at {mnt}" in err and str(proc.pid) in err
    assert main(["--pool", str(state_dir), "status"]) == 0  # reading commands still work


@pytest.mark.expect_errors
def test_a_read_falls_over_to_the_other_copy(dir_pool: Pool, dir_drives: list[Path], mount) -> None:
    dir_pool.write_bytes("Photos/only-twice.jpg", b"precious" * 1000)
    mnt, _ = mount()
    for copy in copies_on_disk(dir_drives, "Photos/only-twice.jpg")[:1]:
        copy.unlink()  # one copy lost behind the pool's back
    assert (mnt / "Photos/only-twice.jpg").read_bytes() == b"precious" * 1000


def test_statfs_shows_the_pool(state_dir: Path, mount) -> None:
    mnt, _ = mount()
    st = os.statvfs(mnt)
    with reader(state_dir) as pool:
        size, free = pool.space()
    assert st.f_blocks * st.f_frsize == size // 4096 * 4096
    assert abs(st.f_bavail * st.f_frsize - free) < 1 << 20


def test_sigterm_unmounts_cleanly(mount) -> None:
    mnt, proc = mount()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert not os.path.ismount(mnt)


def test_mount_and_unmount_commands(dir_pool: Pool, state_dir: Path, tmp_path: Path, capsys,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fuse_or_skip()
    dir_pool.close()
    mnt = tmp_path / "m"
    assert main(["--pool", str(state_dir), "mount", str(tmp_path / "missing")]) == 3
    assert "mkdir -p" in capsys.readouterr().err
    assert main(["--pool", str(state_dir), "unmount", str(tmp_path)]) == 3
    assert "not a homepool mount" in capsys.readouterr().err
    mnt.mkdir()
    try:
        monkeypatch.setenv("HOMEPOOL_STUCK_AFTER", "soon")  # a tuning knob set wrong: one line, no mount
        assert main(["--pool", str(state_dir), "mount", str(mnt)]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "HOMEPOOL_STUCK_AFTER='soon' is not a number" in err, err
        assert not os.path.ismount(mnt)
        monkeypatch.delenv("HOMEPOOL_STUCK_AFTER")
        assert main(["--pool", str(state_dir), "mount", str(mnt)]) == 0
        assert os.path.ismount(mnt) and mount_mod.is_homepool_mount(mnt)
        assert main(["--pool", str(state_dir), "mount", str(mnt)]) == 3
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "already mounted" in err
        assert mount_mod.pidfile(state_dir, mnt).exists()
        assert main(["--pool", str(state_dir), "unmount", str(mnt)]) == 0
        assert not os.path.ismount(mnt)
        assert not mount_mod.pidfile(state_dir, mnt).exists()  # the daemon is gone too
    finally:
        force_unmount(mnt)


def test_concurrent_readers_spread_over_the_copies(dir_pool: Pool, mount) -> None:
    dir_pool.write_bytes("Music/song.flac", b"la" * 100_000)
    mnt, proc = mount()
    with open(mnt / "Music/song.flac", "rb") as a, open(mnt / "Music/song.flac", "rb") as b:
        assert a.read(10) == b.read(10) == b"lalalalala"
        held = open_copies(proc.pid)
        assert len(held) == 2 and held[0] != held[1], held  # one reader per drive


@pytest.mark.parametrize(("slow_read_us", "handed_on"), [(None, 0), ("0", 1)])
def test_a_small_read_that_waits_for_a_slow_drive_lets_other_requests_go_on(state_dir: Path, loop_drives,
                                                                              tmp_path: Path, slow_read_us: str | None,
                                                                              handed_on: int) -> None:
    """A small read (under 128 KiB) that the page cache holds is answered by the thread that
    read it. One that must wait for the drive hands the reading of requests on to another
    thread first, so that other programs' requests do not wait for a seek, if such reads
    have lately taken 1 ms or more (HOMEPOOL_SLOW_READ_US; none has at first: then a read is
    made at once, and counted as one from a drive by how long it took). Both read the file."""
    a, b = loop_drives(64, 64)
    data = os.urandom(1 << 20)
    with Pool.create(state_dir) as pool:
        pool.add_drive(a)
        pool.add_drive(b)
        pool.set_copies("Documents", 2)  # (read through the mount's daemon, not passed through)
        pool.write_bytes("Documents/film.mkv", data)
    for copy in copies_on_disk([a, b], "Documents/film.mkv"):
        out_of_memory(copy)
    env = {"HOMEPOOL_SLOW_READ_US": slow_read_us} if slow_read_us is not None else {}
    with mount_pool(state_dir, tmp_path, env=env) as (mnt, proc):
        log = tmp_path / "mnt.log"
        buf = mmap.mmap(-1, 4096)  # (O_DIRECT: one 4 KiB READ request each, none read ahead)
        fd = os.open(mnt / "Documents/film.mkv", os.O_RDONLY | os.O_DIRECT)
        try:
            for _ in range(2):  # from the drive, then from memory: answered at once
                assert os.preadv(fd, [buf], 8192) == 4096 and buf[:] == data[8192:12288]
                waited, handed = _reads_waited(log, proc.pid)
                assert handed == handed_on
                if handed_on:  # (asked memory first: it knows)
                    assert waited == 1
        finally:
            os.close(fd)


def _reads_waited(log: Path, pid: int) -> tuple[int, int]:
    """How many small reads the mount has sent to a drive, and how many of them handed the
    turn on first (its log, on SIGUSR1)."""
    before = log.read_text()
    _served(log, pid)
    m = re.search(r"READ \d+ \((?:\d+ µs; )?(\d+) from a drive, (\d+) handed on\)", log.read_text()[len(before):])
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def test_extended_attributes_come_from_the_copies(dir_pool: Pool, dir_drives: list[Path], mount) -> None:
    dir_pool.write_bytes("Documents/tagged.txt", b"x")
    for copy in copies_on_disk(dir_drives, "Documents/tagged.txt"):
        os.setxattr(copy, "user.origin", b"scanner")
    mnt, _ = mount()
    assert os.getxattr(mnt / "Documents/tagged.txt", "user.origin") == b"scanner"
    assert "user.origin" in os.listxattr(mnt / "Documents/tagged.txt")
    with pytest.raises(OSError) as e:
        os.getxattr(mnt / "Documents/tagged.txt", "user.missing")
    assert e.value.errno == errno.ENODATA


def test_a_folder_renamed_over_an_empty_one_keeps_its_own_owner_mode_and_attributes(
        dir_pool: Pool, dir_drives: list[Path], mount) -> None:
    """rename(2) of a folder over an empty one replaces it: on every drive too. Found by a
    crash stress: the drives merged the moved folder's entries into the replaced one, which
    kept its own mode, owner and attributes there, while the catalog had the moved folder's."""
    mnt, _ = mount()
    os.mkdir(mnt / "Documents/p", 0o755)
    os.mkdir(mnt / "Documents/q", 0o700)
    os.setxattr(mnt / "Documents/q", "user.q", b"1")
    (mnt / "Documents/q/a.txt").write_bytes(b"A")
    os.rename(mnt / "Documents/q", mnt / "Documents/p")
    for where in [mnt, *(d / "HomePool" for d in dir_drives)]:
        moved = where / "Documents/p"
        assert stat.S_IMODE(moved.stat().st_mode) == 0o700, where
        assert os.getxattr(moved, "user.q") == b"1", where
        assert not (where / "Documents/q").exists()
    assert [p.read_bytes() for p in copies_on_disk(dir_drives, "Documents/p/a.txt")] == [b"A", b"A"]


EXT4_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32): the filesystem fails every I/O from now on


@pytest.mark.expect_errors
def test_a_drive_failing_under_a_reader_is_invisible_to_it(state_dir: Path, loop_drives, tmp_path: Path) -> None:
    a, b = loop_drives(64, 64)
    data = os.urandom(8 << 20)
    with Pool.create(state_dir) as pool:
        pool.add_drive(a)
        pool.add_drive(b)
        pool.write_bytes("Videos/film.mkv", data)
        pool.set_copies("Videos", 2)
    with mount_pool(state_dir, tmp_path) as (mnt, proc):
        with open(mnt / "Videos/film.mkv", "rb", buffering=0) as f:
            first = f.read(1 << 20)
            (held,) = open_copies(proc.pid)
            dying = a if held.startswith(str(a)) else b
            fd = os.open(dying, os.O_RDONLY)
            try:  # the drive under the reader fails: every read there is EIO from now on
                fcntl.ioctl(fd, EXT4_IOC_SHUTDOWN, struct.pack("I", 2))
            finally:
                os.close(fd)
            rest = f.read()
        assert first + rest == data
    with Pool.open(state_dir, write=False) as pool:
        states = {d.root: state for d, state in pool.replicas("Videos/film.mkv")}
        assert states[dying] == "bad"


def test_a_file_replaced_through_the_mount_is_read_fresh(dir_pool: Pool, mount) -> None:
    dir_pool.write_bytes("Documents/v.txt", b"version 1")
    mnt, _ = mount()
    assert (mnt / "Documents/v.txt").read_bytes() == b"version 1"
    assert (mnt / "Documents/v.txt").read_bytes() == b"version 1"  # cached: same content
    (mnt / "Documents/v.txt").write_bytes(b"version 2")
    assert (mnt / "Documents/v.txt").read_bytes() == b"version 2"
    tmp = mnt / "Documents/v.txt.tmp"
    tmp.write_bytes(b"version 3")
    os.replace(tmp, mnt / "Documents/v.txt")  # how editors save
    assert (mnt / "Documents/v.txt").read_bytes() == b"version 3"


def _served(log: Path, pid: int) -> tuple[dict[str, int], int]:
    """SIGUSR1: the mount logs its request counts so far; returns them and the inodes the
    kernel holds."""
    start = len(log.read_bytes())
    os.kill(pid, signal.SIGUSR1)
    found: list[str] = []

    def logged() -> bool:
        found[:] = [x for x in log.read_bytes()[start:].decode().splitlines() if "requests served so far" in x]
        return bool(found)

    wait_for(logged, what="the mount's request counts")
    counts = {m.group(1): int(m.group(2)) for m in re.finditer(r"([A-Z_]+) (\d+)", found[0])}
    held = re.search(r"the kernel holds (\d+) inode", found[0])
    assert held is not None, found[0]
    return counts, int(held.group(1))


def test_listings_send_attributes_the_kernel_does_not_hold(dir_pool: Pool, state_dir: Path, tmp_path: Path) -> None:
    """READDIRPLUS leaves out the attributes of inodes the kernel holds. The mount learns that
    it dropped them from FORGET: a listing after that must carry them, or every stat of it
    would cost a LOOKUP."""
    if os.geteuid() != 0:
        pytest.skip("LOUD SKIP: dropping the kernel's inodes (/proc/sys/vm/drop_caches) needs root")
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, proc):
        log = tmp_path / "mnt.log"
        (mnt / "Documents/many").mkdir()
        for i in range(100):
            (mnt / f"Documents/many/f{i}").write_bytes(b"x" * i)
        assert _served(log, proc.pid)[1] >= 100
        # Dentries and inodes, machine-wide (harmless, and the only way to make the kernel FORGET).
        Path("/proc/sys/vm/drop_caches").write_text("2")
        wait_for(lambda: _served(log, proc.pid)[1] < 20, what="the kernel's FORGETs")
        before, _ = _served(log, proc.pid)
        sizes = {e.name: e.stat().st_size for e in os.scandir(mnt / "Documents/many")}
        assert sizes == {f"f{i}": i for i in range(100)}
        after, held = _served(log, proc.pid)
        assert after.get("LOOKUP", 0) - before.get("LOOKUP", 0) < 10  # the listing gave the attributes
        assert held >= 100


def test_a_listing_gives_each_kind_its_type_and_inode(dir_pool: Pool, state_dir: Path, tmp_path: Path) -> None:
    """A listing read while the kernel holds some of the entries and not others (those it
    holds go by name, type and inode alone; the others with their attributes): every kind of
    entry, an extra name among them, lists as what `stat` finds."""
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        d = mnt / "Documents/kinds"
        d.mkdir()
        for i in range(40):
            (d / f"f{i:02}").write_bytes(b"x" * i)
        (d / "sub").mkdir()
        os.symlink("f01", d / "sym")
        os.mkfifo(d / "fifo")
        os.link(d / "f03", d / "again")
        held = {p.name: p.stat().st_ino for p in d.iterdir() if p.name < "f20"}  # these the kernel holds
        (d / "late").write_bytes(b"late")  # a change: the kernel drops its listing
        listed = {e.name: (e.inode(), e.is_dir(follow_symlinks=False), e.is_symlink(),
                           e.is_file(follow_symlinks=False)) for e in os.scandir(d)}
        assert set(listed) == {f"f{i:02}" for i in range(40)} | {"sub", "sym", "fifo", "again", "late"}
        for name, (ino, is_dir, is_link, is_file) in listed.items():
            st = os.lstat(d / name)
            assert ino == st.st_ino == held.get(name, st.st_ino), name
            assert (is_dir, is_link, is_file) == (stat.S_ISDIR(st.st_mode), stat.S_ISLNK(st.st_mode),
                                                  stat.S_ISREG(st.st_mode)), name
            if name.startswith("f") and name != "fifo":
                assert st.st_size == int(name[1:]), name  # attributes sent with the listing are right
        assert listed["again"][0] == listed["f03"][0] and os.lstat(d / "again").st_nlink == 2


def test_a_listing_read_while_entries_come_and_go_shows_each_of_the_others_once(
        dir_pool: Pool, state_dir: Path, tmp_path: Path) -> None:
    """A listing is read a page at a time, each page from the catalog as it is then (the mount
    keeps no directory handles). A program that removes each entry it is shown and adds
    another meanwhile (a page holds a few dozen entries) is still shown every entry that was
    there from the start once, and nothing twice."""
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, proc):
        d = mnt / "Documents/churn"
        d.mkdir()
        first = {f"f{i:03}" for i in range(400)}
        for name in first:
            (d / name).write_bytes(b"x")
        seen: list[str] = []
        with os.scandir(d) as it:
            for e in it:
                seen.append(e.name)
                if e.name in first:
                    os.unlink(e.path)
                    (d / f"new-{e.name}").write_bytes(b"y")
                    os.rename(d / f"new-{e.name}", d / f"moved-{e.name}")
        assert len(seen) == len(set(seen)), [n for n in seen if seen.count(n) > 1][:5]
        assert first <= set(seen)
        assert sorted(os.listdir(d)) == sorted(f"moved-{n}" for n in first)
        counts, _ = _served(tmp_path / "mnt.log", proc.pid)
        # The kernel asked to open a directory once, was told to go without, and did.
        assert counts.get("OPENDIR", 0) <= 1 and "RELEASEDIR" not in counts, counts


@pytest.mark.parametrize("folder", ["Documents", "Videos"])
def test_small_writes_ask_about_capabilities_once_per_file(dir_pool: Pool, state_dir: Path, tmp_path: Path,
                                                           folder: str) -> None:
    """Before a write the kernel asks whether the file has `security.capability` (a write
    must clear it), unless the filesystem clears such things itself (HANDLE_KILLPRIV_V2, which
    the mount takes): then it asks once per file, not once per write call (tar writes a
    file 10 KiB at a time, and each question is a round trip)."""
    dir_pool.close()
    with mount_pool(state_dir, tmp_path, env={"HOMEPOOL_PASSTHROUGH_ROOM": "0"}) as (mnt, proc):
        log = tmp_path / "mnt.log"
        before, _ = _served(log, proc.pid)
        with open(mnt / f"{folder}/chunks.bin", "wb", buffering=0) as f:
            for _ in range(100):
                f.write(b"x" * 4096)
        after, _ = _served(log, proc.pid)
        assert (mnt / f"{folder}/chunks.bin").stat().st_size == 409600
        assert after.get("GETXATTR", 0) - before.get("GETXATTR", 0) <= 2, (before, after)


def test_a_hung_drive_holds_up_changes_but_not_lookups_listings_or_reads(state_dir: Path, loop_drives,
                                                                        tmp_path: Path, capsys) -> None:
    """A drive that stops answering (frozen: every write to it waits) holds up the change
    made there (a delete returns once recorded: its drive step waits), and the changes
    waiting for the pool meanwhile. Lookups, listings, `stat` and opens for reading wait a
    second, then go by the catalog as last committed; a file being read goes on, and
    `homepool status` says what holds the mount up (as its log does), until it lets go."""
    a, b = loop_drives(64, 64)
    data = os.urandom(8 << 20)
    with Pool.create(state_dir) as pool:
        pool.add_drive(a)
        pool.add_drive(b)
        pool.set_copies("Documents", 2)
        pool.write_bytes("Documents/film.mkv", data)
        pool.write_bytes("Documents/old.txt", b"going")
        pool.write_bytes("Music/song.ogg", b"la" * 500)
        pool.set_copies("Users", 2)
        pool.write_bytes("Users/letter.txt", b"dear " * 1000)
    with mount_pool(state_dir, tmp_path, env={"HOMEPOOL_STUCK_AFTER": "1"}) as (mnt, proc), \
            open(mnt / "Documents/film.mkv", "rb", buffering=0) as f:
        assert f.read(4096) == data[:4096]
        os.stat(mnt / "Documents/old.txt")
        done: dict[str, object] = {}

        def run(what: str, fn: Callable[[], object]) -> threading.Thread:
            def go() -> None:
                try:
                    done[what] = fn()
                except OSError as e:
                    done[what] = e
            t = threading.Thread(target=go, daemon=True)
            t.start()
            return t

        request_threads = lambda: _threads_named(proc.pid, re.compile(r"fuse-\d+"))  # noqa: E731
        freeze(a, True)
        try:
            unlink = run("unlink", lambda: os.unlink(mnt / "Documents/old.txt"))
            wait_for(lambda: _waits_for_a_frozen_drive(proc.pid), what="the delete's drive step to wait for the drive")
            unlink.join(timeout=20)
            assert "unlink" in done and done["unlink"] is None, done  # recorded: gone from the pool
            # (each in a folder of its own: the kernel holds the folder of a change for it)
            change = run("mkdir", lambda: os.mkdir(mnt / "Photos/new"))
            gone = [mnt / "new.txt", mnt / "Documents/old.txt"]
            looks = [run("missing", lambda: any(map(os.path.exists, gone))),
                     run("stat", lambda: os.stat(mnt / "Music/song.ogg").st_size),
                     run("listing", lambda: sorted(os.listdir(mnt / "Music"))),
                     run("read", lambda: os.pread(f.fileno(), 4096, 6 << 20)),
                     # opened and closed again and again (a `grep -r`): no open or close waits
                     run("opens", lambda: {(mnt / "Music/song.ogg").read_bytes() for _ in range(20)}),
                     run("kept", lambda: os.open(mnt / "Users/letter.txt", os.O_RDONLY))]
            for t in looks:
                t.join(timeout=20)
            assert done.get("missing") is False and done.get("stat") == 1000, done
            assert done.get("listing") == ["song.ogg"] and done.get("read") == data[6 << 20:(6 << 20) + 4096], done
            assert done.get("opens") == {b"la" * 500}, done
            kept = done["kept"]
            assert isinstance(kept, int) and os.read(kept, 5) == b"dear ", done  # open past the thaw, below
            # More requests waiting for the pool than the mount started threads for: it starts more.
            writers = [run(f"writer {i}", lambda: os.open(mnt / "Users/letter.txt", os.O_WRONLY)) for i in range(20)]
            another_look = run("another look", lambda: os.path.exists(mnt / "Music/not-yet.txt"))
            another_look.join(timeout=20)
            assert done.get("another look") is False and all(w.is_alive() for w in writers), done
            assert request_threads() >= 22  # 22 requests wait: more threads read
            assert change.is_alive(), done  # it waits for the drive
            wait_for(lambda: (state_dir / "stuck").exists(), what="the mount to say it is held up")
            capsys.readouterr()
            status = run("status", lambda: main(["--pool", str(state_dir), "status", "--json"]))
            status.join(timeout=20)
            assert done.get("status") == 0, done
            alerts = json.loads(capsys.readouterr().out)["alerts"]
            assert any("has been held up since" in a for a in alerts), alerts
        finally:
            freeze(a, False)
        unlink.join(timeout=20)
        change.join(timeout=20)
        assert done["unlink"] is None and done["mkdir"] is None, done
        assert os.read(kept, 10_000) == b"dear " * 999  # a handle opened during the stall, now the pool's
        os.close(kept)
        for i, w in enumerate(writers):
            w.join(timeout=20)
            os.close(done[f"writer {i}"])  # type: ignore[arg-type]
        wait_for(lambda: request_threads() <= 1 + session_mod.SPARE_THREADS,  # (one reads, the rest wait)
                 what="the request threads started meanwhile to end")
        wait_for(lambda: not (state_dir / "stuck").exists(), what="the mount to say it answers again")
        assert os.listdir(mnt / "Photos") == ["new"]
        log = (tmp_path / "mnt.log").read_text()  # (each "held" has its "answers again": a busy machine may add some)
        assert 1 <= log.count("a change has held the pool for 1 s") == log.count("the pool answers again"), log
    assert copies_on_disk([a, b], "Documents/old.txt") == []


def _threads_named(pid: int, name: re.Pattern[str]) -> int:
    """How many threads of process `pid` have a name that matches `name`."""
    count = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):  # (the thread ended)
            count += bool(name.fullmatch((task / "comm").read_text().strip()))
    return count


def _waits_for_a_frozen_drive(pid: int) -> bool:
    """Whether a thread of process `pid` waits to write to a frozen filesystem."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            if (task / "wchan").read_text() == "percpu_rwsem_wait":
                return True
        except OSError:
            continue  # the thread ended
    return False


def _live_ops(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> tuple[PoolOperations, Ctx]:
    """In process, looks and opens that wait 0.2 s for the lock: the mount's operations on
    `pool`, and a request's context."""
    monkeypatch.setattr(ops_mod, "LOOK_WAIT", 0.2)
    pool.go_live()
    pool.drives()  # (the snapshot an open past the stall goes by; a mount has it from the start)
    return PoolOperations(pool), Ctx(0, 0, os.getpid())


class _Holder:
    """A thread standing in for a change that holds the lock (a drive under it does not
    answer), until `go`, which may hand it work to do under the lock first."""

    def __init__(self, ops: PoolOperations) -> None:
        self._held, self._go = threading.Event(), threading.Event()
        self._then: tuple[Callable[[], object], ...] = ()
        self.thread = threading.Thread(target=self._hold, args=(ops,))
        self.thread.start()
        assert self._held.wait(10)

    def _hold(self, ops: PoolOperations) -> None:
        with ops.lock:
            self._held.set()
            assert self._go.wait(30)
            for fn in self._then:
                fn()

    def go(self, *then: Callable[[], object]) -> None:
        self._then = then
        self._go.set()
        self.thread.join(10)


def _writing_new_bin_in_music(pool: Pool, monkeypatch: pytest.MonkeyPatch) -> tuple:
    """In process, looks that wait 0.2 s for the lock: the mount's operations, a request's
    context, the folder Music, and Music/new.bin (attributes, handle) with 5,000 bytes written
    through its open handle (the catalog still says 0)."""
    ops, ctx = _live_ops(pool, monkeypatch)
    music = pool.child(1, "Music")
    assert music is not None
    new, opened = ops.create(ctx, music.id, b"new.bin", 0o644, os.O_RDWR)
    ops.write(opened.fh, 0, memoryview(b"x" * 5000))
    return ops, ctx, music, new, opened


def test_a_look_past_a_stuck_change_reads_what_was_committed(dir_pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with the lock held by a thread standing in for a change stuck on a drive:
    a lookup and a listing answer from the catalog as last committed, for the kernel to keep
    a second only; the `stat` of a file open for writing (its size is ahead of the catalog)
    waits for the lock after all, and gets the size written."""
    dir_pool.write_bytes("Music/song.ogg", b"la" * 500)
    ops, ctx, music, new, opened = _writing_new_bin_in_music(dir_pool, monkeypatch)
    monkeypatch.setattr(ops_mod, "STATFS_TTL", 0.0)  # (asked again each time: from the pool if it can)
    space = ops.statfs(ctx)
    stuck = _Holder(ops)
    answers: dict[str, object] = {}
    try:
        song = ops.lookup(ctx, music.id, b"song.ogg")
        assert song is not None and song.size == 1000
        assert ops.answer_timeout() == ops_mod.GLANCE_TIMEOUT
        # The folder's time since new.bin came, kept in memory (the catalog has it a second later).
        kept = dir_pool.dir_time(music.id)
        assert kept is not None and kept != dir_pool.cat.node(music.id).mtime_ns
        assert ops.getattr(ctx, music.id).mtime_ns == kept
        assert ops.answer_timeout() == ops_mod.GLANCE_TIMEOUT
        # The next looks do not wait for the lock again (an `ls -l` would wait a second per name).
        monkeypatch.setattr(ops_mod, "LOOK_WAIT", 60)
        def list_music() -> None:
            answers["listing"] = {name: attr for name, _, _, attr, _ in ops.readdir(music.id, 0, 100, held=())}
            answers["timeout"] = ops.answer_timeout()
            answers["space"] = ops.statfs(ctx)  # the last answer, at once

        looking = threading.Thread(target=list_music)
        looking.start()
        looking.join(timeout=30)
        assert not looking.is_alive()
        listing: dict = answers.pop("listing")  # type: ignore[assignment]
        assert listing.keys() == {b"song.ogg", b"new.bin"}
        assert listing[b"new.bin"] is None and listing[b"song.ogg"].size == 1000  # type: ignore[union-attr]
        assert answers.pop("timeout") == ops_mod.GLANCE_TIMEOUT and answers.pop("space") == space

        def stat_the_new_file() -> None:
            answers["new"] = ops.getattr(ctx, new.ino)
            answers["timeout"] = ops.answer_timeout()

        waiting = threading.Thread(target=stat_the_new_file)
        waiting.start()
        waiting.join(timeout=1)
        assert waiting.is_alive(), answers  # only the lock can tell
    finally:
        stuck.go()
    waiting.join(timeout=10)
    assert answers["new"].size == 5000 and answers["timeout"] == ops_mod.ATTR_TIMEOUT, answers  # type: ignore[attr-defined]
    ops.release(opened.fh)
    ops.close()


def test_an_open_past_a_stuck_change_joins_the_pool_when_the_lock_is_free(dir_pool: Pool,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, the lock held by a thread standing in for a stuck change: an open for
    reading gets a handle on a copy the catalog names, and reads it. One closed at once
    needs no lock; one still open is counted among the file's handles and the drive's
    readers as soon as the lock is taken. An open for writing, and one of a file open
    for writing here, wait for the lock."""
    dir_pool.write_bytes("Music/song.ogg", b"la" * 500)
    ops, ctx, music, new, opened = _writing_new_bin_in_music(dir_pool, monkeypatch)
    song = dir_pool.child(music.id, "song.ogg")
    assert song is not None
    stuck = _Holder(ops)
    answers: dict[str, object] = {}
    try:
        quick = ops.open(ctx, song.id, os.O_RDONLY)
        assert ops.read(quick.fh, 0, 10) == b"la" * 5
        ops.release(quick.fh)  # before the lock is free: nothing waits
        kept = ops.open(ctx, song.id, os.O_RDONLY)
        assert ops.read(kept.fh, 990, 100) == b"la" * 5 and kept.backing_id is None
        assert dir_pool.handles(song.id) == [] and ops._readers == {}  # the pool learns of it later
        waiting = [threading.Thread(target=lambda: answers.update(write=ops.open(ctx, song.id, os.O_WRONLY))),
                   threading.Thread(target=lambda: answers.update(new=ops.open(ctx, new.ino, os.O_RDONLY)))]
        for t in waiting:
            t.start()
        for t in waiting:
            t.join(timeout=1)
            assert t.is_alive(), answers  # only the lock can tell
    finally:
        stuck.go()
    for t in waiting:
        t.join(timeout=10)
    with ops.lock:
        (handle,) = [h for h in dir_pool.handles(song.id) if not h.writable]
        (reading_new,) = [h for h in dir_pool.handles(new.ino) if not h.writable]
        assert Counter(ops._readers) == Counter([*handle.fds, *reading_new.fds])  # each reader counted once
    for o in (kept, answers["write"], answers["new"], opened):
        ops.release(o.fh)  # type: ignore[attr-defined]
    assert dir_pool.handles(song.id) == [] and sum(ops._readers.values()) == 0
    ops.close()


class _Stuck:
    """A change that hangs on a drive, in process: `hang` is put in place of a pool or drive
    method, and hangs the thread named "stuck" there (once), until `go`."""

    def __init__(self) -> None:
        self.there, self.go = threading.Event(), threading.Event()

    def hang(self, fn: Callable[..., object], when: Callable[..., bool] = lambda *a: True) -> Callable[..., object]:
        def hanging(*a: object, **k: object) -> object:
            if threading.current_thread().name == "stuck" and not self.there.is_set() and when(*a):
                self.there.set()
                assert self.go.wait(30)
            return fn(*a, **k)
        return hanging

    def run(self, fn: Callable[[], object]) -> threading.Thread:
        t = threading.Thread(target=fn, name="stuck")
        t.start()
        assert self.there.wait(10)
        return t


def _opening(ops: PoolOperations, ctx: Ctx, ino: int, answers: dict[str, object], waits: bool) -> threading.Thread:
    """An open for reading on a thread of its own: given time to finish (`waits`: to show that
    it waits), then handed back."""
    t = threading.Thread(target=lambda: answers.update(opened=ops.open(ctx, ino, os.O_RDONLY)))
    t.start()
    t.join(timeout=1 if waits else 20)
    return t


def _stat_that_waits(ops: PoolOperations, ctx: Ctx, ino: int, answers: dict[str, object]) -> threading.Thread:
    """A `stat` on a thread of its own, given a second, in which it must not answer (it waits
    for the lock); its answer goes to answers["stat"]."""
    t = threading.Thread(target=lambda: answers.update(stat=ops.getattr(ctx, ino)))
    t.start()
    t.join(timeout=1)
    assert t.is_alive(), answers
    return t


@pytest.mark.parametrize("hung", [0, 1])
def test_an_open_past_a_stuck_rename_never_reads_the_file_it_replaced(dir_pool: Pool, monkeypatch: pytest.MonkeyPatch,
                                                                       hung: int) -> None:
    """A rename over a file is recorded before its drive steps. While one of them hangs (on
    the first drive or the second), the name means the new file, but on a drive not renamed
    yet its path holds the replaced one, here of the same size and time (`cp -p`): an open
    of that name waits for the rename; it never reads the file replaced."""
    dir_pool.write_bytes("Documents/data.txt", b"old!" * 50, mtime_ns=1_500_000_000_000_000_000)  # (two copies)
    dir_pool.write_bytes("Documents/new.txt", b"new!" * 50, mtime_ns=1_500_000_000_000_000_000)
    ops, ctx = _live_ops(dir_pool, monkeypatch)
    docs = dir_pool.child(1, "Documents")
    new = dir_pool.child(docs.id, "new.txt")
    assert docs is not None and new is not None
    order = [r.drive_id for r in dir_pool.cat.replicas(new.id)]  # (the order its copies are renamed in)
    stuck = _Stuck()
    monkeypatch.setattr(Drive, "rename", stuck.hang(Drive.rename, lambda d, *_: d.id == order[hung]))
    renaming = stuck.run(lambda: ops.rename(ctx, docs.id, b"new.txt", docs.id, b"data.txt", 0))
    answers: dict[str, object] = {}
    try:
        opening = _opening(ops, ctx, new.id, answers, waits=True)
        assert opening.is_alive(), answers
    finally:
        stuck.go.set()
        renaming.join(10)
    opening.join(10)
    fh = answers["opened"].fh  # type: ignore[attr-defined]
    assert ops.read(fh, 0, 1000) == b"new!" * 50
    ops.release(fh)
    ops.close()


def test_an_open_past_a_stuck_unlink_is_a_file_deleted_while_open(dir_pool: Pool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An unlink that hangs before its record: the file opened past it meanwhile is, once
    the unlink is done, what a file deleted while open is (readable, nlink 0)."""
    dir_pool.write_bytes("Music/song.ogg", b"la" * 500)
    ops, ctx = _live_ops(dir_pool, monkeypatch)
    music, found = dir_pool.child(1, "Music"), dir_pool.lookup("Music/song.ogg")
    assert music is not None and found is not None
    song = found.id
    stuck = _Stuck()
    monkeypatch.setattr(dir_pool, "drives", stuck.hang(dir_pool.drives))
    unlinking = stuck.run(lambda: ops.unlink(ctx, music.id, b"song.ogg"))
    answers: dict[str, object] = {}
    try:
        assert not _opening(ops, ctx, song, answers, waits=False).is_alive()
    finally:
        stuck.go.set()
        unlinking.join(10)
    fh = answers["opened"].fh  # type: ignore[attr-defined]
    assert ops.getattr(ctx, song).nlink == 0 and ops.read(fh, 0, 10) == b"la" * 5
    ops.release(fh)
    with pytest.raises(FuseError):
        ops.getattr(ctx, song)
    ops.close()


def test_a_file_deleted_after_an_open_past_the_stall_is_stat_as_deleted(dir_pool: Pool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The unlink holding the lock records the delete, then hangs on the drive: a `stat` of
    the file opened past it before waits for the lock (the catalog no longer has the file,
    the pool does not know the handle yet), then says nlink 0, not "no such file"."""
    ops, ctx, (song,) = _songs(dir_pool, monkeypatch, "song.ogg")
    music = dir_pool.child(1, "Music")
    assert music is not None
    before, after = _Stuck(), _Stuck()
    monkeypatch.setattr(dir_pool, "drives", before.hang(dir_pool.drives))
    monkeypatch.setattr(Drive, "unlink", after.hang(Drive.unlink))
    unlinking = before.run(lambda: ops.unlink(ctx, music.id, b"song.ogg"))
    answers: dict[str, object] = {}
    try:
        assert not _opening(ops, ctx, song, answers, waits=False).is_alive()
        before.go.set()
        assert after.there.wait(10)  # recorded, and hanging on the drive
        stat = _stat_that_waits(ops, ctx, song, answers)
    finally:
        before.go.set()
        after.go.set()
        unlinking.join(10)
    stat.join(10)
    assert answers["stat"].nlink == 0  # type: ignore[attr-defined]
    ops.release(answers["opened"].fh)  # type: ignore[attr-defined]
    ops.close()


def test_a_handle_opened_past_a_stall_reads_the_file_as_it_is_once_adopted(dir_pool: Pool,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The change that held the lock may drop the copy a handle opened past it reads (a
    folder's copies lowered, say): once the pool adopts the handle it reads a copy the file
    has, and writes made after show in it, as in a handle opened under the lock."""
    dir_pool.write_bytes("Documents/notes.txt", b"old!" * 50)  # (two copies)
    ops, ctx = _live_ops(dir_pool, monkeypatch)
    notes = dir_pool.lookup("Documents/notes.txt")
    assert notes is not None
    read_from: list[int] = []

    def drop_the_copy_read() -> None:
        read_from.extend(d for f, _ in ops._unadopted.values() for d in f.fds)
        dir_pool._run("drop", {"path": "Documents/notes.txt", "drives": read_from, "links": []})

    stuck = _Holder(ops)
    try:
        opened = ops.open(ctx, notes.id, os.O_RDONLY)
        assert ops.read(opened.fh, 0, 8) == b"old!old!"
    finally:
        stuck.go(drop_the_copy_read)
    with ops.lock:
        assert not set(ops._files[opened.fh].fds) & set(read_from)  # on the copy left
    writer = ops.open(ctx, notes.id, os.O_WRONLY)
    ops.write(writer.fh, 0, memoryview(b"NEW!" * 50))
    ops.flush(writer.fh)
    ops.release(writer.fh)
    assert ops.read(opened.fh, 0, 8) == b"NEW!NEW!"
    ops.release(opened.fh)
    ops.close()


def test_a_file_being_opened_under_the_lock_is_not_opened_past_it(dir_pool: Pool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """An open that hangs under the lock decides how the kernel does the file's I/O (say,
    passed through): another open of that file waits for it, while other files open."""
    ops, ctx, (song, other) = _songs(dir_pool, monkeypatch, "song.ogg", "other.ogg")
    stuck = _Stuck()
    monkeypatch.setattr(dir_pool, "open_file", stuck.hang(dir_pool.open_file))
    first: dict[str, object] = {}
    holder = stuck.run(lambda: first.update(opened=ops.open(ctx, song, os.O_RDONLY)))
    second: dict[str, object] = {}
    third: dict[str, object] = {}
    try:
        waiting = _opening(ops, ctx, song, second, waits=True)
        assert waiting.is_alive(), second
        assert not _opening(ops, ctx, other, third, waits=False).is_alive()
    finally:
        stuck.go.set()
        holder.join(10)
    waiting.join(10)
    for answers in (first, second, third):
        ops.release(answers["opened"].fh)  # type: ignore[attr-defined]
    ops.close()


def test_an_open_goes_past_the_lock_only_when_it_has_been_held_a_while(dir_pool: Pool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """After a stall, looks do not wait until one finds the lock free; an open still goes
    past the lock only when its holder has had it LOOK_WAIT (a change that hangs), not when
    a change is merely under way: that one it waits for."""
    ops, ctx, (song,) = _songs(dir_pool, monkeypatch, "song.ogg")
    monkeypatch.setattr(ops_mod, "LOOK_WAIT", 30)
    ops._held_up = True  # a look waited in vain before
    changing = _Holder(ops)
    answers: dict[str, object] = {}
    try:
        assert _opening(ops, ctx, song, answers, waits=True).is_alive()
    finally:
        changing.go()
    wait_for(lambda: "opened" in answers, what="the open to take the lock")
    assert ops._unadopted == {} and len(dir_pool.handles(song)) == 1  # opened under the lock
    ops.release(answers["opened"].fh)  # type: ignore[attr-defined]
    ops.close()


def _songs(pool: Pool, monkeypatch: pytest.MonkeyPatch, *names: str) -> tuple[PoolOperations, Ctx, list[int]]:
    """`_live_ops`, with these files in Music (their ids)."""
    for name in names:
        pool.write_bytes(f"Music/{name}", name.encode() * 100)
    ops, ctx = _live_ops(pool, monkeypatch)
    return ops, ctx, [pool.lookup(f"Music/{n}").id for n in names]  # type: ignore[union-attr]


def test_an_open_past_a_stall_gives_way_to_one_made_under_the_lock_meanwhile(
        dir_pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """An open past the stall that is slow on its drive while the stall ends and the file is
    opened under the lock (which decides how the kernel does its I/O) is not registered past
    the lock: it is made under the lock too."""
    ops, ctx, (song,) = _songs(dir_pool, monkeypatch, "song.ogg")
    stand_in = _Holder(ops)
    slow = _Stuck()
    monkeypatch.setattr(Drive, "open", slow.hang(Drive.open))
    answers: dict[str, object] = {}
    past = slow.run(lambda: answers.update(past=ops.open(ctx, song, os.O_RDONLY)))  # on its drive, past the lock
    try:
        stand_in.go()
        under = ops.open(ctx, song, os.O_RDONLY)
    finally:
        slow.go.set()
    past.join(20)
    assert not past.is_alive() and ops._unadopted == {}, answers
    with ops.lock:
        assert len(dir_pool.handles(song)) == 2
    for o in (under, answers["past"]):
        ops.release(o.fh)  # type: ignore[attr-defined]
    ops.close()


def test_a_read_failing_before_the_handover_blames_the_copy_it_read(dir_pool: Pool,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A read through a handle opened past a stall fails (its copy went with the change that
    held the lock); when the read gets the lock, the handle has moved to the file's copy now:
    the read goes on there, and that copy is not marked bad."""
    dir_pool.write_bytes("Documents/notes.txt", b"old!" * 50)  # (two copies)
    ops, ctx = _live_ops(dir_pool, monkeypatch)
    notes = dir_pool.lookup("Documents/notes.txt")
    assert notes is not None
    stand_in = _Holder(ops)
    opened = ops.open(ctx, notes.id, os.O_RDONLY)
    (gone,) = ops._files[opened.fh].fds
    read, failing = LiveFile.read, [True]

    def failing_once(f: LiveFile, size: int, off: int, wait: bool = True) -> bytes:
        if failing.pop() if failing else False:
            raise OSError(errno.EIO, "the copy went")
        return read(f, size, off, wait)

    monkeypatch.setattr(LiveFile, "read", failing_once)
    answers: dict[str, object] = {}
    reading = threading.Thread(target=lambda: answers.update(data=ops.read(opened.fh, 0, 8)))
    reading.start()
    stand_in.go(lambda: dir_pool._run("drop", {"path": "Documents/notes.txt", "drives": [gone], "links": []}))
    reading.join(20)
    assert answers.get("data") == b"old!old!", answers
    assert all(r.state == "ok" for r in dir_pool.cat.replicas(notes.id))
    ops.release(opened.fh)
    ops.close()


def test_a_stat_while_handles_opened_past_a_stall_are_handed_over_waits(dir_pool: Pool,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Handles opened past a stall are handed to the pool one by one, each looked at on its
    drive: a `stat` meanwhile of one deleted by the change that held the lock waits for the
    handover, and says nlink 0 (not "no such file")."""
    ops, ctx, (first, song) = _songs(dir_pool, monkeypatch, "a.ogg", "song.ogg")
    music = dir_pool.child(1, "Music")
    assert music is not None
    stand_in = _Holder(ops)
    handles = [ops.open(ctx, ino, os.O_RDONLY) for ino in (first, song)]  # past the lock
    stand_in.go(lambda: dir_pool.remove(music.id, "song.ogg", rmdir=False))
    slow = _Stuck()
    monkeypatch.setattr(Drive, "lstat", slow.hang(Drive.lstat))
    handover = slow.run(lambda: ops.lock.acquire() and ops.lock.release())  # (first is looked at first)
    answers: dict[str, object] = {}
    try:
        stat = _stat_that_waits(ops, ctx, song, answers)
    finally:
        slow.go.set()
        handover.join(10)
    stat.join(10)
    assert answers["stat"].nlink == 0  # type: ignore[attr-defined]
    for o in handles:
        ops.release(o.fh)
    ops.close()


def test_an_open_past_a_stall_that_ends_meanwhile_never_reads_another_file(dir_pool: Pool,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An open past the stall that is slow on its drive while the stall ends and renames land
    (the file moved aside, another of its size and time put in its place, as `cp -p` makes):
    the copy it opened is not the file's any more, so it opens the file under the lock."""
    dir_pool.write_bytes("Documents/data.txt", b"old!" * 50, mtime_ns=1_500_000_000_000_000_000)  # (two copies)
    dir_pool.write_bytes("Documents/new.txt", b"new!" * 50, mtime_ns=1_500_000_000_000_000_000)
    ops, ctx = _live_ops(dir_pool, monkeypatch)
    docs, data = dir_pool.child(1, "Documents"), dir_pool.lookup("Documents/data.txt")
    assert docs is not None and data is not None
    stand_in = _Holder(ops)
    slow = _Stuck()
    monkeypatch.setattr(Drive, "open", slow.hang(Drive.open))
    answers: dict[str, object] = {}
    opening = slow.run(lambda: answers.update(opened=ops.open(ctx, data.id, os.O_RDONLY)))  # on its drive
    try:
        stand_in.go()
        ops.rename(ctx, docs.id, b"data.txt", docs.id, b"data.bak", 0)
        ops.rename(ctx, docs.id, b"new.txt", docs.id, b"data.txt", 0)
    finally:
        slow.go.set()
    opening.join(20)
    fh = answers["opened"].fh  # type: ignore[attr-defined]
    assert ops.read(fh, 0, 8) == b"old!old!"
    ops.release(fh)
    ops.close()


def test_a_stat_as_a_handle_opened_past_a_stall_is_handed_over_waits(dir_pool: Pool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A `stat` past the stall of a file opened past it and deleted since, while the handle is
    handed to the pool between the stat's look at the pool and at the catalog: it still
    waits for the lock (then nlink 0), never "no such file"."""
    ops, ctx, (song,) = _songs(dir_pool, monkeypatch, "song.ogg")
    music = dir_pool.child(1, "Music")
    assert music is not None
    held, delete_now, hand_over, handed, let_go = (threading.Event() for _ in range(5))

    def stuck_change() -> None:
        with ops.lock:
            held.set()
            assert delete_now.wait(30)
            dir_pool.remove(music.id, "song.ogg", rmdir=False)
            assert hand_over.wait(30)
            ops.lock.acquire()  # (taken again: the handover runs)
            ops.lock.release()
            handed.set()
            assert let_go.wait(30)

    stuck = threading.Thread(target=stuck_change)
    stuck.start()
    assert held.wait(10)
    opened = ops.open(ctx, song, os.O_RDONLY)  # past the lock
    delete_now.set()
    held_in_memory = dir_pool.held_in_memory

    def handed_over_meanwhile(node_id: int) -> bool:
        answer = held_in_memory(node_id)
        if threading.current_thread().name == "looking" and not handed.is_set():
            hand_over.set()
            assert handed.wait(10)
        return answer

    monkeypatch.setattr(dir_pool, "held_in_memory", handed_over_meanwhile)
    answers: dict[str, object] = {}
    looking = threading.Thread(target=lambda: answers.update(stat=ops.getattr(ctx, song)), name="looking")
    try:
        looking.start()
        looking.join(timeout=1)
        assert looking.is_alive(), answers
    finally:
        hand_over.set()
        let_go.set()
        stuck.join(10)
    looking.join(10)
    assert answers["stat"].nlink == 0  # type: ignore[attr-defined]
    ops.release(opened.fh)
    ops.close()


def test_a_look_waits_while_a_closing_writer_is_recorded(dir_pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """In process: between the moment the last handle of a file written is let go and the
    moment the catalog has its size, a glance cannot tell (it used to answer the size from
    before the writes, which the kernel would have cut the file's cache to): the `stat` waits
    for the release, and gets the size written."""
    ops, ctx, music, new, opened = _writing_new_bin_in_music(dir_pool, monkeypatch)
    recording, let_go = threading.Event(), threading.Event()
    record_file = dir_pool.record_file

    def record_slowly(*a: object, **k: object) -> None:
        recording.set()
        assert let_go.wait(30)
        record_file(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(dir_pool, "record_file", record_slowly)
    release = threading.Thread(target=ops.release, args=(opened.fh,))
    release.start()
    answers: dict[str, object] = {}
    try:
        assert recording.wait(10)
        looking = threading.Thread(target=lambda: answers.update(new=ops.getattr(ctx, new.ino)))
        looking.start()
        looking.join(timeout=1)
        assert looking.is_alive(), answers
    finally:
        let_go.set()
        release.join(10)
    looking.join(10)
    assert answers["new"].size == 5000, answers  # type: ignore[attr-defined]
    ops.close()

"""Changing the pool while it is mounted: commands ask the mount over its control socket."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from homepool.cli import main
from homepool.pool import Pool

from .helpers import assert_clean, copies_on_disk, reader
from .mounting import mount_pool, wait_for


def test_folder_copies_change_while_mounted(dir_pool: Pool, state_dir: Path, tmp_path: Path,
                                            dir_drives: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        for i in range(3):
            (mnt / f"Documents/f{i}").write_bytes(b"%d" % i * 1000)
        os.chown(mnt / "Documents/f0", 1234, 5678)
        os.chmod(mnt / "Documents/f0", 0o640)
        busy = open(mnt / "Documents/busy", "wb")  # noqa: SIM115 - open across the change on purpose
        try:
            busy.write(b"before ")
            busy.flush()
            assert main(["--pool", str(state_dir), "folder", "set", "documents", "--copies", "1"]) == 0
            assert "Folder Documents: 2 -> 1 copy." in capsys.readouterr().out
            for i in range(3):  # done at once...
                assert len(copies_on_disk(dir_drives, f"Documents/f{i}")) == 1
            # ...but a file open for writing keeps every copy it writes to until it is closed
            assert len(copies_on_disk(dir_drives, "Documents/busy")) == 2
            busy.write(b"after")
        finally:
            busy.close()
        # The kernel sends the release just after close() returns.
        wait_for(lambda: len(copies_on_disk(dir_drives, "Documents/busy")) == 1, what="the copy to go")
        assert [c.read_bytes() for c in copies_on_disk(dir_drives, "Documents/busy")] == [b"before after"]
        assert (mnt / "Documents/busy").read_bytes() == b"before after"

        assert main(["--pool", str(state_dir), "folder", "set", "Documents", "--copies", "2"]) == 0
        assert all(len(copies_on_disk(dir_drives, f"Documents/f{i}")) == 2 for i in range(3))
        # The copies made now are plain files like the first: same owner, mode and times.
        first, made = (c.stat() for c in copies_on_disk(dir_drives, "Documents/f0"))
        assert (first.st_uid, first.st_gid) == (made.st_uid, made.st_gid) == (1234, 5678)
        assert (first.st_mode, first.st_mtime_ns) == (made.st_mode, made.st_mtime_ns)
        assert not (mnt / "Projects").exists()  # the kernel remembers it is not there...
        assert "Projects" not in os.listdir(mnt)  # ...and keeps the listing
        assert main(["--pool", str(state_dir), "folder", "add", "Projects", "--copies", "2"]) == 0
        assert (mnt / "Projects").is_dir()  # ...until the mount tells it otherwise
        assert "Projects" in os.listdir(mnt)
        (mnt / "Projects/song.flac").write_bytes(b"la")
        assert len(copies_on_disk(dir_drives, "Projects/song.flac")) == 2

        # The mount's refusals reach the command as its own one-line errors.
        capsys.readouterr()
        assert main(["--pool", str(state_dir), "folder", "set", "Nope", "--copies", "2"]) == 3
        assert "No folder named 'Nope'" in capsys.readouterr().err
        assert main(["--pool", str(state_dir), "folder", "set", "Projects", "--copies", "0"]) == 3
        assert "Copies must be a whole number" in capsys.readouterr().err

        (state_dir / "control.sock").unlink()  # a mount that cannot be reached
        assert main(["--pool", str(state_dir), "folder", "set", "Projects", "--copies", "1"]) == 6
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "does not answer" in err
    with Pool.open(state_dir, write=False) as pool:
        assert pool.folder("Documents")[1] == 2 and pool.folder("Projects")[1] == 2
        assert len(pool.replicas("Documents/busy")) == 2
        assert_clean(pool)


def test_requests_go_on_while_a_new_copy_is_made(dir_pool: Pool, state_dir: Path, tmp_path: Path,
                                                 dir_drives: list[Path]) -> None:
    """A folder change copies file data without the mount's lock: other requests are answered
    meanwhile (before, every request waited for the whole copy)."""
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        with open(mnt / "Videos/big.mkv", "wb") as f:
            for _ in range(60):
                f.write(os.urandom(1 << 20))
        done = threading.Event()
        change = threading.Thread(target=lambda: (main(["--pool", str(state_dir), "folder", "set", "Videos",
                                                        "--copies", "2"]), done.set()))
        answered = 0
        change.start()
        while not done.is_set():
            os.stat(mnt / "Videos/big.mkv")
            (mnt / f"Documents/meanwhile-{answered}").write_bytes(b"x")
            answered += 1
        change.join()
        assert answered >= 5, f"only {answered} requests were answered while the copy was made"
        assert len(copies_on_disk(dir_drives, "Videos/big.mkv")) == 2
    with Pool.open(state_dir, write=False) as pool:
        assert_clean(pool)


def test_status_and_check_while_mounted_see_no_interrupted_operations(dir_pool: Pool, state_dir: Path,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """While mounted, the journal holds the mount's changes in progress (a file open for
    writing, the last rename): they are not interrupted operations. After a crash they are."""
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, _), open(mnt / "Documents/open.txt", "wb") as f:
        f.write(b"being written")
        f.flush()
        os.rename(mnt / "Documents/open.txt", mnt / "Documents/moved.txt")
        with Pool.open(state_dir, write=False) as pool:
            assert pool.cat.journal() != []  # what this test is about
            assert_clean(pool)
        capsys.readouterr()
        assert main(["--pool", str(state_dir), "status"]) == 0
        assert "interrupted" not in capsys.readouterr().out


def test_a_drive_added_while_mounted_takes_new_copies(dir_pool: Pool, state_dir: Path, tmp_path: Path,
                                                      dir_drives: list[Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Plug in a drive and the pool grows, without unmounting (Samba clients stay connected)."""
    dir_pool.close()
    new = tmp_path / "drive4"
    new.mkdir()
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        (mnt / "Videos/before.mkv").write_bytes(b"b")  # the mount has looked at its drives
        capsys.readouterr()
        assert main(["--pool", str(state_dir), "drive", "add", str(new), "--label", "big", "--max-size", "1G",
                     "--allow-shared-device"]) == 0
        assert "Added drive 'big'" in capsys.readouterr().out
        # The new drive has the most room: the next files go there (placement: most free space).
        (mnt / "Videos/after.mkv").write_bytes(b"v" * 1000)
        assert copies_on_disk([new], "Videos/after.mkv") != []
        assert (mnt / "Videos/after.mkv").read_bytes() == b"v" * 1000
        # Refusals come back as the command's own one-line errors, and change nothing.
        assert main(["--pool", str(state_dir), "drive", "add", str(new), "--allow-shared-device"]) != 0
        assert "already in the pool" in capsys.readouterr().err
        other = tmp_path / "drive5"
        other.mkdir()
        assert main(["--pool", str(state_dir), "drive", "add", str(other), "--adopt",
                     "--allow-shared-device"]) != 0
        assert "not mounted" in capsys.readouterr().err
    with Pool.open(state_dir, write=False) as pool:
        assert [d.label for d in pool.drives()] == [*(d.name for d in dir_drives), "big"]
        assert_clean(pool)


def test_check_and_repair_while_mounted(dir_pool: Pool, state_dir: Path, tmp_path: Path,
                                       dir_drives: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    """`homepool check [--repair]` while mounted: the mount checks, letting its lock go between
    files; a file being written is no problem; what a repair adds or changes shows through the
    mount at once (the kernel is told to forget what it had cached)."""
    dir_pool.write_bytes("Documents/a.txt", b"A")
    dir_pool.write_bytes("Documents/c.txt", b"C")
    dir_pool.close()
    check = ["--pool", str(state_dir), "check"]
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        (mnt / "Documents/b.txt").write_bytes(b"B")
        os.link(mnt / "Documents/b.txt", mnt / "Documents/b2.txt")
        busy = open(mnt / "Documents/busy", "wb")  # noqa: SIM115 - open across the checks on purpose
        try:
            busy.write(b"being written")
            busy.flush()
            assert main(check) == 0
            assert "No problems found." in capsys.readouterr().out
            # Behind the pool's back: a copy edited, a copy lost (a drive failing), a stray file.
            edited = copies_on_disk(dir_drives, "Documents/a.txt")[0]
            edited.write_bytes(b"changed behind the pool's back")
            copies_on_disk(dir_drives, "Documents/c.txt")[0].unlink()
            (dir_drives[0] / "HomePool/Documents/stray.txt").write_bytes(b"?")
            listed = sorted(os.listdir(mnt / "Documents"))  # the kernel keeps this listing...
            assert "stray.txt" not in listed and not (mnt / "Documents/stray.txt").exists()  # ...and this absence
            assert main(check) == 1
            out = capsys.readouterr().out
            assert "[found] replicas_match: Documents/a.txt: copy on" in out and "changed outside the pool" in out
            assert "[found] replicas_match: Documents/c.txt: copy on" in out and "is missing" in out
            assert "[found] no_stray_files: Documents/stray.txt" in out
            assert "busy" not in out and "b2.txt" not in out
            assert main([*check, "--repair"]) == 0
            out = capsys.readouterr().out
            assert "[fixed] copies_met: Documents/c.txt: has 1 of 2 copies; now 2" in out
            assert (mnt / "Documents/stray.txt").read_bytes() == b"?"  # at once, through the mount
            aside = next(n for n in os.listdir(mnt / "Documents") if n.startswith("a (conflict"))
            assert (mnt / "Documents" / aside).read_bytes() == b"changed behind the pool's back"
            assert (mnt / "Documents/a.txt").read_bytes() == b"A"
            assert main(check) == 0
        finally:
            busy.close()
        assert (mnt / "Documents/b.txt").read_bytes() == b"B"  # the mount went on serving
    with Pool.open(state_dir) as pool:
        assert len(pool.replicas("Documents/c.txt")) == 2 and pool.read_bytes("Documents/busy") == b"being written"
        assert_clean(pool)


def test_check_while_mounted_reports_many_problems(dir_pool: Pool, state_dir: Path, tmp_path: Path,
                                                   dir_drives: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A drive someone copied a few hundred files onto directly: as many strays to report."""
    dir_pool.close()
    strays = dir_drives[0] / "HomePool/Documents/copied in by hand"
    strays.mkdir(parents=True)
    for i in range(500):
        (strays / f"holiday photo {i:04}.jpg").write_bytes(b"x")
    with mount_pool(state_dir, tmp_path):
        code = main(["--pool", str(state_dir), "check"])
        captured = capsys.readouterr()
        assert "control message too long" not in captured.err
        assert code == 1 and captured.out.count("no_stray_files") == 501


def test_a_drive_inside_the_mount_itself_is_refused(dir_pool: Pool, state_dir: Path, tmp_path: Path) -> None:
    """`homepool drive add` of a folder inside the pool's own mount: a clear one-line error,
    and the mount goes on (looking at that path under the mount's lock was a request to the
    mount itself, waiting for that lock: the command and the whole mount hung)."""
    dir_pool.close()
    with mount_pool(state_dir, tmp_path) as (mnt, _):
        connection = os.minor(os.stat(mnt).st_dev)
        (mnt / "Documents/disk").mkdir()
        cmd = [sys.executable, "-m", "homepool", "--pool", str(state_dir), "drive", "add", str(mnt / "Documents/disk")]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            _abort(connection)  # else the hung mount outlives the test
            raise
        assert r.returncode != 0 and r.stderr.count("\n") == 1 and "inside the pool's own mount" in r.stderr, r.stderr
        (mnt / "Documents/after.txt").write_bytes(b"still here")


def _abort(connection: int) -> None:
    """Abort a hung FUSE connection (fusectl), as `umount` cannot."""
    ctl = Path("/sys/fs/fuse/connections")
    if not any(ctl.iterdir()):
        subprocess.run(["mount", "-t", "fusectl", "none", str(ctl)], capture_output=True)
    with contextlib.suppress(OSError):
        (ctl / str(connection) / "abort").write_text("1")


def test_a_drive_pulled_and_plugged_back_is_noticed_without_a_request(dir_pool: Pool, state_dir: Path,
                                                                      tmp_path: Path, dir_drives: list[Path]) -> None:
    """No program needs to look at the pool for the mount to see a drive go and come back,
    and to make on it at once what it missed meanwhile."""
    dir_pool.close()

    def recorded_state(drive: Path) -> str:
        with reader(state_dir) as pool:
            return next(row.state for row in pool.cat.drives() if Path(row.path) == drive)

    with mount_pool(state_dir, tmp_path) as (mnt, _):
        (mnt / "Documents/a.txt").write_bytes(b"a")
        away = copies_on_disk(dir_drives, "Documents/a.txt")[0].parents[2]
        os.rename(away / ".homepool", away / ".homepool-unplugged")  # pulled (a directory drive)
        wait_for(lambda: recorded_state(away) == "missing", what="the mount to see the drive gone")
        (mnt / "Documents/a.txt").unlink()  # owed to the drive away
        assert (away / "HomePool/Documents/a.txt").exists()
        os.rename(away / ".homepool-unplugged", away / ".homepool")  # plugged back
        wait_for(lambda: recorded_state(away) == "active", what="the mount to see the drive back")
        wait_for(lambda: not (away / "HomePool/Documents/a.txt").exists(), what="the delete it missed")
    with Pool.open(state_dir) as pool:
        assert pool.lookup("Documents/a.txt") is None
        assert_clean(pool)

"""`homepool demo`: a self-contained tour on throwaway drives, cleaned up afterwards.

As root it makes four small ext4 drives of different sizes (loop-mounted image files; the
fourth is plugged in while mounted); otherwise four directories on one filesystem, added with
--allow-shared-device and size caps (and `status` says so). Every step is a real `homepool`
command, printed before it runs.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from .. import loopdrives
from .. import mount as mount_mod
from ..config import STUCK_FILE
from ..errors import FuseUnavailable
from ..pool import Pool
from . import app, main, out

SIZES = [96 << 20, 160 << 20, 256 << 20, 192 << 20]  # the last is plugged in while mounted
LABELS = ["Old 500G", "Blue 1T", "New 2T", "Spare 1T"]


def make_library(root: Path, seed: int = 7) -> tuple[int, int]:
    """A small family library: photos by year, an album, documents, one home video."""
    rng = random.Random(seed)
    n = total = 0

    def put(rel: str, size: int) -> None:
        nonlocal n, total
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
        stamp = 1262304000 + rng.randrange(0, 10 * 365 * 86400)  # some time in 2010-2019
        os.utime(p, (stamp, stamp))
        n += 1
        total += size

    for year in (2010, 2011, 2012):
        for i in range(1, 21):
            put(f"Pictures/{year}/IMG_{year}_{i:04d}.jpg", rng.randrange(150_000, 600_000))
    for i in range(1, 11):
        put(f"Music/The Examples/First Album/{i:02d} Track {i}.mp3", rng.randrange(400_000, 900_000))
    for name in ("Taxes 2019.pdf", "Recipes.odt", "Insurance.pdf"):
        put(f"Documents/{name}", rng.randrange(20_000, 200_000))
    put("Videos/Summer holiday.mp4", 24 << 20)
    return n, total


def step(args: list[str], note: str = "", expect: int = 0) -> None:
    """Run `homepool ARGS`, shown as typed; its exit code must be `expect` (1: problems found)."""
    if note:
        out.print(f"\n[bold]{note}[/bold]")
    out.print(f"[cyan]$ homepool {shlex.join(args)}[/cyan]")
    code = main(args)
    if code != expect:
        raise RuntimeError(f"`homepool {shlex.join(args)}` exited with {code}, not {expect}")


def mount_step(base: Path, library: Path, add_drive: list[str], real_drives: bool) -> None:
    """7. The pool as one folder tree in the filesystem, read and written, if FUSE is here;
    a drive plugged in meanwhile (`add_drive`); one that stops answering (`real_drives`: a
    drive of its own can be frozen, a directory cannot)."""
    try:
        mount_mod.check_fuse()
    except FuseUnavailable as e:
        out.print(f"\n[bold]7. (Skipping the mount: {e})[/bold]")
        step(add_drive, "   Plug in another drive: the pool grows.")
        return
    mnt = base / "pool"
    mnt.mkdir()
    step(["mount", str(mnt)], "7. Mount the pool: one folder tree for every program, to read and write.")
    for cmd in (["ls", "-l", str(mnt)], ["ls", "-l", str(mnt / "Documents")]):
        out.print(f"[cyan]$ {shlex.join(cmd)}[/cyan]")
        out.print(subprocess.run(cmd, capture_output=True, text=True).stdout.rstrip(), markup=False)
    sample = sorted((mnt / "Documents").iterdir())[0]
    original = library / "Documents" / sample.name
    cmd = ["cmp", str(sample), str(original)]
    out.print(f"[cyan]$ {shlex.join(cmd)} && echo same[/cyan]")
    same = subprocess.run(cmd, capture_output=True).returncode == 0
    out.print("same" if same else "DIFFERENT", markup=False)
    if not same:
        raise RuntimeError(f"{sample} read through the mount differs from {original}")
    note = mnt / "Documents" / "written-through-the-mount.txt"
    out.print(f"[cyan]$ echo 'a new note' > {note}[/cyan]")
    note.write_text("a new note\n")
    link = note.with_name("the-same-note.txt")
    out.print(f"[cyan]$ ln {note} {link}   # a hard link: one file, two names[/cyan]")
    os.link(note, link)
    latest = note.with_name("latest-note")
    out.print(f"[cyan]$ ln -s {note.name} {latest}   # a symbolic link: on every drive, as a folder is[/cyan]")
    latest.symlink_to(note.name)
    cmd = ["ls", "-li", str(note), str(link), str(latest)]
    out.print(f"[cyan]$ {shlex.join(cmd)}[/cyan]")
    out.print(subprocess.run(cmd, capture_output=True, text=True).stdout.rstrip(), markup=False)
    deep_step(base, mnt)
    if real_drives:
        held_up_step(base, mnt)
    step(["folder", "set", "Music", "--copies", "1"],
         "   Settings change while mounted too: the mount makes the change (extra copies go now).")
    step(["folder", "set", "Music", "--copies", "2"])
    step(add_drive, "   Plug in another drive while mounted: the pool grows at once, nobody is disconnected.")
    step(["drive", "list"])
    copy = next(d / "HomePool/Documents" / note.name for d in drives_of(base)
                if (d / "HomePool/Documents" / note.name).is_file())
    mode = copy.stat().st_mode & 0o777
    out.print("\n[bold]   Someone changes a copy on a drive directly, behind the pool's back:[/bold]")
    out.print(f"[cyan]$ chmod 777 {copy}[/cyan]")
    copy.chmod(0o777)
    step(["check"], "   Check while mounted: the mount looks, file by file, and goes on serving.", expect=1)
    step(["check", "--repair"], "   Repair: the copy gets the pool's mode back (the content was never in doubt).")
    if copy.stat().st_mode & 0o777 != mode:
        raise RuntimeError(f"{copy} should have its mode {mode:04o} back")
    step(["unmount", str(mnt)])
    copies = [d for d in drives_of(base) if (d / "HomePool/Documents" / note.name).is_file()]
    out.print(f"   Documents keeps 2 copies, so the note is a plain file on {len(copies)} drives: "
              + ", ".join(str(d / "HomePool/Documents" / note.name) for d in copies)
              + f"; {link.name} is a hard link of it on each.")
    if len(copies) != 2:
        raise RuntimeError(f"{note.name} should be on 2 drives, found {len(copies)}")
    if not all(os.path.samefile(d / "HomePool/Documents" / note.name, d / "HomePool/Documents" / link.name)
               for d in copies):
        raise RuntimeError(f"{link.name} should be a hard link of {note.name} on each drive with a copy")


def deep_step(base: Path, mnt: Path) -> None:
    """Folders nest as deep as on a local disk, past PATH_MAX with a drive's path in front."""
    name = "a-folder-with-a-long-name-" + "x" * 74
    out.print("\n[bold]   Folders nest as deep as on a local disk, here 45 of 100-byte names:[/bold]")
    out.print(f"[cyan]$ cd {mnt / 'Documents'} && mkdir -p {name[:30]}.../{name[:30]}.../...[/cyan]")
    subprocess.run(["mkdir", "-p", "/".join([name] * 45)], cwd=mnt / "Documents", check=True)
    for d in drives_of(base):
        top = d / "HomePool/Documents" / name
        if top.is_dir():
            found = subprocess.run(["find", str(top), "-type", "d"], capture_output=True, text=True, check=True)
            depth = len(found.stdout.splitlines())
            out.print(f"   On {d}: the same {depth} plain folders, a path of "
                      f"{len(str(top)) + 101 * (depth - 1):,} bytes, past the 4,096 bytes Linux takes in one call.")
            if depth != 45:
                raise RuntimeError(f"the deep folders on {d} are {depth} deep, not 45")


def held_up_step(base: Path, mnt: Path) -> None:
    """A drive that stops answering holds up the change made on it, not the folder tree: one
    is frozen (as a hung disk would be) under a delete, and a folder is listed and a file
    read meanwhile."""
    victim = sorted((mnt / "Documents").iterdir())[0]  # one of the library's (the note stays)
    drive = next(d for d in drives_of(base) if (d / "HomePool/Documents" / victim.name).is_file())
    out.print("\n[bold]   A drive that stops answering (a dying disk, a hung USB bridge) holds up the change "
              "made on it, not the folder tree:[/bold]")
    out.print(f"[cyan]$ fsfreeze -f {drive}; rm {victim} &[/cyan]")
    try:
        loopdrives.freeze(drive, True)
    except OSError as e:
        out.print(f"   (Skipped: the drive cannot be frozen here: {e.strerror})")
        return
    deleting = threading.Thread(target=victim.unlink, daemon=True)
    try:
        deleting.start()
        cmd = ["ls", str(mnt / "Photos")]
        out.print(f"[cyan]$ {shlex.join(cmd)}[/cyan]")
        began = time.monotonic()
        listing = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        out.print(listing.stdout.rstrip(), markup=False)
        out.print(f"   (answered in {time.monotonic() - began:.1f} s, from the catalog, while the delete waits)")
        song = next(p for p in sorted((mnt / "Music").rglob("*")) if p.is_file())
        cmd = ["wc", "-c", str(song)]
        out.print(f"[cyan]$ {shlex.join(cmd)}[/cyan]")
        began = time.monotonic()
        counted = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        out.print(counted.stdout.rstrip(), markup=False)
        if counted.returncode != 0 or int(counted.stdout.split()[0]) != song.stat().st_size:
            raise RuntimeError(f"{song} could not be read while {drive} was frozen: {counted.stderr.strip()}")
        out.print(f"   (opened and read in {time.monotonic() - began:.1f} s, while the delete waits)")
        deadline = time.monotonic() + 30
        while not (base / "state" / STUCK_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the mount notices within HOMEPOOL_STUCK_AFTER seconds
        step(["status"], "   Status says what holds the mount up:")
    finally:
        loopdrives.freeze(drive, False)
        deleting.join(timeout=60)
    out.print(f"[cyan]$ fsfreeze -u {drive}[/cyan]")
    if deleting.is_alive() or victim.exists():
        raise RuntimeError(f"the delete of {victim} did not finish once {drive} answered again")
    out.print(f"   The drive answers again: the delete finishes, and {victim.name} is gone.")


def drives_of(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if (p / "HomePool").is_dir())


@app.command("demo")
def do_demo(
    keep: Annotated[bool, typer.Option("--keep", help="Leave the demo drives and pool in place (prints where "
                                       "and how to remove them).")] = False,
) -> None:
    """A guided tour on four throwaway drives (one plugged in while mounted); removes everything it made."""
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="homepool-demo-"))
    state = base / "state"
    why_not = loopdrives.available()
    drives = None
    old_env = {name: os.environ.get(name) for name in ("HOMEPOOL_POOL", "HOMEPOOL_STUCK_AFTER")}
    os.environ["HOMEPOOL_POOL"] = str(state)
    os.environ["HOMEPOOL_STUCK_AFTER"] = "2"  # the mount reports a drive that does not answer sooner
    try:
        if why_not is None:
            out.print(f"Making four ext4 drives of 96, 160, 256 and 192 MiB (loop-mounted images in {base});"
                      " the fourth is plugged in later.")
            drives = loopdrives.LoopDrives(base, SIZES)
            paths = drives.up()
            extra: list[list[str]] = [[] for _ in paths]
        else:
            out.print(f"Not making real drives ({why_not}): using four directories on one filesystem instead, "
                      "with size caps. Two copies there would NOT survive a failed disk; `status` says so.")
            paths = [base / f"d{i}" for i in range(1, 5)]
            for p in paths:
                p.mkdir()
            extra = [["--allow-shared-device", "--max-size", f"{s >> 20}M"] for s in SIZES]
        library = base / "library"
        n, total = make_library(library)
        out.print(f"Made a sample library of {n} files ({total >> 20} MiB) in {library}.")
        out.print(f"The pool's state (config and catalog) lives in {state} (HOMEPOOL_POOL).")

        step(["init"], "1. Create a pool. It comes with folders that say where things go.")
        add_drive = [["drive", "add", str(p), "--label", label, *ex]
                     for p, label, ex in zip(paths, LABELS, extra, strict=True)]
        for p, add in zip(paths[:3], add_drive, strict=False):
            step(add,
                 "2. Add drives of any size. Nothing is formatted; files stay plain files." if p == paths[0] else "")
        step(["drive", "list"])
        step(["folder", "set", "Videos", "--copies", "1"],
             "3. Choose copies per folder: photos, music and documents get 2, videos 1.")
        step(["folder", "list"])
        step(["import", str(library / "Pictures"), "Photos/"], "4. Bring existing files in.")
        step(["import", str(library / "Music"), "Music/"])
        step(["import", str(library / "Documents"), "Documents/"])
        step(["import", str(library / "Videos"), "Videos/"])
        step(["import", str(library / "Pictures"), "Photos/"], "   Importing again skips what is already there.")
        step(["ls", "Photos"], "5. One tree, no drive letters.")
        step(["ls", "--drives", "Documents"], "   Each file in a 2-copy folder is on two different drives:")
        sample = next((paths[0] / "HomePool" / "Documents").iterdir(), None)
        out.print("\n[bold]   Every drive holds plain files any PC can read:[/bold]")
        for p in paths:
            files = [f for f in (p / "HomePool").rglob("*") if f.is_file()]
            out.print(f"   {p}/HomePool: {len(files)} files, e.g. {files[0].relative_to(p) if files else '-'}")
        if sample is not None:
            out.print(f"   {sample} is an ordinary file of {sample.stat().st_size} bytes.")
        step(["status"], "6. Status: drives, space, folders and their health.")
        mount_step(base, library, add_drive[3], real_drives=drives is not None)

        out.print("\n[bold]8. Lose the system drive: delete the pool's state directory, then rebuild it "
                  "from the drives.[/bold]")
        out.print(f"[cyan]$ rm -rf {state}[/cyan]")
        shutil.rmtree(state)
        step(["recover", *map(str, paths)])
        step(["check"])
        with Pool.open(state, write=False) as pool:  # (the mount made a symlink, if there was one)
            if (base / "pool").exists() and pool.lookup("Documents/latest-note") is None:
                raise RuntimeError("the symlink made through the mount should be back after recover")
        step(["folder", "list"], "   Folders, copies and files are all back:")
        out.print(f"\nTour finished in {time.monotonic() - started:.1f} s.")
    finally:
        if os.path.ismount(base / "pool"):  # a step failed while mounted: the tour still cleans up
            subprocess.run(["fusermount3", "-u", str(base / "pool")], capture_output=True)
        for name, value in old_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if keep:
            out.print(f"Kept everything in {base}. Remove it with: "
                      + (f"umount {' '.join(map(str, drives.mounts))}; " if drives else "") + f"rm -rf {base}")
        else:
            if drives is not None:
                drives.down()
            shutil.rmtree(base, ignore_errors=True)
            out.print(f"Removed the demo drives and {base}.")

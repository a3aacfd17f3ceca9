"""`homepool check [--repair]`: does the catalog agree with the drives?

This module only looks and decides; every repair is a `Pool` method (the pool layer is the one
place that changes drives and catalog together).

Like every command that changes the pool, `check` opens it for writing, which first finishes
operations a crash interrupted and makes the steps owed to drives that are back (pool/).

Each check is named after the invariant it guards. Without repair, nothing is changed; with
it, each problem is fixed through the pool API. Repairs never delete a user's data: the only
files removed are homepool's own temp files and copies the catalog knows to be stale; a copy
that was changed behind the pool's back is kept aside under a "(conflict ...)" name.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat as stat_
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .catalog import Node
from .config import mounted_at
from .drives import Drive, mount_of
from .errors import HomepoolError
from .pool import Pool, describe, newfiles, scan_tree
from .pool.core import same_entry
from .pool.ondrive import KEPT_XATTRS_B, keep_aside, kept_xattrs

log = logging.getLogger(__name__)

# Filesystems that keep no Unix owners and modes (a drive formatted for Windows or a camera):
# what they show comes from their mount options, whatever the pool sets.
NO_OWNERS = frozenset({"vfat", "msdos", "exfat", "ntfs", "ntfs3", "fuseblk"})


@dataclass
class Problem:
    check: str  # the invariant that failed
    path: str
    detail: str
    fixed: bool = False

    def line(self) -> str:
        state = "fixed" if self.fixed else "found"
        where = f"{self.path}: " if self.path else ""
        return f"[{state}] {self.check}: {where}{self.detail}"


# What a check holds around each step that reads the pool: nothing for a command (it has the
# pool to itself), the mount's lock when the mount runs the check for `homepool check` while
# mounted. The lock is let go between files, so the mount goes on serving meanwhile.
Hold = Callable[[], AbstractContextManager[Any]]


def check(pool: Pool, repair: bool = False, hold: Hold = nullcontext) -> list[Problem]:
    problems: list[Problem] = []
    with hold():
        problems += check_journal_empty(pool, repair)
        drives = pool.drives()
        problems += check_drives_present(drives)
        present = [d for d in drives if d.row.state == "active"]
        problems += check_owed_settled(pool, present, repair)
        problems += check_no_orphan_temps(pool, present, repair)
    problems += check_replicas_match(pool, present, repair, hold)
    problems += check_names_linked(pool, present, repair, hold)
    problems += check_folders_match(pool, present, repair, hold)
    problems += check_entries_match(pool, present, repair, hold)
    problems += check_no_stray_files(pool, present, repair, hold)
    problems += check_copies_met(pool, repair, hold)
    with hold():
        problems += check_link_counts(pool, repair)
    return problems


def check_journal_empty(pool: Pool, repair: bool) -> list[Problem]:
    """Every multi-step operation ran to its end."""
    entries = pool.cat.journal()
    if not entries or mounted_at(pool.state_dir):
        return []  # a mount's rows are its changes in progress (files open for writing, say)
    if repair:
        return [Problem("journal_empty", "", line, fixed=True) for line in pool.finish_journal()]
    return [Problem("journal_empty", "", f"an interrupted {describe(e.op, e.payload)} is waiting to be finished")
            for e in entries]


def check_drives_present(drives: list[Drive]) -> list[Problem]:
    """Every member drive is mounted where the catalog says."""
    return [Problem("drives_present", "", f"drive {d.name} is missing: its copies cannot be read; "
                    "mount it again (or `homepool drive add NEWPATH` if it moved)")
            for d in drives if d.row.state != "active"]


def check_owed_settled(pool: Pool, drives: list[Drive], repair: bool) -> list[Problem]:
    """No step owed to a present drive is left: opening the pool tried them all, so one still
    here cannot be made. Repair gives it up, so that what it concerns is taken in as found."""
    out = []
    for d in drives:
        for owed_id, step in pool.cat.owed(d.id):
            what = f"{step['op']} of {step.get('path') or step.get('src')}"
            p = Problem("owed_settled", "", f"{what} on {d.name} could not be made (see the error log)")
            if repair:
                pool.give_up_owed(owed_id)
                p.detail += "; given up, the files there are checked as they are"
                p.fixed = True
            out.append(p)
    return out


def check_no_orphan_temps(pool: Pool, drives: list[Drive], repair: bool) -> list[Problem]:
    """Temp files exist only while an operation needs them."""
    out = []
    for d, name in list(pool.orphan_temps(drives)):
        p = Problem("no_orphan_temps", "", f"unfinished write {name} on {d.name} (an interrupted copy)")
        if repair:
            pool.remove_orphan_temp(d, name)
            p.fixed = True
        out.append(p)
    return out


def check_replicas_match(pool: Pool, drives: list[Drive], repair: bool, hold: Hold = nullcontext) -> list[Problem]:
    """Every recorded copy is on its drive, with the recorded size and time (or content)."""
    with hold():
        files = pool.cat.file_ids()
        # While mounted: files the mount is writing are recorded when closed.
        writing = {e.payload["node"] for e in pool.cat.journal() if e.op == "live"} \
            if mounted_at(pool.state_dir) else set()
    by_id = {d.id: d for d in drives}
    out = []
    seen: dict[int, dict[str, str | None]] = {d.id: {} for d in drives}  # symlinks on the way, by folder
    for node_id in files:
        with hold():
            if node_id not in writing and not pool.handles(node_id):  # opened since: the same
                out += _copies_match(pool, by_id, node_id, repair, seen)
    return sorted(out, key=lambda p: p.path)  # by path, as a person reads them


def _symlink_on_the_way(d: Drive, path: str, seen: dict[str, str | None]) -> str | None:
    """A folder on the way to `path` on drive `d` that is a symlink now (never followed: it
    may lead out of the pool or into another folder), looked at once per folder and check."""
    folder = path.rpartition("/")[0]
    if folder not in seen:
        seen[folder] = d.symlink_on_the_way(folder)
    return seen[folder]


def _copies_match(pool: Pool, by_id: dict[int, Drive], node_id: int, repair: bool,
                  seen: dict[int, dict[str, str | None]]) -> list[Problem]:
    out: list[Problem] = []
    node = pool.cat.node_or_none(node_id)  # as it is now: it may have changed since the walk
    if node is None:
        return out
    path = pool.path_of(node_id)
    reps = pool.cat.replicas(node.id)
    changed: list[tuple[Drive, str]] = []
    fine: list[tuple[Drive, os.stat_result]] = []  # good copies as recorded: their owner and xattrs next
    good = 0
    for r in reps:
        d = by_id.get(r.drive_id)
        if d is None:
            continue
        if (link := _symlink_on_the_way(d, path, seen[d.id])) is not None:
            p = Problem("replicas_match", path, f"copy on {d.name} is missing: folder {link} there is a symlink")
            if repair:  # out of the way (kept, never followed), so that the copy can be made again
                p.detail += f"; kept the symlink as {keep_aside(d, link)}"
                seen[d.id].clear()
                pool.forget_copy(node.id, d.id)
                p.fixed = True
            out.append(p)
            continue
        try:
            st: os.stat_result | None = d.lstat(path)  # never followed: out of the pool
        except FileNotFoundError:
            st = None
            if not d.present():
                continue  # the drive itself went away during the check: its copies are not lost
        if st is not None and stat_.S_ISDIR(st.st_mode):  # a folder in its place: kept aside, the copy is gone
            p = Problem("replicas_match", path, f"copy on {d.name} is missing: a folder is in its place")
            if repair:
                p.detail += f"; kept the folder as {pool.set_copy_aside(node, d)}"
                p.fixed = True
            out.append(p)
            continue
        if st is None or not stat_.S_ISREG(st.st_mode):
            why = "is missing" if st is None else "is missing: something else (a symlink, say) is in its place"
            p = Problem("replicas_match", path, f"copy on {d.name} {why}")
            if repair:
                pool.forget_copy(node.id, d.id)
                p.fixed = True
            out.append(p)
            continue
        if st.st_size == r.size and st.st_mtime_ns == r.mtime_ns:
            if r.state == "ok":
                good += 1
                fine.append((d, st))
                continue
            # Marked bad by a failed read: if the content is right after all, it is good.
            try:
                intact = d.hash(path) == node.hash
            except OSError:
                intact = False
            if intact:
                p = Problem("replicas_match", path, f"copy on {d.name} was marked bad but reads back intact")
                if repair:
                    pool.restore_copy(node.id, d.id)
                    p.fixed = True
                    good += 1
                out.append(p)
            continue
        digest = d.hash(path) if st.st_size == node.size else None
        if digest == node.hash:
            p = Problem("replicas_match", path, f"copy on {d.name} has a changed time, same content")
            if repair:
                pool.retime_copy(node, d, r.state)
                p.fixed = True
            out.append(p)
            good += r.state == "ok"
        else:
            changed.append((d, digest or ""))
    for d, _ in changed:
        p = Problem("replicas_match", path, f"copy on {d.name} was changed outside the pool")
        if repair:
            if good:  # the pool still has the right content: keep the changed one aside
                p.detail += f"; kept it as {pool.set_copy_aside(node, d)}"
            else:  # the only copies were edited on the drive: the edit is the file now
                node = pool.take_edited_copy(node, d)
                good = 1
                p.detail += "; took its new content as the file's"
            p.fixed = True
        out.append(p)
    return out + _attrs_match(pool, node, path, fine, repair, "replicas_match")


def check_folders_match(pool: Pool, drives: list[Drive], repair: bool, hold: Hold = nullcontext) -> list[Problem]:
    """Every folder on a drive has the owner, mode and extended attributes the pool shows
    (a drive read on its own elsewhere keeps a private folder private)."""
    with hold():
        dirs = pool.cat.dir_ids()
    out = []
    for node, path, found in _on_drives(pool, drives, dirs, ("dir",), hold):
        # (one a drive lacks is not needed there yet: made with the first copy below it)
        on = [(d, st) for d, st in found if st is not None and stat_.S_ISDIR(st.st_mode)]
        out += _attrs_match(pool, node, path, on, repair, "folders_match")
    return sorted(out, key=lambda p: p.path)


def check_entries_match(pool: Pool, drives: list[Drive], repair: bool, hold: Hold = nullcontext) -> list[Problem]:
    """Every symlink and special file (FIFO, socket, device node) is on every present drive,
    as the pool has it: its kind, target or device, owner and mode."""
    with hold():
        entries = pool.cat.entry_ids()
    out = []
    for node, path, found in _on_drives(pool, drives, entries, ("symlink", "special"), hold):
        what = "symlink" if node.target is not None else "special file"
        on: list[tuple[Drive, os.stat_result]] = []
        for d, st in found:
            if st is not None and same_entry(d, path, st, node):
                on.append((d, st))
                continue
            why = "is missing" if st is None else "is something else there"
            p = Problem("entries_match", path, f"{what} {why} on {d.name}")
            if repair:
                try:
                    aside = pool.remake_entry(node, d, path)
                    p.detail += f"; made again{f', kept what was there as {aside}' if aside else ''}"
                    p.fixed = True
                except OSError as e:
                    p.detail += f"; left alone: {e}"
            out.append(p)
        out += _attrs_match(pool, node, path, on, repair, "entries_match")
    return sorted(out, key=lambda p: p.path)


def _on_drives(pool: Pool, drives: list[Drive], ids: list[int], kinds: tuple[str, ...], hold: Hold
               ) -> Iterator[tuple[Node, str, list[tuple[Drive, os.stat_result | None]]]]:
    """Each node of `ids` still of one of `kinds` (it may have changed since they were listed),
    its path, and what lstat finds there on each drive (None: nothing it can read), all under
    `hold`, which the caller's repairs of it share. A drive with a symlink on the way is left
    out: never followed (`replicas_match` shows it for the files below)."""
    seen: dict[int, dict[str, str | None]] = {d.id: {} for d in drives}  # symlinks on the way, by folder
    for node_id in ids:
        with hold():
            node = pool.cat.node_or_none(node_id)
            if node is None or node.kind not in kinds:
                continue
            path = pool.path_of(node_id)
            found: list[tuple[Drive, os.stat_result | None]] = []
            for d in drives:
                if _symlink_on_the_way(d, path, seen[d.id]) is not None:
                    continue
                try:
                    found.append((d, d.lstat(path)))
                except OSError:
                    found.append((d, None))
            yield node, path, found


def _attrs_match(pool: Pool, node: Node, path: str, on: list[tuple[Drive, os.stat_result]], repair: bool,
                 check: str) -> list[Problem]:
    """Problems with the owner, mode and extended attributes of a file's copies (or a
    folder's) on the drives `on`, as lstat saw them, against what the pool shows."""
    out: list[Problem] = []
    what = {"dir": "folder", "file": "copy", "symlink": "symlink"}.get(node.kind, "special file")
    want = (node.mode & 0o7777, node.uid, node.gid)
    for d, st in on:
        have = (st.st_mode & 0o7777, st.st_uid, st.st_gid)
        if node.kind == "symlink":  # (a symlink's own mode is always 0777 on Linux: its owner alone counts)
            want = (have[0], node.uid, node.gid)
        if have == want or not keeps_owners(d):
            continue
        p = Problem(check, path, f"{what} on {d.name} has mode {have[0]:04o} and owner {have[1]}:{have[2]}, "
                                 f"the pool shows {want[0]:04o} and {want[1]}:{want[2]}")
        if repair:
            _repair(p, "given the pool's", pool.give_owner, node, d, path)
        out.append(p)
    if len(on) < 2:
        return out  # (the one there is the one the pool shows them from)
    try:
        shown = {n: v for n, v in pool.copy_xattrs(node.id).items() if n.startswith(KEPT_XATTRS_B)}
    except OSError as e:
        log.warning("extended attributes of %s not read: %s", path, e)
        return out
    for d, _ in on:
        try:
            there = kept_xattrs(d, path)
        except OSError as e:
            if e.errno != errno.ENOTSUP:  # (a drive that keeps none)
                log.warning("extended attributes of %s on %s not read: %s", path, d.name, e)
            continue
        if there == shown:
            continue
        names = sorted(os.fsdecode(n) for n in there.keys() | shown.keys() if there.get(n) != shown.get(n))
        p = Problem(check, path, f"{what} on {d.name} differs in extended attributes {', '.join(names)} "
                                 "from the ones the pool shows")
        if repair:
            _repair(p, "made the same", pool.give_xattrs, d, path, shown)
        out.append(p)
    return out


def _repair(p: Problem, done: str, fix: Callable[..., None], *args: Any) -> None:
    """Make a repair of owners or xattrs (one the drive refuses is reported, not raised)."""
    try:
        fix(*args)
        p.detail += f"; {done}"
        p.fixed = True
    except OSError as e:
        p.detail += f"; left alone: {e}"


def keeps_owners(d: Drive) -> bool:
    """Whether drive `d`'s filesystem keeps Unix owners and modes."""
    try:
        dev = os.stat(d.root).st_dev
    except OSError:
        return True
    return _keeps_owners(str(d.root), dev)


@functools.lru_cache(maxsize=64)
def _keeps_owners(root: str, dev: int) -> bool:
    """(Looked up once per filesystem: a FAT drive's every copy differs from the pool's.)"""
    return mount_of(Path(root))[1] not in NO_OWNERS


def check_names_linked(pool: Pool, drives: list[Drive], repair: bool, hold: Hold = nullcontext) -> list[Problem]:
    """Every extra name of a file (a hard link) is, on each drive with a copy, a hard link of
    that copy."""
    with hold():
        links = pool.cat.links()
    out = []
    for link_id, node_id in links:
        with hold():
            out += _name_linked(pool, drives, link_id, node_id, repair)
    return out


def _name_linked(pool: Pool, drives: list[Drive], link_id: int, node_id: int, repair: bool) -> list[Problem]:
    out: list[Problem] = []
    if (name_row := pool.cat.node_or_none(link_id)) is None or name_row.link_to != node_id:
        return out  # gone since the list was made
    node = pool.cat.node(node_id)
    path, name = pool.path_of(node_id), pool.path_of(link_id)
    held = {r.drive_id for r in pool.cat.replicas(node_id)} if node.is_file else None
    for d in drives:
        if held is not None and d.id not in held:
            continue
        try:
            copy = d.lstat(path)
        except OSError:
            continue  # no copy to link to: `replicas_match` says so
        try:
            linked = os.path.samestat(copy, d.lstat(name))
            why = f"on {d.name} it is another file than {path}"
        except FileNotFoundError:
            linked, why = False, f"missing on {d.name} (a hard link of {path})"
        if linked:
            continue
        p = Problem("names_linked", name, why)
        if repair:
            aside = pool.relink(node, name, d)
            p.detail += f"; linked it again{f', kept the other file as {aside}' if aside else ''}"
            p.fixed = True
        out.append(p)
    return out


def check_no_stray_files(pool: Pool, drives: list[Drive], repair: bool, hold: Hold = nullcontext) -> list[Problem]:
    """Every file in a drive's HomePool/ tree is a recorded copy, or another name of one."""
    out = []
    # New files of a mount that could not commit for us (it is held up), and those noted for a
    # drive that was away: not strays, on their way in (at the next opening).
    committed, mounted = pool.cat.committed_group(), mounted_at(pool.state_dir)
    coming = [(n.path, n.drives) for n in newfiles.read(pool.state_dir)
              if n.group is None or mounted and n.group > committed]
    for d in drives:
        inodes: dict[int, str] = {}  # the drive's recorded copies by inode, if a stray is a hard link
        with hold():
            links = pool.cat.links()
            on_drive = {r.node_id for r in pool.cat.replicas_on(d.id)}
            known = {pool.path_of(i) for i in on_drive} | {pool.path_of(i) for i, to in links if to in on_drive}
            known |= {path for path, ids in coming if d.id in ids}
            owed = pool.owed_paths(d.id)  # on their way out: not strays
        for path, kind in list(scan_tree(d)):  # without holding: a walk of a drive takes a while
            if path in owed or any(path.startswith(o + "/") for o in owed) or path in known:
                continue
            if kind == "entry" and "/" not in path:
                continue  # (only folders are at the top: a symlink there, say a folder's kept aside, stays as it is)
            hashed = None
            if repair and kind == "file":  # hashed without the lock (a big file takes a while), if a stray
                with hold():
                    stray = _strayed(pool, d, path, kind)
                hashed = _hash_unheld(d, path) if stray else None
            with hold():
                if not _strayed(pool, d, path, kind):
                    continue  # changed since (the mount went on meanwhile)
                p = Problem("no_stray_files", path, STRAY[kind].format(d.name))
                if repair:
                    try:
                        if kind == "dir":
                            pool._register_dir(d, pool._canonical(path))
                            p.fixed = True
                        else:
                            ino = d.lstat(path).st_ino
                            at: list[str] = []
                            digest = hashed[1] if hashed and _stat_key(d, path) == hashed[0] else None
                            line = pool.register_entry(d, path) if kind == "entry" else (
                                pool.adopt_name(d, path, inodes) or pool.register_file(d, path, digest, recorded=at))
                            for recorded in at:  # a hard link of it, found later, is a name of it
                                inodes[ino] = recorded
                            p.detail += f"; {line}"
                            p.fixed = "left" not in line.split(":")[0]
                    except (HomepoolError, OSError) as e:
                        p.detail += f"; left alone: {e}"
                out.append(p)
    return out


STRAY = {"dir": "folder on {} is not in the pool", "file": "file on {} is not in the catalog",
         "entry": "symlink or special file on {} is not in the pool"}


def _strayed(pool: Pool, d: Drive, path: str, kind: str) -> bool:
    """Whether `path` on drive `d` is still there, as what the walk saw (a folder, a file, or
    a symlink or special file), and still unknown to the catalog."""
    try:
        mode = d.lstat(path).st_mode
    except FileNotFoundError:
        return False
    # (the mount may have put another kind there)
    as_seen = stat_.S_ISDIR(mode) if kind == "dir" else stat_.S_ISREG(mode) if kind == "file" else \
        not stat_.S_ISDIR(mode) and not stat_.S_ISREG(mode)
    if not as_seen or path in pool.owed_paths(d.id):
        return False
    row = pool.lookup(path)
    if kind == "entry":  # (in the place of a file or folder the pool has: kept aside and taken in)
        return row is None or pool.cat.resolve(row).kind not in ("symlink", "special")
    if kind == "dir" or row is None:
        return row is None
    node = pool.cat.resolve(row)
    return not (node.is_file and any(r.drive_id == d.id for r in pool.cat.replicas(node.id)))


def _stat_key(d: Drive, path: str) -> tuple[int, ...] | None:
    try:
        st = d.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) if stat_.S_ISREG(st.st_mode) else None


def _hash_unheld(d: Drive, path: str) -> tuple[tuple[int, ...], str] | None:
    """A stray file's hash, taken without the mount's lock, with what it was then: used under
    the lock only if the file is still the same (else it is hashed there)."""
    before = _stat_key(d, path)
    if before is None:
        return None
    try:
        digest = d.hash(path)
    except OSError:
        return None
    return (before, digest) if _stat_key(d, path) == before else None


def check_copies_met(pool: Pool, repair: bool, hold: Hold = nullcontext) -> list[Problem]:
    """Every file has as many good copies, on distinct drives, as its folder wants (not
    fewer, and not more: a change of a folder's copies cut short leaves extra ones)."""
    with hold():
        short = pool.cat.short_files(or_over=True)
    out = []
    for node_id, good, wanted in short:
        with hold():
            if pool.cat.node_or_none(node_id) is None or pool.copies_pending(node_id):
                continue  # gone since, or the mount is about to give it its copies
            path = pool.path_of(node_id)
            p = Problem("copies_met", path, f"has {good} of {wanted} copies" if good < wanted
                        else f"has {good} copies, its folder wants {wanted}")
            if repair:
                now = pool.reconcile(pool.cat.node(node_id))
                if now == wanted:
                    p.fixed = True
                    p.detail += f"; now {now}"
                elif good > wanted:
                    p.detail += f"; now {now}: a copy that could not be verified stays"
                elif now > good:
                    p.detail += f"; now {now}, not enough drives with room for more"
                else:
                    p.detail += "; no other drive has room for a copy (add a drive)"
            out.append(p)
    return out


def check_link_counts(pool: Pool, repair: bool) -> list[Problem]:
    """Every link count the mount shows is right: a file's names, a directory's subdirectories."""
    out = []
    for node_id, recorded, real in pool.cat.wrong_link_counts():
        p = Problem("link_counts", pool.path_of(node_id) or "/", f"counts {recorded} more links, has {real}")
        if repair:
            pool.set_link_count(node_id, real)
            p.fixed = True
        out.append(p)
    return out

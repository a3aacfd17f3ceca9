"""Helpers on one drive's plain tree: walking it, renaming on it, naming conflict copies.
No catalog here: `core` decides, these only do."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Collection, Iterator
from contextlib import suppress

from ..drives import Drive
from ..errors import AlreadyExists

log = logging.getLogger(__name__)


def copy_is_at_fault(e: OSError) -> bool:
    """Whether an error opening or reading a copy means the copy itself is damaged or gone
    (not, say, too many open files, which says nothing about the copy)."""
    return e.errno in (errno.ENOENT, errno.EIO, errno.ESTALE, errno.ENXIO, errno.ENODEV, errno.EBADMSG,
                       errno.EUCLEAN)


def rename_on(d: Drive, src: str, dst: str, kind: str) -> None:
    """Rename a pool path on one drive (idempotent: nothing to do if `src` is not there).
    A directory replaces an empty one at its destination there, as in the pool; one with
    something in it (a returning drive picked up elsewhere, say a .DS_Store) gets what is in
    `src` entry by entry, and its owner and mode; an entry whose name is taken on both sides
    stays at `src` for `check` to show."""
    if kind != "dir":  # the common case in one system call: a file to a place whose folder is there
        try:
            d.rename(src, dst)
            return
        except FileNotFoundError:
            pass
    if not d.lexists(src):
        return
    d.makedirs(dst.rpartition("/")[0])
    if kind == "dir" and d.is_dir(dst):
        try:
            d.rename(src, dst)  # over an empty folder, as in the pool: its owner, mode and xattrs go with it
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        st = d.lstat(src)
        _merge_dir(d, src, dst)
        d.do(os.lchown, dst, st.st_uid, st.st_gid)  # (the catalog has the moved folder's)
        d.do(os.chmod, dst, st.st_mode & 0o7777)
        return
    d.rename(src, dst)


def link_name(d: Drive, src: str, dst: str) -> str | None:
    """Make pool path `dst` on drive `d` a hard link of `src` there (idempotent). Anything
    else at `dst` is kept aside, never overwritten: returns the name it was given."""
    aside = None
    try:
        d.link(src, dst)
        return None
    except FileNotFoundError:
        if not d.lexists(src):
            raise
        d.makedirs(dst.rpartition("/")[0])
    except FileExistsError:
        if os.path.samestat(d.lstat(src), d.lstat(dst)):
            return None
        aside = keep_aside(d, dst)
    d.link(src, dst)
    return aside


def unlink_names(d: Drive, path: str, names: Collection[str]) -> None:
    """Remove the names (pool paths) on drive `d` that are hard links of the entry at `path`
    there (before that entry goes: a name that is something else stays, for `check`)."""
    if not names:
        return
    try:
        st = d.lstat(path)
    except FileNotFoundError:
        return
    for name in names:
        with suppress(FileNotFoundError):
            if os.path.samestat(st, d.lstat(name)):
                d.unlink(name)


# The extended attributes the pool keeps on its copies and shows (security and system ones
# belong to each drive).
KEPT_XATTRS = ("user.", "trusted.")
KEPT_XATTRS_B = tuple(n.encode() for n in KEPT_XATTRS)  # (as the mount gets and gives names)


def xattrs_of(full: str) -> dict[bytes, bytes]:
    """Every extended attribute of the entry at path `full` (a symlink is not followed)."""
    return {os.fsencode(n): os.getxattr(full, n, follow_symlinks=False)
            for n in os.listxattr(full, follow_symlinks=False)}


def kept_xattrs(d: Drive, path: str) -> dict[bytes, bytes]:
    """The extended attributes the pool keeps of the entry at `path` on drive `d`."""
    return {n: v for n, v in d.do(xattrs_of, path).items() if n.startswith(KEPT_XATTRS_B)}


def copy_xattrs(src_fd: int, dst_fd: int, path: str, target: str) -> None:
    """Give a new copy the extended attributes of the one it was copied from (the user's and
    trusted ones: security and system ones belong to the drive). A drive that cannot keep
    them still gets the copy; the log says what it lacks."""
    try:
        names = os.listxattr(src_fd)
    except OSError as e:  # a drive without extended attributes (ENOTSUP): none to carry
        log.info("extended attributes of %s not read: %s", path, e)
        return
    for name in names:
        if name.startswith(KEPT_XATTRS):
            try:
                os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
            except OSError as e:
                log.warning("the copy of %s on %s lacks its extended attribute %s: %s", path, target, name, e)


def keep_aside(d: Drive, path: str) -> str:
    """Something the catalog does not know is at `path` on `d`: rename it to a conflict name
    (never overwrite it). Returns that name."""
    aside = conflict_name(path, d.label, d.lexists)
    log.error("%s on %s was not in the pool; kept aside as %s", path, d.name, aside)
    d.rename(path, aside)
    return aside


def _merge_dir(d: Drive, src: str, dst: str) -> None:
    """Move what is in folder `src` into folder `dst` on drive `d`, folder by folder (no
    recursion: a tree may be deeper than Python's stack); `src` goes if it ends up empty."""
    merged, pairs = [], [(src, dst)]
    while pairs:
        s, t = pairs.pop()
        merged.append(s)
        for name in d.listdir(s):
            a, b = f"{s}/{name}", f"{t}/{name}"
            if not d.lexists(b):
                d.rename(a, b)
            elif d.is_dir(a) and d.is_dir(b):
                pairs.append((a, b))
    for s in reversed(merged):  # the deepest first
        with suppress(OSError):
            d.do(os.rmdir, s)


def _entries(full: str) -> list[tuple[str, bool, bool]]:
    """(name, is_dir, is_file) of what is in a folder, sorted; symlinks not followed."""
    with os.scandir(full) as it:
        return sorted((e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in it)


def scan_tree(d: Drive) -> Iterator[tuple[str, str]]:
    """(pool path, kind) of everything in drive `d`'s tree, parents first: kind "dir", "file"
    or "entry" (a symlink or special file, never followed)."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = d.do(_entries, rel)
        except OSError as err:
            log.error("cannot read %s: %s", d.real(rel), err)
            continue
        for name, is_dir, is_file in entries:
            path = f"{rel}/{name}" if rel else name
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                log.warning("skipping %s: its name is not valid UTF-8; rename it to bring it into the pool",
                            d.real(os.fsdecode(path.encode("utf-8", "surrogateescape"))))
                continue
            if is_dir:
                yield path, "dir"
                stack.append(path)
            else:
                yield path, "file" if is_file else "entry"


def make_entry(d: Drive, path: str, mode: int, uid: int, gid: int, target: str | None, rdev: int) -> None:
    """A symlink (`target`) or special file (FIFO, socket, device node) at `path` on drive
    `d`, with its owner; the folders on the way are made if the drive lacks them. Something
    already there is the caller's to remove or keep aside first."""
    d.makedirs(path.rpartition("/")[0])
    if target is not None:
        d.do(lambda p: os.symlink(target, p), path)
    else:
        d.do(os.mknod, path, mode, rdev)
    d.do(os.lchown, path, uid, gid)
    if target is None:  # (mknod's mode loses the umask's bits, and chown the set-id ones)
        d.do(os.chmod, path, mode & 0o7777)


def conflict_name(path: str, label: str, taken) -> str:
    """`dir/name (conflict LABEL).ext`, numbered if needed, for a copy that must be kept aside."""
    label = "".join(c if c.isprintable() and c not in "/\\" else "-" for c in label)
    head, _, name = path.rpartition("/")
    stem, dot, ext = name.partition(".") if not name.startswith(".") else (name, "", "")
    for i in range(1, 1000):
        tag = f" (conflict {label})" if i == 1 else f" (conflict {label} {i})"
        cand = f"{stem}{tag}{dot}{ext}"
        full = f"{head}/{cand}" if head else cand
        if not taken(full):
            return full
    raise AlreadyExists(path=path)



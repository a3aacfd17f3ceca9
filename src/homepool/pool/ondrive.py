"""Helpers on one drive's plain tree: walking it, renaming on it, naming conflict copies.
No catalog here: `core` decides, these only do."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Collection, Iterator
from contextlib import suppress
from pathlib import Path

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
    A directory whose destination already exists there (an empty one, or one a returning
    drive picked up elsewhere, say a .DS_Store) is merged into it entry by entry; an entry
    whose name is taken on both sides stays at `src` for `check` to show."""
    if kind != "dir":  # the common case in one system call: a file to a place whose folder is there
        s_, t_ = f"{d.tree_s}/{src}", f"{d.tree_s}/{dst}"
        try:
            os.rename(s_, t_)
            return
        except FileNotFoundError:
            if not os.path.lexists(s_):
                return
    s, t = d.real(src), d.real(dst)
    if not (s.exists() or s.is_symlink()):
        return
    d.makedirs(dst.rpartition("/")[0])
    if kind == "dir" and t.is_dir():
        _merge_dir(s, t)
        return
    os.rename(s, t)


def link_name(d: Drive, src: str, dst: str) -> str | None:
    """Make pool path `dst` on drive `d` a hard link of `src` there (idempotent). Anything
    else at `dst` is kept aside, never overwritten: returns the name it was given."""
    s_, t_ = f"{d.tree_s}/{src}", f"{d.tree_s}/{dst}"
    aside = None
    try:
        os.link(s_, t_, follow_symlinks=False)
        return None
    except FileNotFoundError:
        if not os.path.lexists(s_):
            raise
        d.makedirs(dst.rpartition("/")[0])
    except FileExistsError:
        if os.path.samestat(os.lstat(s_), os.lstat(t_)):
            return None
        aside = keep_aside(d, dst)
    os.link(s_, t_, follow_symlinks=False)
    return aside


def unlink_names(d: Drive, path: str, names: Collection[str]) -> None:
    """Remove the names (pool paths) on drive `d` that are hard links of the entry at `path`
    there (before that entry goes: a name that is something else stays, for `check`)."""
    if not names:
        return
    try:
        st = os.lstat(f"{d.tree_s}/{path}")
    except FileNotFoundError:
        return
    for name in names:
        real = f"{d.tree_s}/{name}"
        with suppress(FileNotFoundError):
            if os.path.samestat(st, os.lstat(real)):
                os.unlink(real)


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
        if name.startswith(("user.", "trusted.")):
            try:
                os.setxattr(dst_fd, name, os.getxattr(src_fd, name))
            except OSError as e:
                log.warning("the copy of %s on %s lacks its extended attribute %s: %s", path, target, name, e)


def keep_aside(d: Drive, path: str) -> str:
    """Something the catalog does not know is at `path` on `d`: rename it to a conflict name
    (never overwrite it). Returns that name."""
    aside = conflict_name(path, d.label, lambda q: os.path.lexists(d.real(q)))
    log.error("%s on %s was not in the pool; kept aside as %s", path, d.name, aside)
    os.rename(d.real(path), d.real(aside))
    return aside


def _merge_dir(s: Path, t: Path) -> None:
    for entry in os.scandir(s):
        target = t / entry.name
        if not (target.exists() or target.is_symlink()):
            os.rename(entry.path, target)
        elif entry.is_dir(follow_symlinks=False) and target.is_dir():
            _merge_dir(Path(entry.path), target)
    with suppress(OSError):
        s.rmdir()


def scan_tree(root: Path) -> Iterator[tuple[str, bool]]:
    """(relative path, is_dir) of everything under `root`, parents first. Skips symlinks and
    special files (the pool stores neither yet)."""
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = sorted(os.scandir(root / rel if rel else root), key=lambda e: e.name)
        except OSError as err:
            log.error("cannot read %s: %s", root / rel, err)
            continue
        for entry in entries:
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                path.encode("utf-8")
            except UnicodeEncodeError:
                log.warning("skipping %s: its name is not valid UTF-8; rename it to bring it into the pool",
                            root / os.fsdecode(path.encode("utf-8", "surrogateescape")))
                continue
            if entry.is_dir(follow_symlinks=False):
                yield path, True
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                yield path, False


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



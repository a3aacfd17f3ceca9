"""`homepool import SRC DEST`: copy existing files into the pool.

SRC is a file or a directory on the server; DEST a pool path inside a folder. A directory's
*contents* go into DEST (``import ~/Pictures Photos/`` puts ``~/Pictures/2010`` at
``Photos/2010``), like ``rsync SRC/ DEST/``. Files already in the pool with the same size and
modification time are skipped, so an interrupted import resumes where it stopped; a file whose
size or time differs is replaced. Everything is checked before anything is written (the
destination folder, the space needed), and files are written in batches: a crash leaves each
file either fully imported or not at all.

Symbolic links are copied as the links they are (as `cp -a` does: never followed); FIFOs,
sockets and device nodes are skipped. Calls only the pool API. The caller passes `progress` to show a bar.
"""

from __future__ import annotations

import logging
import os
import stat as stat_
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import paths
from .catalog import Node
from .config import env_number
from .errors import BadSource, ImportTooBig, NotADirectory, PoolFull, SourceVanished
from .pool import Pool
from .units import human

log = logging.getLogger(__name__)


@dataclass
class SourceFile:
    src: Path
    dest: str  # pool path
    size: int
    mtime_ns: int
    mode: int


@dataclass
class SourceLink:
    src: Path
    dest: str  # pool path
    target: str  # what the link holds (never followed)
    mtime_ns: int


@dataclass
class ImportPlan:
    copies: int = 1  # what the destination folder wants
    files: list[SourceFile] = field(default_factory=list)  # to copy
    links: list[SourceLink] = field(default_factory=list)  # symbolic links to make
    dirs: list[str] = field(default_factory=list)  # pool dirs to create, parents first
    skipped_same: int = 0  # already in the pool, identical
    skipped_other: list[str] = field(default_factory=list)  # special files, bad names, conflicts

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class ImportResult:
    imported: int = 0
    bytes: int = 0
    links: int = 0  # symbolic links made
    skipped_same: int = 0
    skipped_other: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # source files that could not be read


def plan(pool: Pool, src: Path, dest: str) -> ImportPlan:
    """What importing `src` into `dest` would do. Reads the source tree; changes nothing."""
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        raise BadSource(path=str(src), why="no such file or directory") from None
    except OSError as e:
        raise BadSource(path=str(src), why=e.strerror or str(e)) from None
    parts = paths.split(dest)
    if not parts:
        raise BadSource(path=str(src), why="the destination must be inside a folder, such as Photos/")
    folder, copies = pool.folder(parts[0])  # raises NoSuchFolder
    parts = (folder.name, *parts[1:])
    out = ImportPlan(copies=copies)
    if stat_.S_ISREG(st.st_mode):
        existing = pool.lookup(paths.join(parts))
        if dest.endswith("/") or (existing is not None and existing.is_dir) or len(parts) == 1:
            parts = (*parts, src.name)
        parent = _plan_dirs(pool, out, parts[:-1])
        _add_file(pool, out, parent, src, parts, st)
        return out
    if not stat_.S_ISDIR(st.st_mode):
        raise BadSource(path=str(src), why="it is neither a file nor a directory")
    top = _plan_dirs(pool, out, parts)
    stack: list[tuple[Path, tuple[str, ...], Node | None]] = [(src, parts, top)]
    while stack:
        sdir, pdir, pnode = stack.pop()
        try:
            entries = sorted(os.scandir(sdir), key=lambda e: e.name)
        except OSError as err:
            raise BadSource(path=str(sdir), why=err.strerror or str(err)) from None
        subdirs: list[tuple[Path, tuple[str, ...], Node | None]] = []
        for entry in entries:
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                out.skipped_other.append(f"{entry.path}: name is not valid UTF-8")
                continue
            target = (*pdir, entry.name)
            try:
                est = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone between listing and stat: nothing to import
            if stat_.S_ISDIR(est.st_mode):
                node = pool.cat.child(pnode.id, entry.name) if pnode is not None else None
                if node is not None and not node.is_dir:
                    raise NotADirectory(path=paths.join(target))
                if node is None:
                    out.dirs.append(paths.join(target))
                subdirs.append((Path(entry.path), target, node))
            elif stat_.S_ISREG(est.st_mode):
                _add_file(pool, out, pnode, Path(entry.path), target, est)
            elif stat_.S_ISLNK(est.st_mode):
                _add_link(pool, out, pnode, Path(entry.path), target, est)
            else:
                out.skipped_other.append(f"{entry.path}: special files (FIFOs, sockets, devices) are not imported")
        stack.extend(reversed(subdirs))  # depth first, in name order
    return out


def _plan_dirs(pool: Pool, out: ImportPlan, parts: tuple[str, ...]) -> Node | None:
    """Note the directories of `parts` the pool lacks; return the deepest node (None if new)."""
    node: Node | None = None
    for i in range(1, len(parts) + 1):
        sub = paths.join(parts[:i])
        node = pool.lookup(sub)
        if node is not None and not node.is_dir:
            raise NotADirectory(path=sub)
        if node is None:
            out.dirs.extend(paths.join(parts[:j]) for j in range(i, len(parts) + 1))
            return None
    return node


def _add_file(pool: Pool, out: ImportPlan, parent: Node | None, src: Path, target: tuple[str, ...],
              st: os.stat_result) -> None:
    dest = paths.join(target)
    node = pool.cat.child(parent.id, target[-1]) if parent is not None else None
    if node is not None and node.is_dir:
        out.skipped_other.append(f"{src}: the pool has a folder at {dest}")
        return
    if node is not None:
        node = pool.cat.resolve(node)
    if node is not None and node.size == st.st_size and node.mtime_ns == st.st_mtime_ns:
        out.skipped_same += 1
        return
    if node is not None and node.links:
        out.skipped_other.append(f"{src}: {dest} has other names in the pool (hard links); not replaced")
        return
    out.files.append(SourceFile(src, dest, st.st_size, st.st_mtime_ns, st.st_mode))


def _add_link(pool: Pool, out: ImportPlan, parent: Node | None, src: Path, target: tuple[str, ...],
              st: os.stat_result) -> None:
    """A symbolic link is copied as the link it is (as `cp -a` does), never followed."""
    dest = paths.join(target)
    try:
        holds = os.readlink(src)
    except OSError as e:
        out.skipped_other.append(f"{src}: {e.strerror or e}")
        return
    node = pool.cat.child(parent.id, target[-1]) if parent is not None else None
    if node is not None and node.target == holds:
        out.skipped_same += 1
    elif node is not None and node.kind != "symlink":  # (a symlink changed since is replaced, as a file is)
        out.skipped_other.append(f"{src}: the pool has a {'folder' if node.is_dir else 'file'} at {dest}")
    else:
        out.links.append(SourceLink(src, dest, holds, st.st_mtime_ns))


def check_space(pool: Pool, p: ImportPlan) -> None:
    """Refuse an import that cannot fit, before writing anything."""
    drives = pool.drives(present_only=True)
    rooms = [c.room for c in pool._candidates(drives)]
    largest = max(rooms, default=0)
    big = max(p.files, key=lambda f: f.size, default=None)
    if big is not None and big.size > largest:
        raise PoolFull(path=big.dest, size=human(big.size), largest=human(largest))
    needed = p.bytes * min(p.copies, len(drives))
    if needed > sum(rooms):
        raise ImportTooBig(needed=human(needed), free=human(sum(rooms)))


def run(pool: Pool, src: Path, dest: str, progress: Callable[[int, SourceFile], None] | None = None,
        planned: ImportPlan | None = None) -> ImportResult:
    """Import `src` into `dest`. `progress(bytes_done_delta, file)` is called after each file."""
    p = planned if planned is not None else plan(pool, src, dest)
    check_space(pool, p)
    pool.makedirs_many(p.dirs)
    result = ImportResult(skipped_same=p.skipped_same, skipped_other=p.skipped_other)
    # Batch size can be lowered (tests use it to make commits frequent and kill points exact).
    max_files = max(1, int(env_number("HOMEPOOL_IMPORT_BATCH_FILES", 5000)))
    with pool.batch(max_files=max_files) as batch:
        for f in p.files:
            try:
                fh = open(f.src, "rb", buffering=0)  # noqa: SIM115 (closed below, after the checks)
            except FileNotFoundError:
                raise SourceVanished(path=str(f.src)) from None
            except OSError as e:
                result.failed.append(f"{f.src}: {e.strerror or e}")
                continue
            with fh:
                try:
                    staged = batch.put(f.dest, fh, f.size, f.mode, f.mtime_ns)
                except OSError as e:  # reading the source (a drive's failure is a HomepoolError)
                    result.failed.append(f"{f.src}: {e.strerror or e}")
                    continue
                after = os.fstat(fh.fileno())  # changed since `plan` looked at it?
            if staged.size != f.size or after.st_mtime_ns != f.mtime_ns or after.st_size != f.size:
                batch.discard(staged)  # not committed yet: commits happen only below
                raise SourceVanished(path=str(f.src))
            batch.commit_if_full()
            result.imported += 1
            result.bytes += f.size
            if progress is not None:
                progress(f.size, f)
    for link in p.links:
        if pool.lookup(link.dest) is not None:  # a symlink that holds another target now
            pool.delete(link.dest)
        pool.add_symlink(link.dest, link.target, link.mtime_ns)
        result.links += 1
    return result


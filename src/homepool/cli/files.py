"""`homepool import` and `homepool ls`: files in and out of view."""

from __future__ import annotations

import stat as stat_
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from .. import importer, paths
from ..catalog import Node
from ..errors import ImportIncomplete
from ..pool import Pool
from ..units import human
from . import app, err, open_pool, out


@app.command("import")
def do_import(
    src: Annotated[Path, typer.Argument(help="A file or directory on this machine.")],
    dest: Annotated[str, typer.Argument(help="Where in the pool, e.g. Photos/ (a directory's contents go "
                                        "inside it).")],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Copy existing files into the pool. Resumable: files already there and identical are skipped."""
    with open_pool() as pool:
        plan = importer.plan(pool, src, dest)
        start = time.monotonic()
        show = not quiet and sys.stderr.isatty()
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeRemainingColumn(), console=err, disable=not show, transient=True) as bar:
            task = bar.add_task(f"importing {len(plan.files)} files", total=plan.bytes)
            result = importer.run(pool, src, dest, lambda n, f: bar.advance(task, n), planned=plan)
        secs = time.monotonic() - start
    rate = f" ({human(result.bytes / secs)}/s)" if secs > 0 and result.bytes else ""
    links = f", {result.links} symbolic link{'' if result.links == 1 else 's'}" if result.links else ""
    out.print(f"Imported {result.imported} file{'' if result.imported == 1 else 's'}, {human(result.bytes)}{rate}"
              f"{links}; {result.skipped_same} already in the pool.", markup=False)
    for line in result.skipped_other[:20]:
        out.print(f"  skipped {line}", markup=False)
    if len(result.skipped_other) > 20:
        out.print(f"  ... and {len(result.skipped_other) - 20} more skipped", markup=False)
    for line in result.failed[:20]:
        out.print(f"  could not read {line}", markup=False)
    if result.failed:
        raise ImportIncomplete(count=len(result.failed), first=result.failed[0])


def _mode(node: Node) -> str:
    return stat_.filemode(node.mode if node.mode & 0o170000 else (node.mode | (stat_.S_IFDIR if node.is_dir
                                                                               else stat_.S_IFREG)))


def _line(pool: Pool, node: Node, name: str, labels: dict[int, str] | None) -> str:
    """One `ls` line; `labels` (drive id -> label) adds which drives hold each copy."""
    node = pool.cat.resolve(node)  # a hard link shows the file it names
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(node.mtime_ns / 1e9))
    if node.is_dir:
        extra = ""
        if node.parent_id == 1:
            copies = pool.cat.folder_copies(node.id)
            extra = f"{copies} {'copy' if copies == 1 else 'copies'}"
        return f"{_mode(node)}  {'-':>10}  {when}  {extra:<10}  {name}/"
    reps = pool.cat.replicas(node.id)
    good = sum(1 for r in reps if r.state == "ok")
    wanted = pool.copies_wanted(node.id)
    shown = f"{good}/{wanted} copies"
    line = f"{_mode(node)}  {human(node.size):>10}  {when}  {shown:<10}  {name}"
    if labels is not None:
        line += "  [" + ", ".join(labels.get(r.drive_id, "?") + ("" if r.state == "ok" else " (bad)")
                                   for r in reps) + "]"
    return line


@app.command("ls")
def do_ls(
    path: Annotated[str, typer.Argument(help="A folder or file in the pool.")] = "",
    recursive: Annotated[bool, typer.Option("--recursive", "-R", help="List subfolders too.")] = False,
    drives: Annotated[bool, typer.Option("--drives", "-d", help="Show which drives hold each file.")] = False,
) -> None:
    """List the pool's one tree (size, time, copies) without touching the drives."""
    with open_pool(write=False) as pool:
        node = pool.stat(path)
        base = pool.path_of(node.id)
        labels = {d.id: d.label for d in pool.cat.drives()} if drives else None  # read once, not per line
        if not node.is_dir:
            out.print(_line(pool, node, base, labels), markup=False)
            return
        todo = [(base, node)]
        first = True
        while todo:
            dpath, dnode = todo.pop(0)
            children = pool.cat.children(dnode.id)
            if recursive:
                if not first:
                    out.print()
                out.print(f"{dpath or '/'}:", markup=False)
            first = False
            for child in children:
                out.print(_line(pool, child, child.name, labels), markup=False)
            if recursive:
                todo[0:0] = [(paths.join([*paths.split(dpath), c.name]), c) for c in children if c.is_dir]

"""`homepool folder add|set|list`."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from .. import control
from ..errors import PoolMounted
from ..units import human
from . import app, open_pool, out, state

folder_app = typer.Typer(help="Top-level folders and how many copies their files get.", no_args_is_help=True)
app.add_typer(folder_app, name="folder")

CopiesOpt = Annotated[int, typer.Option("--copies", "-c", help="Keep each file on this many different drives "
                                        "(2 survives a failed drive).")]


@folder_app.command("add")
def do_folder_add(name: str, copies: CopiesOpt = 1) -> None:
    """Create a top-level folder."""
    try:
        with open_pool() as pool:
            pool.add_folder(name, copies)
            drives = len(pool.drives(present_only=True))
    except PoolMounted as mounted:  # the mount makes the change
        drives = control.ask(state.state_dir, mounted, {"op": "add_folder", "folder": name, "copies": copies})["drives"]
    out.print(f"Created folder {name.strip('/')} with {copies} {'copy' if copies == 1 else 'copies'}.")
    if copies > drives:
        out.print(f"Note: the pool has {drives} drive(s), so its files will be short of copies until you add "
                  "more drives.")


@folder_app.command("set")
def do_folder_set(name: str, copies: CopiesOpt) -> None:
    """Change a folder's copies; copies are added or removed right away to match (while mounted,
    a file open for writing gets them when it is closed)."""
    try:
        with open_pool() as pool:
            node, before = pool.folder(name)
            name = node.name
            short = pool.set_copies(name, copies)
            drives = len(pool.drives(present_only=True))
    except PoolMounted as mounted:  # the mount makes the change
        r = control.ask(state.state_dir, mounted, {"op": "set_copies", "folder": name, "copies": copies})
        name, before, short, drives = r["name"], r["before"], r["short"], r["drives"]
        if r.get("waiting"):
            out.print(f"{r['waiting']} file(s) in use get their copies once they are closed.")
    out.print(f"Folder {name}: {before} -> {copies} {'copy' if copies == 1 else 'copies'}.")
    if short:
        why = f"the pool has {drives} drive(s)" if copies > drives else "no drive has room for more"
        out.print(f"{len(short)} file(s) are short of copies ({why}); they get them when a drive is added "
                  "(`homepool check --repair`).")


@folder_app.command("list")
def do_folder_list() -> None:
    """Show the folders, their copies, and their health."""
    with open_pool(write=False) as pool:
        infos = pool.folder_infos()
    t = Table(box=None, pad_edge=False)
    for col in ("folder", "copies", "files", "size", "health"):
        t.add_column(col, justify="right" if col in ("copies", "files", "size") else "left")
    for f in infos:
        t.add_row(f.name, str(f.copies), str(f.files), human(f.bytes),
                  "ok" if not f.short else f"{f.short} short of copies")
    out.print(t)

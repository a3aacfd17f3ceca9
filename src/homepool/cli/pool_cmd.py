"""Whole-pool commands: init, status, check, recover."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .. import check as check_mod
from .. import control
from .. import recover as recover_mod
from ..config import mounted_at, stuck_since
from ..errors import PoolMounted
from ..pool import DEFAULT_FOLDERS, Pool
from ..units import human
from . import app, open_pool, out, state


@app.command("init")
def do_init() -> None:
    """Create a new, empty pool with the default folders (Documents, Photos, Music, ...)."""
    pool = Pool.create(state.state_dir)
    try:
        out.print(f"Created a pool in {state.state_dir} with folders:")
        for name, copies in DEFAULT_FOLDERS.items():
            out.print(f"  {name:<12} {copies} {'copy' if copies == 1 else 'copies'}")
        out.print("Next: add drives with `homepool drive add PATH`.")
    finally:
        pool.close()


def status_data(pool: Pool) -> dict[str, Any]:
    drives = pool.drive_infos()
    folders = pool.folder_infos()
    files, size = pool.cat.count_files()
    active = [d for d in drives if d.state == "active"]
    alerts = []
    for d in drives:
        if d.state != "active":
            owed = len(pool.cat.owed(d.id))
            waiting = f"; {owed} change(s) wait for it" if owed else ""
            alerts.append(f"drive {d.label!r} ({d.path}) is missing: mount it again{waiting}")
        elif d.shared_device:
            alerts.append(f"drive {d.label!r} shares a disk with another drive (--allow-shared-device): "
                          "copies on both do not protect against that disk failing")
        elif d.size and d.free < d.size * 0.05:
            alerts.append(f"drive {d.label!r} is almost full ({human(d.free)} free)")
    if not active:
        alerts.append("no drives yet: add one with `homepool drive add PATH`" if not drives
                      else "no drive is present: files cannot be read or written until one is back")
    for f in folders if active else []:
        if f.short:
            why = (f"the pool has {len(active)} drive(s)" if f.copies > len(active)
                   else "a drive is missing or full; `homepool check --repair` makes the copies")
            alerts.append(f"folder {f.name}: {f.short} file(s) short of {f.copies} copies ({why})")
        elif f.copies > len(active):
            alerts.append(f"folder {f.name} wants {f.copies} copies but the pool has {len(active)} drive(s)")
    # While mounted, the journal holds the mount's changes in progress (files open for writing).
    mounted = mounted_at(pool.state_dir)
    if mounted and (since := stuck_since(pool.state_dir)):
        alerts.append(f"the mount at {mounted} has been held up since {since} by a change that has not finished (a "
                      "drive that does not answer?): files can be found, listed and read, but changes and opens wait; "
                      "the mount's log says more")
    unfinished = 0 if mounted else len(pool.cat.journal())
    if unfinished:
        alerts.append(f"{unfinished} interrupted operation(s): run `homepool check --repair`")
    return {
        "pool": {"id": pool.config.pool_id, "state_dir": str(pool.state_dir), "placement": pool.config.placement},
        "health": "ok" if not alerts else "attention",
        "drives": [vars(d) for d in drives],
        "folders": [vars(f) for f in folders],
        "totals": {"files": files, "bytes": size, "drives": len(drives), "active_drives": len(active),
                   "size": sum(d.size for d in active), "free": sum(d.free for d in active),
                   "used": sum(d.used for d in drives)},
        "unfinished_operations": unfinished,
        "alerts": alerts,
    }


def drive_table(data: dict[str, Any]) -> Table:
    t = Table(title="Drives", title_justify="left", box=None, pad_edge=False)
    for col in ("label", "path", "fs", "size", "free", "used by pool", "files", "state"):
        t.add_column(col, justify="right" if col in ("size", "free", "used by pool", "files") else "left")
    for d in data["drives"]:
        note = d["state"]
        if d["shared_device"]:
            note += " (shared disk)"
        if d["max_size"]:
            note += f" (cap {human(d['max_size'])})"
        live = d["state"] == "active"
        t.add_row(d["label"], d["path"], d["fstype"], human(d["size"]) if live else "-",
                  human(d["free"]) if live else "-", human(d["used"]), str(d["files"]), note)
    return t


@app.command("status")
def do_status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Drives, space, folders and their copies, and anything that needs attention."""
    with open_pool(write=False) as pool:
        data = status_data(pool)
    if as_json:
        out.print_json(json.dumps(data))
        return
    tot = data["totals"]
    out.print(f"Pool {data['pool']['id'][:8]} in {data['pool']['state_dir']}: {tot['files']} files, "
              f"{human(tot['used'])} stored (with copies) on {tot['active_drives']} of {tot['drives']} drive(s), "
              f"{human(tot['free'])} free")
    out.print()
    out.print(drive_table(data))
    out.print()
    t = Table(title="Folders", title_justify="left", box=None, pad_edge=False)
    for col in ("folder", "copies", "files", "size", "health"):
        t.add_column(col, justify="right" if col in ("copies", "files", "size") else "left")
    for f in data["folders"]:
        health = "ok" if not f["short"] else f"{f['short']} short of copies"
        t.add_row(f["name"], str(f["copies"]), str(f["files"]), human(f["bytes"]), health)
    out.print(t)
    out.print()
    if data["alerts"]:
        out.print("Needs attention:")
        for a in data["alerts"]:
            out.print(f"  ! {a}", markup=False)
    else:
        out.print("Everything is fine: every file has all its copies.")


@app.command("check")
def do_check(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is found: finish interrupted operations, "
                                         "remove unfinished temp files, record stray files, make missing "
                                         "copies. Never deletes your files.")] = False,
) -> None:
    """Check that the catalog and the drives agree (exit code 1 if something is left to fix)."""
    try:
        with open_pool(write=True) as pool:
            problems = check_mod.check(pool, repair=repair)
    except PoolMounted as mounted:  # the mount checks (and repairs), between the requests it serves
        answer = control.ask(state.state_dir, mounted, {"op": "check", "repair": repair})
        problems = [check_mod.Problem(**p) for p in answer["problems"]]
    for p in problems:
        out.print(p.line(), markup=False)
    left = [p for p in problems if not p.fixed]
    if not problems:
        out.print("No problems found.")
    elif left:
        hint = "" if repair else "; `homepool check --repair` fixes what can be fixed"
        out.print(f"{len(left)} problem(s) left{hint}.")
        raise typer.Exit(1)
    else:
        out.print(f"Fixed {len(problems)} problem(s).")


@app.command("recover")
def do_recover(
    drives: Annotated[list[Path], typer.Argument(help="Member drives (mount points) to rebuild from.")],
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the state directory holds a pool "
                                        "(its old files are renamed aside, not deleted).")] = False,
) -> None:
    """Rebuild the pool's state directory from its drives (after losing the system drive)."""
    for line in recover_mod.recover(state.state_dir, drives, force=force):
        out.print(line, markup=False)
    out.print(f"The pool is back in {state.state_dir}. `homepool status` shows it.")

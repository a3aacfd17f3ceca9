"""`homepool drive add|list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import control
from ..errors import BadInput, PoolMounted
from ..units import human, parse_size
from . import app, open_pool, out, state
from .pool_cmd import drive_table, status_data

drive_app = typer.Typer(help="Add and list the pool's drives.", no_args_is_help=True)
app.add_typer(drive_app, name="drive")


@drive_app.command("add")
def do_drive_add(
    path: Annotated[Path, typer.Argument(help="Where the drive is mounted.")],
    label: Annotated[str | None, typer.Option("--label", help="A name people recognise (default: the "
                                              "directory's name).")] = None,
    max_size: Annotated[str | None, typer.Option("--max-size", help="Store at most this much here (e.g. "
                                                 "500G); the rest of the drive stays yours.")] = None,
    allow_shared_device: Annotated[bool, typer.Option(
        "--allow-shared-device", help="Accept a drive on the same disk as another member. Copies on both are "
        "then NOT protected against that disk failing: for testing only.")] = False,
    adopt: Annotated[bool, typer.Option("--adopt", help="Take in a drive of another pool together with its "
                                        "files (they stay where they are).")] = False,
) -> None:
    """Add a drive: the pool grows, nothing is formatted, existing files on it stay."""
    cap = None
    if max_size is not None:
        try:
            cap = parse_size(max_size)
        except ValueError as e:
            raise BadInput(message=f"--max-size: {e}") from None
    try:
        with open_pool() as pool:
            d = pool.add_drive(path, label=label, max_size=cap, allow_shared_device=allow_shared_device, adopt=adopt)
            size, free = d.capacity(pool.cat.bytes_on_drive(d.id))
            added, root = d.label, str(d.root)
    except PoolMounted as mounted:  # the mount adds it: the pool grows while in use
        r = control.ask(state.state_dir, mounted, {"op": "add_drive", "path": str(path.absolute()), "label": label,
                                                   "max_size": cap, "allow_shared_device": allow_shared_device,
                                                   "adopt": adopt})
        added, root, size, free = r["label"], r["root"], r["size"], r["free"]
    out.print(f"Added drive {added!r} at {root}: {human(size)}, {human(free)} free.", markup=False)


@drive_app.command("list")
def do_drive_list() -> None:
    """Show each drive: label, path, filesystem, size, free, used by the pool, state."""
    with open_pool(write=False) as pool:
        data = status_data(pool)
    if not data["drives"]:
        out.print("No drives yet: add one with `homepool drive add PATH`.")
        return
    out.print(drive_table(data))

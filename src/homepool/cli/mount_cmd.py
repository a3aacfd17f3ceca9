"""`homepool mount` and `homepool unmount`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import mount as mount_mod
from ..pool import Pool
from . import app, out, state


@app.command("mount")
def do_mount(
    mountpoint: Annotated[Path, typer.Argument(help="An empty directory where the pool appears.")],
    foreground: Annotated[bool, typer.Option("--foreground", "-f", help="Stay in the foreground until "
                                             "unmounted (Ctrl-C unmounts).")] = False,
    allow_other: Annotated[bool, typer.Option("--allow-other", help="Let other users (and Samba) see the "
                                              "mount; permissions are still checked.")] = False,
) -> None:
    """Show the pool as one folder tree at MOUNTPOINT, to read and write like a local disk."""
    mount_mod.check_fuse()
    target = mount_mod.check_mountpoint(mountpoint)
    pool = Pool.open(state.state_dir, write=True)  # the mount is the pool's writer while it runs
    if not foreground:
        pool.close()
        log = mount_mod.start_background(state.state_dir, target, allow_other)
        out.print(f"Mounted the pool at {target} (log: {log}). `homepool unmount {target}` to stop.")
        return
    pid = mount_mod.write_pidfile(state.state_dir, target)
    assert pool.lock is not None
    pool.lock.note(f"mounted at {target}")
    try:
        mount_mod.serve(pool, target, allow_other)
    finally:
        pool.close()
        pid.unlink(missing_ok=True)  # last: `unmount` waits for it


@app.command("unmount")
def do_unmount(mountpoint: Annotated[Path, typer.Argument(help="Where the pool is mounted.")]) -> None:
    """Unmount the pool (waits while programs still use it, up to 20 s)."""
    mount_mod.unmount(state.state_dir, mountpoint)
    out.print(f"Unmounted {mountpoint}.")

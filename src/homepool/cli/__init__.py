"""The `homepool` command line: one module per command group, the work in `do_<command>`.

`main(argv)` runs in-process (tests call it) and returns the exit code; every `HomepoolError`
is caught here, in one place, and printed as one line. See docs/exit-codes.md.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console

from .. import log
from ..config import resolve_state_dir
from ..errors import HomepoolError
from ..pool import Pool

app = typer.Typer(
    name="homepool",
    help="One storage pool from any drives: one tree of folders, plain files on every drive, "
    "per-folder copies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# Output piped to a file or a script gets wide lines rather than tables squeezed to 80 columns.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    pool_option: Path | None = None

    @property
    def state_dir(self) -> Path:
        return resolve_state_dir(self.pool_option)


state = State()

PoolOpt = Annotated[
    Path | None,
    typer.Option("--pool", help="The pool's state directory (default: $HOMEPOOL_POOL, else /var/lib/homepool "
                 "for root and ~/.local/share/homepool for others).", show_default=False),
]


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        out.print(f"homepool {__version__}")
        raise typer.Exit()


@app.callback()
def _global(
    pool: PoolOpt = None,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Show the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show informational messages.")] = False,
    debug_modules: Annotated[str | None, typer.Option(
        "--debug-modules", help="Comma-separated modules to log at debug level (e.g. pool,check).")] = None,
) -> None:
    state.pool_option = pool
    log.setup(verbose, debug_modules.split(",") if debug_modules else None)


@contextmanager
def open_pool(write: bool = True) -> Iterator[Pool]:
    """Open (and with `write`, lock) the pool for one command, and always close it."""
    pool = Pool.open(state.state_dir, write=write)
    try:
        yield pool
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    cmd = typer.main.get_command(app)
    try:
        rv = cmd.main(args=argv, prog_name="homepool", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except HomepoolError as e:
        err.print(f"homepool: error: {e}", markup=False)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.UsageError as e:
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        err.print(f"homepool: usage error: {e.format_message()}{hint}", markup=False)
        return 2
    except click.ClickException as e:
        err.print(f"homepool: error: {e.format_message()}", markup=False)
        return e.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print("homepool: interrupted; what was finished is kept (`homepool check` to confirm)", markup=False)
        return 130


def run() -> None:
    sys.exit(main())


# Last: each command module adds its commands to `app` (and may use `main`).
from . import demo, drive, files, folder, mount_cmd, pool_cmd  # noqa: E402, F401, I001

"""Logging for homepool (named log.py so that it does not shadow the standard `logging`).

Levels:
  DEBUG    each pool operation and drive step (turn on with --debug, per module with
           --debug-modules homepool.pool,homepool.check)
  INFO     events a person would want to see in a log: a drive added, a copy made
  WARNING  degraded states: a drive missing, a folder short of copies, a catalog copy not saved
  ERROR    data at risk: an unreadable copy, a failed write to a drive
Messages go to stderr, prefixed like the CLI's own errors, so they never mix with output that
scripts read (`status --json`).
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = record.levelname.lower()
        line = f"homepool: {level}: {record.getMessage()}"
        if record.exc_info:  # a bug: the traceback is what a bug report needs
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(verbose: bool = False, debug_modules: list[str] | None = None) -> None:
    root = logging.getLogger("homepool")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False
    for name in debug_modules or []:
        logging.getLogger(name if name.startswith("homepool") else f"homepool.{name}").setLevel(logging.DEBUG)


_PR_SET_NAME = 15
_libc = ctypes.CDLL(None)


def name_os_thread() -> None:
    """Give the calling thread its Python name where the system shows threads (`top -H`,
    `ps -L`, /proc/PID/task/*/comm: 15 bytes); else it shows the name of the thread that
    started it."""
    _libc.prctl(_PR_SET_NAME, threading.current_thread().name.encode()[:15], 0, 0, 0)

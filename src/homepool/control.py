"""The mount's control socket: commands that change the pool while it is mounted.

While the pool is mounted, the mount process is its only writer (it holds the pool lock), so a
command such as `homepool folder set` asks the mount to make the change instead of opening the
pool itself. The socket is STATE/control.sock, open to its owner only (0600). One JSON request
per connection, one JSON answer: {"ok": true, "result": ...}, or {"ok": false, "message": ...,
"exit_code": ...} for a `HomepoolError`, which the command raises again as its own.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from .errors import HomepoolError, MountUnreachable, PoolMounted

log = logging.getLogger(__name__)

SOCKET = "control.sock"
MAX_REQUEST = 1 << 16
MAX_ANSWER = 1 << 28  # a check's answer lists every problem found
READ_TIMEOUT = 10.0  # seconds a client may take to send its request
SETTLE_WAIT = 1.0  # seconds the mount waits for its lock to answer `settle`


class FromMount(HomepoolError):
    """{message}"""


class ControlServer:
    """Answers requests on STATE/control.sock with `handle(request) -> result`, one thread each."""

    def __init__(self, state_dir: Path, handle: Callable[[dict[str, Any]], Any]) -> None:
        self.path = state_dir / SOCKET
        self.handle = handle
        self._sock: socket.socket | None = None

    def start(self) -> None:
        """Listen (before the mount changes its umask: the socket is never open to others).
        A socket that cannot be made is logged, not fatal: the mount works without it."""
        with suppress(FileNotFoundError):
            self.path.unlink()  # left by a mount that was killed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            sock.listen(8)
        except OSError as e:
            sock.close()
            log.warning("no control socket at %s (%s): commands that change the pool need it unmounted",
                        self.path, e)
            return
        self._sock = sock
        threading.Thread(target=self._accept, name="control", daemon=True).start()

    def stop(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with suppress(FileNotFoundError):
                self.path.unlink()
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the thread waiting in accept()
            sock.close()

    def _accept(self) -> None:
        while (sock := self._sock) is not None:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed by `stop`
            threading.Thread(target=self._answer, args=(conn,), name="control-request", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(READ_TIMEOUT)
                request = json.loads(_read_line(conn))
                conn.settimeout(None)  # the answer may take a while (copies being made)
                answer = {"ok": True, "result": self.handle(request)}
            except HomepoolError as e:
                answer = {"ok": False, "message": str(e), "exit_code": e.exit_code}
            except Exception as e:  # a bug costs this request, never the mount
                log.exception("control request failed")
                answer = {"ok": False, "message": f"the mount could not do that: {e}", "exit_code": 4}
            with suppress(OSError):
                conn.sendall(json.dumps(answer).encode() + b"\n")


def ask(state_dir: Path, mounted: PoolMounted, request: dict[str, Any]) -> Any:
    """Have the mount that holds the pool do `request`; its result, or its error raised here."""
    path = state_dir / SOCKET
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = json.loads(_read_line(sock, MAX_ANSWER))
    except (OSError, ValueError) as e:
        raise MountUnreachable(where=mounted.kwargs["where"], pid=mounted.kwargs["pid"],
                               why=getattr(e, "strerror", None) or str(e)) from None
    if not answer.get("ok"):
        err = FromMount(message=answer.get("message", "the mount refused"))
        err.exit_code = int(answer.get("exit_code", 4))
        raise err
    return answer.get("result")


def settle(state_dir: Path) -> None:
    """Ask the mount of this pool, if one answers, to commit what it holds back (the last few
    milliseconds of renames, deletes and closes, see `Pool.group_steps`), so that a command
    reading the catalog sees every change that has returned. A mount held up by a drive that
    does not answer, or none at all, is not waited for."""
    path = state_dir / SOCKET
    if not path.exists():
        return
    with suppress(OSError, ValueError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(SETTLE_WAIT + 1)
        sock.connect(str(path))
        sock.sendall(json.dumps({"op": "settle"}).encode() + b"\n")
        _read_line(sock)


def _read_line(sock: socket.socket, limit: int = MAX_REQUEST) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while not chunks or not chunks[-1].endswith(b"\n"):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise ValueError("control message too long")
    return b"".join(chunks)

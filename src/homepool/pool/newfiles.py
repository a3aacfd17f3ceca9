"""Notes of new files whose copies a mount made before their group's commit.

A file created through the mount is recorded in the open group (`Pool.group_steps`), and its
copies are made at once: the program writes them while the group gathers. A crash before the
commit would leave copies the catalog does not know. So each create first notes its path,
drives and group number here (`Catalog.group_number`: committed with the group), with a plain
append (a killed process keeps what it wrote, as the drives keep the copies); each commit
empties the note. The next opening of the pool for writing takes in the copies a note still
names whose group was not committed (`Pool.take_in_new_files`), as files found on a drive. A
note whose group was committed (a crash between the commit and the emptying) is passed over:
the catalog has the file, and the journal what became of it since. Nothing on a drive is
deleted for a note, but a second copy of a new file that differs from the first (a crash
between two copies' writes), which is made again from the first, as for a file being
written at a crash.

One JSON line per create: {"path": ..., "drives": [drive ids], "group": number}; without
"group" (kept for a drive that was away, or by a failed commit), it is always taken in.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..drives import write_atomic

log = logging.getLogger(__name__)

NEW_FILES = "new-files"


def _line(path: str, drives: list[int], group: int | None = None) -> bytes:
    note: dict[str, object] = {"path": path, "drives": drives}
    if group is not None:
        note["group"] = group
    return (json.dumps(note) + "\n").encode()


class NewFiles:
    """The mount's note, open for appending while it serves (`Pool.group_steps`)."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / NEW_FILES
        # Notes kept from before (their drive was away at the opening) stay until taken in.
        self._kept: list[bytes] = [_line(p, d) for p, d, _ in read(state_dir)]
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._noted = bool(self._kept)  # since the last commit

    def note(self, path: str, drives: list[int], group: int) -> None:
        """Before a new file's copies are made (raises if it cannot be noted: no copy is made)."""
        os.write(self._fd, _line(path, drives, group))
        self._noted = True

    def committed(self) -> None:
        """The group's creates are in the catalog: their notes go."""
        if not self._noted:
            return
        try:
            os.ftruncate(self._fd, 0)
            if self._kept:
                os.write(self._fd, b"".join(self._kept))
            self._noted = False
        except OSError as e:  # left as they are: the next opening finds those files recorded
            log.warning("could not empty the note of new files: %s", e)

    def keep(self, path: str, drives: list[int]) -> None:
        """A new file the catalog lost (a failed commit): the next opening takes it in."""
        self._kept.append(_line(path, drives))
        self._noted = True

    def close(self) -> None:
        """At the end of the mount (its last group committed: nothing is left to note)."""
        os.close(self._fd)
        if not self._noted and not self._kept:
            self._path.unlink(missing_ok=True)


def read(state_dir: Path) -> list[tuple[str, list[int], int | None]]:
    """The notes a mount left: (path, drive ids, group number) of each create (a torn last
    line is skipped: its copies were not made yet)."""
    try:
        text = (state_dir / NEW_FILES).read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for raw in text.splitlines():
        try:
            note = json.loads(raw)
            group = note.get("group")
            out.append((str(note["path"]), [int(d) for d in note["drives"]], None if group is None else int(group)))
        except (ValueError, KeyError, TypeError):
            log.warning("skipped a damaged note of a new file: %r", raw[:200])
    return out


def rewrite(state_dir: Path, notes: list[tuple[str, list[int]]]) -> None:
    """Leave only `notes` (those still to take in: their drive is away)."""
    if notes:
        write_atomic(state_dir / NEW_FILES, b"".join(_line(p, d) for p, d in notes))
    else:
        (state_dir / NEW_FILES).unlink(missing_ok=True)

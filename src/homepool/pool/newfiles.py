"""Notes of new files whose copies a mount made before their group's commit.

A file created through the mount is recorded in the open group (`Pool.group_steps`), and its
copies are made at once: the program writes them while the group gathers. A crash before the
commit would leave copies the catalog does not know. So each create first notes its path,
drives and group number here (`Catalog.group_number`: committed with the group), with a plain
append (a killed process keeps what it wrote, as the drives keep the copies); each commit
empties the note. The next opening of the pool for writing takes in the copies a note still
names whose group was not committed (`Pool.take_in_new_files`), as files found on a drive. A
note whose group was committed (a crash between the commit and the emptying) is passed over:
the catalog has the file, and the journal what became of it since. Of a new file's copies
the longest is the file; one that holds only its start (a crash between two copies' writes)
is made again from it, one that differs otherwise is kept under a conflict name.

One JSON line per create: {"path": ..., "drives": [drive ids], "group": number}. Notes
that wait longer live in `new-files.kept`, without a number, written only when the pool is
opened (`done`) or a failed commit could not record a new file again (`keep`): those for a
drive that was away, and ("stale": the file was taken in from another drive meanwhile) those
whose copy is an old mirror of a file the pool has, or had: such a copy is recorded if it
is the pool's file, else removed, never taken in as a file of its own.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

from ..catalog import to_json
from ..drives import write_atomic

log = logging.getLogger(__name__)

NEW_FILES = "new-files"
KEPT = "new-files.kept"


class Note(NamedTuple):
    path: str
    drives: list[int]
    group: int | None = None  # None: taken in whatever the catalog's last group
    stale: bool = False  # taken in from another drive already: this copy is an old mirror


def _line(note: Note) -> bytes:
    out: dict[str, object] = {"path": note.path, "drives": note.drives}
    if note.group is not None:
        out["group"] = note.group
    if note.stale:
        out["stale"] = True
    return (to_json(out) + "\n").encode()


class NewFiles:
    """The mount's note, open for appending while it serves (`Pool.group_steps`)."""

    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._path = state_dir / NEW_FILES
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._noted = False  # since the last commit

    def note(self, path: str, drives: list[int], group: int) -> None:
        """Before a new file's copies are made (raises if it cannot be noted: no copy is made)."""
        os.write(self._fd, _line(Note(path, drives, group)))
        self._noted = True

    def committed(self) -> None:
        """The group's creates are in the catalog: their notes go."""
        if not self._noted:
            return
        try:
            os.ftruncate(self._fd, 0)
            self._noted = False
        except OSError as e:  # left as they are: the next opening finds those files recorded
            log.warning("could not empty the note of new files: %s", e)

    def keep(self, path: str, drives: list[int]) -> None:
        """A new file the catalog lost (a failed commit, then a failed record): the next
        opening takes it in whatever it finds committed."""
        fd = os.open(self._state_dir / KEPT, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, _line(Note(path, drives)))
        finally:
            os.close(fd)

    def close(self) -> None:
        """At the end of the mount (its last group committed: nothing is left to note)."""
        os.close(self._fd)
        if not self._noted:
            self._path.unlink(missing_ok=True)


def read(state_dir: Path) -> list[Note]:
    """The notes left: the kept ones, then the mount's (a torn last line is skipped: its
    copies were not made yet)."""
    out = []
    for name in (KEPT, NEW_FILES):
        try:
            text = (state_dir / name).read_bytes()
        except FileNotFoundError:
            continue
        for raw in text.splitlines():
            try:
                note = json.loads(raw)
                group = note.get("group")
                out.append(Note(str(note["path"]), [int(d) for d in note["drives"]],
                                None if group is None else int(group), bool(note.get("stale"))))
            except (ValueError, KeyError, TypeError):
                log.warning("skipped a damaged note of a new file: %r", raw[:200])
    return out


def done(state_dir: Path, left: list[Note]) -> None:
    """The notes were taken in but `left` (their drive is away): kept for a later opening."""
    if left:
        write_atomic(state_dir / KEPT, b"".join(_line(n) for n in left))
    else:
        (state_dir / KEPT).unlink(missing_ok=True)
    (state_dir / NEW_FILES).unlink(missing_ok=True)

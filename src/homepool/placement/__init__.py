"""Placement: which drives a new file (or a new copy) goes to.

Drives, size and copies go in, chosen drives come out. Every policy only *orders* the drives
that have room; the rules shared by all live here: copies go to distinct drives, a drive
must have room for the whole file after its reserve (nothing is ever split across drives),
and drives that are missing or excluded are never chosen. Pure functions, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import lfs, mfs, pfrd


@dataclass(frozen=True)
class Candidate:
    drive_id: int
    room: int  # bytes this drive can still take, after its reserve and cap
    device: int | None = None  # drives on one disk (--allow-shared-device) share this


Policy = Callable[[list[Candidate], random.Random], list[Candidate]]

POLICIES: dict[str, Policy] = {"mfs": mfs.order, "lfs": lfs.order, "pfrd": pfrd.order}
DEFAULT_POLICY = "mfs"
_RNG = random.Random()  # seeding one per call costs more than the whole choice


def choose(policy: str, candidates: Sequence[Candidate], size: int, copies: int,
           exclude: Sequence[int] = (), rng: random.Random | None = None) -> list[int]:
    """Up to `copies` distinct drive ids with room for `size` bytes, best first.

    Fewer than `copies` come back when fewer drives have room: the caller records the
    shortfall. An empty list means no drive can take the file at all."""
    if copies <= 0:
        return []
    fits = [c for c in candidates if c.room >= size and c.drive_id not in exclude]
    ordered = POLICIES[policy](fits, rng or _RNG)
    # Copies go to different disks first; a second drive on a disk already chosen is used only
    # when no other disk has room (a copy there still beats no copy).
    chosen: list[int] = []
    devices: set[int] = set()
    for c in ordered:  # one copy per disk
        if len(chosen) == copies:
            break
        if c.device is None or c.device not in devices:
            chosen.append(c.drive_id)
            if c.device is not None:
                devices.add(c.device)
    for c in ordered:  # then any drive left, rather than too few copies
        if len(chosen) == copies:
            break
        if c.drive_id not in chosen:
            chosen.append(c.drive_id)
    return chosen

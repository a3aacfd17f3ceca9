"""Least free space: fills one drive before the next, so idle drives can spin down."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Candidate


def order(candidates: list[Candidate], rng: random.Random) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (c.room, c.drive_id))

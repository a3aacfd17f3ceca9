"""Most free space: spreads files over the drives so they fill evenly (the default)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Candidate


def order(candidates: list[Candidate], rng: random.Random) -> list[Candidate]:
    return sorted(candidates, key=lambda c: (-c.room, c.drive_id))

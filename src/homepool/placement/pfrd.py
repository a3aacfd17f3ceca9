"""Proportional fill, random distribution: a random drive, weighted by its free space.

Spreads like `mfs` on average but does not send a burst of new files all to one drive."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Candidate


def order(candidates: list[Candidate], rng: random.Random) -> list[Candidate]:
    left = [c for c in candidates if c.room > 0]
    out: list[Candidate] = []
    while left:
        pick = rng.choices(range(len(left)), weights=[c.room for c in left])[0]
        out.append(left.pop(pick))
    return out

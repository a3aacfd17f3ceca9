from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homepool.placement import POLICIES, Candidate, choose


def cands(*rooms: int) -> list[Candidate]:
    return [Candidate(i + 1, r) for i, r in enumerate(rooms)]


def test_mfs_picks_most_free_first() -> None:
    assert choose("mfs", cands(10, 30, 20), size=5, copies=2) == [2, 3]


def test_lfs_fills_the_fullest_drive_that_still_fits() -> None:
    assert choose("lfs", cands(10, 30, 4), size=5, copies=1) == [1]


def test_pfrd_is_weighted_by_free_space() -> None:
    rng = random.Random(1)
    picks = [choose("pfrd", cands(100, 900), size=1, copies=1, rng=rng)[0] for _ in range(2000)]
    share = picks.count(2) / len(picks)
    assert 0.85 < share < 0.95


def test_no_drive_with_room_gives_nothing() -> None:
    assert choose("mfs", cands(10, 20), size=21, copies=1) == []


def test_fewer_drives_than_copies_gives_what_fits() -> None:
    assert choose("mfs", cands(10, 20, 3), size=5, copies=3) == [2, 1]


def test_excluded_drives_are_never_chosen() -> None:
    assert choose("mfs", cands(10, 20, 30), size=1, copies=3, exclude=[3]) == [2, 1]


@given(
    policy=st.sampled_from(sorted(POLICIES)),
    rooms=st.lists(st.integers(min_value=0, max_value=10**12), max_size=8),
    size=st.integers(min_value=0, max_value=10**12),
    copies=st.integers(min_value=1, max_value=5),
    seed=st.integers(),
)
def test_placement_invariants(policy: str, rooms: list[int], size: int, copies: int, seed: int) -> None:
    c = cands(*rooms)
    chosen = choose(policy, c, size, copies, rng=random.Random(seed))
    by_id = {x.drive_id: x for x in c}
    assert len(chosen) == len(set(chosen)), "copies go to distinct drives"
    assert all(by_id[d].room >= size for d in chosen), "every chosen drive has room for the whole file"
    fitting = sum(1 for x in c if x.room >= size and (x.room > 0 or policy != "pfrd"))
    assert len(chosen) == min(copies, fitting), "as many copies as drives allow"


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_every_policy_is_registered_and_orders(policy: str) -> None:
    out = POLICIES[policy](cands(1, 2, 3), random.Random(0))
    assert sorted(x.drive_id for x in out) == [1, 2, 3]


def test_zero_copies_chooses_nothing() -> None:
    assert choose("mfs", cands(10, 20), size=1, copies=0) == []


def test_copies_prefer_different_disks() -> None:
    c = [Candidate(1, 100, device=7), Candidate(2, 90, device=7), Candidate(3, 10, device=8)]
    assert choose("mfs", c, size=5, copies=2) == [1, 3]
    assert choose("mfs", c, size=5, copies=3) == [1, 3, 2]  # a copy on the same disk beats none

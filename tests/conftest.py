"""Shared fixtures. Layers (see tests/README.md): pure units; the pool on tmp directories;
the pool on real loop-mounted ext4 drives (root); the CLI in-process."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from homepool import loopdrives
from homepool.pool import Pool

MiB = 1 << 20


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Hermetic: no HOMEPOOL_* from the caller, and the default state dir is inside tmp."""
    for key in list(os.environ):
        if key.startswith("HOMEPOOL_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))


@pytest.fixture(autouse=True)
def no_unexpected_errors(caplog: pytest.LogCaptureFixture, request: pytest.FixtureRequest) -> Iterator[None]:
    """An ERROR logged by homepool fails the test unless the test expects it (marker
    `expect_errors`): errors mean data at risk, and must not go unnoticed."""
    caplog.set_level(logging.INFO, logger="homepool")
    logging.getLogger("homepool").propagate = True
    yield
    if request.node.get_closest_marker("expect_errors"):
        return
    # (At teardown `caplog.records` holds the teardown's records only: the test's are the call's.)
    records = caplog.get_records("setup") + caplog.get_records("call")
    errors = [r for r in records if r.levelno >= logging.ERROR and r.name.startswith("homepool")]
    assert not errors, f"unexpected ERROR logs: {[r.getMessage() for r in errors]}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "expect_errors: the test provokes ERROR logs on purpose")


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def dir_drives(tmp_path: Path) -> list[Path]:
    """Three directories on the tmp filesystem, to be added with --allow-shared-device."""
    out = []
    for i in range(1, 4):
        p = tmp_path / f"drive{i}"
        p.mkdir()
        out.append(p)
    return out


@pytest.fixture
def dir_pool(state_dir: Path, dir_drives: list[Path]) -> Iterator[Pool]:
    """A pool on three directory drives capped at 64, 96 and 128 MiB."""
    pool = Pool.create(state_dir)
    for p, cap in zip(dir_drives, (64, 96, 128), strict=True):
        pool.add_drive(p, label=p.name, max_size=cap * MiB, allow_shared_device=True)
    try:
        yield pool
    finally:
        pool.close()


LoopFactory = Callable[..., list[Path]]


@pytest.fixture
def loop_drives(tmp_path: Path) -> Iterator[LoopFactory]:
    """make(64, 128, 256) -> mount points of real ext4 drives of those sizes (MiB). Always
    unmounted, detached and deleted afterwards, even when the test fails."""
    why = loopdrives.available()
    if why is not None:
        pytest.skip(f"LOUD SKIP: real-drive test needs loop devices: {why}")
    made: list[loopdrives.LoopDrives] = []

    def make(*sizes_mib: int) -> list[Path]:
        base = tmp_path / f"loop{len(made)}"
        base.mkdir()
        ld = loopdrives.LoopDrives(base, [s * MiB for s in sizes_mib])
        made.append(ld)
        return ld.up()

    try:
        yield make
    finally:
        for ld in made:
            ld.down()


@pytest.fixture
def loop_pool(state_dir: Path, loop_drives: LoopFactory) -> Iterator[tuple[Pool, list[Path]]]:
    """A pool on three real ext4 drives of 64, 128 and 256 MiB."""
    mounts = loop_drives(64, 128, 256)
    pool = Pool.create(state_dir)
    for i, m in enumerate(mounts, 1):
        pool.add_drive(m, label=f"disk{i}")
    try:
        yield pool, mounts
    finally:
        pool.close()

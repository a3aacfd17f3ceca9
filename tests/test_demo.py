"""`homepool demo` runs its whole tour and leaves nothing behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from homepool import loopdrives
from homepool.cli import demo, main


def leftovers() -> set[str]:
    mounts = Path("/proc/self/mounts").read_text()
    demo_mounts = {line.split()[1] for line in mounts.splitlines() if "homepool-demo-" in line}
    demo_dirs = {p.name for p in Path(tempfile.gettempdir()).glob("homepool-demo-*")}
    return demo_mounts | demo_dirs


def test_demo_on_real_drives(capsys: pytest.CaptureFixture[str]) -> None:
    if loopdrives.available() is not None:
        pytest.skip(f"LOUD SKIP: the real-drive demo needs loop devices: {loopdrives.available()}")
    before = leftovers()
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    # (74: one file is deleted while its drive is frozen)
    assert "ext4 drives" in out and "recovered 74 files" in out and "No problems found" in out
    assert "the note is a plain file on 2 drives" in out  # written through the mount
    assert "latest-note -> written-through-the-mount.txt" in out  # a symlink made through it
    assert "[found] replicas_match: Documents/written-through-the-mount.txt: copy on" in out
    assert "has mode 0777" in out and "given the pool's" in out  # changed on a drive, repaired
    assert "from the catalog, while the delete waits" in out and "has been held up since" in out
    assert "s, while the delete waits" in out.partition("opened and read in ")[2]
    assert out.count("the same 45 plain folders") == 3  # on every drive, past PATH_MAX
    assert leftovers() == before


def test_demo_without_root_uses_directories(capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loopdrives, "available", lambda: "loop-mounted drives need root")
    before = leftovers()
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "four directories" in out and "shares a disk" in out and "recovered 75 files" in out
    assert leftovers() == before


@pytest.mark.parametrize("failing", ["the drive plugged in while mounted", "status while a drive is frozen"])
def test_a_demo_that_fails_while_mounted_still_cleans_up(monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    if loopdrives.available() is not None:
        pytest.skip(f"LOUD SKIP: the real-drive demo needs loop devices: {loopdrives.available()}")
    real_step = demo.step
    statuses = []

    def step(args: list[str], note: str = "", expect: int = 0) -> None:
        if args[:1] == ["status"]:
            statuses.append(args)
        if ("Spare 1T" in args if failing.startswith("the drive") else len(statuses) == 2 and args[:1] == ["status"]):
            raise RuntimeError("a step failed")
        real_step(args, note, expect)

    monkeypatch.setattr(demo, "step", step)
    before = leftovers()
    with pytest.raises(RuntimeError, match="a step failed"):
        main(["demo"])
    assert leftovers() == before

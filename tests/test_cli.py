"""The command line, run in-process through `main(argv)`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from homepool.cli import main
from homepool.config import resolve_state_dir


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], state_dir: Path):
    def run(*args: str, code: int = 0) -> tuple[str, str]:
        rc = main(["--pool", str(state_dir), *args])
        out, err = capsys.readouterr()
        assert rc == code, f"exit {rc} (wanted {code}): {out}{err}"
        return out, err

    return run


@pytest.fixture
def pool_with_drives(cli, dir_drives: list[Path]):
    cli("init")
    for p, cap in zip(dir_drives, ("64M", "96M", "128M"), strict=True):
        cli("drive", "add", str(p), "--label", p.name.upper(), "--allow-shared-device", "--max-size", cap)
    return cli


def one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"not one line: {err!r}"
    assert lines[0].startswith("homepool: ")
    for w in words:
        assert w in lines[0]


def test_init_lists_the_folders(cli) -> None:
    out, _ = cli("init")
    assert "Photos" in out and "Recorded TV" in out and "drive add" in out


def test_pool_option_wins_over_env_which_wins_over_default(cli, monkeypatch, tmp_path: Path, state_dir) -> None:
    monkeypatch.setenv("HOMEPOOL_POOL", str(tmp_path / "from-env"))
    assert main(["init"]) == 0
    assert (tmp_path / "from-env" / "pool.toml").exists()
    cli("init")  # --pool given: wins over the environment
    assert (state_dir / "pool.toml").exists()
    monkeypatch.delenv("HOMEPOOL_POOL")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # never touch the real /var/lib/homepool
    assert resolve_state_dir(None) == tmp_path / "xdg" / "homepool"
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert resolve_state_dir(None) == Path("/var/lib/homepool")
    monkeypatch.setenv("HOMEPOOL_POOL", "")  # empty means unset, not the current directory
    assert resolve_state_dir(None) == Path("/var/lib/homepool")


def test_commands_without_a_pool_say_how_to_make_one(cli) -> None:
    _, err = cli("status", code=4)
    one_line_error(err, "No pool", "homepool init")


def test_drive_add_and_list(pool_with_drives) -> None:
    out, _ = pool_with_drives("drive", "list")
    assert "DRIVE1" in out and "DRIVE3" in out and "shared disk" in out and "cap 64.0 MiB" in out


@pytest.mark.parametrize("args,code,words", [
    (["drive", "add", "/nonexistent/x"], 3, ["no such directory"]),
    (["drive", "add", "/tmp", "--max-size", "lots"], 3, ["--max-size"]),
    (["folder", "add", "a/b"], 3, ["Invalid folder name"]),
    (["folder", "add", "photos"], 3, ["already exists", "Photos"]),
    (["folder", "add", "Backups", "--copies", "0"], 3, ["Copies must be"]),
    (["folder", "set", "Nope", "--copies", "2"], 3, ["No folder named"]),
    (["ls", "../etc"], 3, ["Invalid pool path", "leave the pool"]),
    (["ls", "Photos/missing"], 3, ["No such file"]),
    (["import", "/nonexistent", "Photos/"], 3, ["no such file"]),
    (["drive", "frobnicate"], 2, ["usage error"]),
    (["status", "--bogus"], 2, ["usage error", "--bogus"]),
])
def test_bad_input_gets_one_line_and_changes_nothing(pool_with_drives, state_dir: Path, args, code, words) -> None:
    before = (state_dir / "catalog.db").read_bytes()
    _, err = pool_with_drives(*args, code=code)
    one_line_error(err, *words)
    assert (state_dir / "catalog.db").read_bytes() == before


def test_folder_set_and_list(pool_with_drives) -> None:
    out, _ = pool_with_drives("folder", "set", "Videos", "--copies", "2")
    assert "1 -> 2" in out
    out, _ = pool_with_drives("folder", "list")
    assert any(line.split()[:2] == ["Videos", "2"] for line in out.splitlines())


def test_more_copies_than_drives_is_accepted_and_warned(pool_with_drives) -> None:
    out, _ = pool_with_drives("folder", "add", "Vault", "--copies", "5")
    assert "3 drive(s)" in out


def test_import_ls_and_status(pool_with_drives, tmp_path: Path) -> None:
    src = tmp_path / "Pictures"
    (src / "2010").mkdir(parents=True)
    for i in range(5):
        (src / "2010" / f"img{i}.jpg").write_bytes(os.urandom(10_000))
    out, _ = pool_with_drives("import", str(src), "Photos/")
    assert "Imported 5 files" in out
    out, _ = pool_with_drives("ls", "Photos/2010")
    assert out.count("2/2 copies") == 5 and "img4.jpg" in out
    out, _ = pool_with_drives("ls", "-R", "Photos")
    assert "Photos/2010:" in out
    out, _ = pool_with_drives("ls", "--drives", "Photos/2010/img0.jpg")
    assert out.count("DRIVE") == 2
    out, _ = pool_with_drives("status")
    assert "5 files" in out and "shares a disk" in out
    out, _ = pool_with_drives("status", "--json")
    data = json.loads(out)
    assert data["totals"]["files"] == 5
    assert {f["name"]: f["short"] for f in data["folders"]}["Photos"] == 0
    assert all(d["shared_device"] for d in data["drives"])


def test_check_exit_codes(pool_with_drives, dir_drives: list[Path]) -> None:
    out, _ = pool_with_drives("check")
    assert "No problems" in out
    stray = dir_drives[0] / "HomePool" / "Documents" / "stray.txt"
    stray.write_text("put here behind the pool's back")
    out, _ = pool_with_drives("check", code=1)
    assert "stray.txt" in out and "--repair" in out
    out, _ = pool_with_drives("check", "--repair")
    assert "[fixed]" in out
    pool_with_drives("check")


def test_recover_refuses_over_an_existing_pool(pool_with_drives, dir_drives: list[Path]) -> None:
    _, err = pool_with_drives("recover", str(dir_drives[0]), code=4)
    one_line_error(err, "already exists", "--force")


def test_recover_refuses_a_plain_directory(cli, tmp_path: Path) -> None:
    _, err = cli("recover", str(tmp_path), code=4)
    one_line_error(err, "not a homepool drive")


def test_help_runs(cli) -> None:
    out, _ = cli("--help")
    assert "drive" in out and "import" in out and "recover" in out

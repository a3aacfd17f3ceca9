from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from homepool import paths
from homepool.errors import BadFolderName, BadPath


@pytest.mark.parametrize("raw,expected", [
    ("Photos/2010/a.jpg", ("Photos", "2010", "a.jpg")),
    ("/Photos//2010/", ("Photos", "2010")),
    ("./Photos/./x", ("Photos", "x")),
    ("", ()),
    ("/", ()),
])
def test_split_normalizes(raw: str, expected: tuple[str, ...]) -> None:
    assert paths.split(raw) == expected


@pytest.mark.parametrize("raw", ["../etc", "Photos/../../x", "Photos/..", "a\0b", "x/" + "n" * 256])
def test_split_refuses_escapes_nul_and_long_names(raw: str) -> None:
    with pytest.raises(BadPath):
        paths.split(raw)


@given(st.lists(st.text(min_size=1, max_size=20), max_size=6))
def test_split_never_lets_a_path_escape(parts: list[str]) -> None:
    raw = "/".join(parts)
    try:
        out = paths.split(raw)
    except BadPath:
        return
    assert ".." not in out and "" not in out and "." not in out
    assert all("/" not in p and "\0" not in p for p in out)
    assert paths.split(paths.join(out)) == out  # canonical form is a fixed point


@pytest.mark.parametrize("name", ["", "/", "a/b", "..", ".", "a\0b", "what?", "C:", "CON", "lpt1.txt",
                                  "trailing.", "trailing ", "x" * 256, "tab\there"])
def test_bad_folder_names(name: str) -> None:
    with pytest.raises(BadFolderName):
        paths.check_folder_name(name)


@pytest.mark.parametrize("name", ["Photos", "Recorded TV", "Users", "Ölbilder", "2024 taxes", "Photos/"])
def test_good_folder_names(name: str) -> None:
    assert paths.check_folder_name(name) == name.strip("/")


@given(st.text(min_size=1, max_size=30))
def test_folder_names_are_valid_or_refused_with_a_reason(name: str) -> None:
    try:
        ok = paths.check_folder_name(name)
    except BadFolderName as e:
        assert str(e).startswith("Invalid folder name") and "\n" not in str(e)
        return
    assert "/" not in ok and "\0" not in ok and ok not in (".", "..")
    assert not set(ok) & paths.WINDOWS_FORBIDDEN


def test_fold_makes_case_variants_clash() -> None:
    assert paths.fold("Photos") == paths.fold("PHOTOS") == paths.fold("photos")
    assert paths.fold("Straße") == paths.fold("STRASSE")
    assert paths.fold("Photos") != paths.fold("Music")

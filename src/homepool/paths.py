"""Pool paths and folder names: parsing and validation.

A pool path is a relative, '/'-separated path such as ``Photos/2010/beach.jpg``; its first
component is a folder. It never escapes the pool (no ``..``), never contains NUL and never uses
an empty or over-long component. Leading and trailing slashes are accepted and dropped, so
``/Photos/`` and ``Photos`` are the same path. Pure functions, no I/O.
"""

from __future__ import annotations

import unicodedata

from .errors import BadFolderName, BadPath, NameTooLong

NAME_MAX = 255  # bytes, as on ext4, xfs, btrfs and NTFS (in UTF-16 units there, close enough)
PATH_MAX = 4096  # bytes in a path the kernel takes whole; a pool path may be longer (see drives.reach)

# Windows clients (through Samba) share this tree: a folder name Windows cannot show would be
# unusable there, so folders are held to Windows' rules. File names inside folders stay POSIX.
WINDOWS_FORBIDDEN = set('<>:"\\|?*')
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}


def split(path: str) -> tuple[str, ...]:
    """Return the components of the pool path `path` (``()`` for the pool's root)."""
    if "\0" in path:
        raise BadPath(path=path, why="it contains a NUL character")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise BadPath(path=path, why="it is not valid UTF-8") from None
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    for part in parts:
        if part == "..":
            raise BadPath(path=path, why="'..' would leave the pool")
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise NameTooLong(path=path, why=f"a name is longer than {NAME_MAX} bytes")
    return parts


def join(parts: tuple[str, ...] | list[str]) -> str:
    return "/".join(parts)


def normalize(path: str) -> str:
    """The canonical spelling of a pool path: no leading, trailing or doubled slashes."""
    return join(split(path))


def fold(name: str) -> str:
    """The key under which two names clash on a case-insensitive client (Windows, macOS)."""
    return unicodedata.normalize("NFC", name).casefold()


def check_folder_name(name: str) -> str:
    """Return `name` if it is a valid folder name, else raise `BadFolderName`."""
    stripped = name.strip("/")
    if stripped == "":
        raise BadFolderName(name=name, why="it is empty")
    if "\0" in name:
        raise BadFolderName(name=name, why="it contains a NUL character")
    if "/" in stripped:
        raise BadFolderName(name=name, why="a folder name cannot contain '/'; subfolders are made inside a folder")
    if stripped in (".", ".."):
        raise BadFolderName(name=name, why="'.' and '..' are not names")
    if len(stripped.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise BadFolderName(name=name, why=f"it is longer than {NAME_MAX} bytes")
    bad = sorted(set(stripped) & WINDOWS_FORBIDDEN)
    if bad or any(ord(c) < 32 for c in stripped):
        shown = "".join(bad) or "control characters"
        raise BadFolderName(name=name, why=f"Windows clients cannot use {shown} in names")
    if stripped.endswith((" ", ".")):
        raise BadFolderName(name=name, why="Windows clients cannot use names ending in a space or '.'")
    if stripped.split(".")[0].upper() in WINDOWS_RESERVED:
        raise BadFolderName(name=name, why="Windows reserves that name for a device")
    return stripped

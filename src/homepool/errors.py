"""User-facing errors.

Every error a person can cause or meet is a subclass of `HomepoolError`. Its docstring is the
message (formatted with the keyword arguments it was raised with), it fits on one line and says
what to do. `cli.main` catches them in one place, prints the message and exits with `exit_code`.

Exit codes (documented in docs/exit-codes.md):
  0 ok · 1 problems found (check) · 2 usage (bad option) · 3 bad input · 4 pool state
  5 no space · 6 busy · 7 data (no readable copy) · 8 drive I/O
"""

from __future__ import annotations

from typing import Any


class HomepoolError(Exception):
    """{message}"""

    exit_code = 3

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        doc = type(self).__doc__ or "{message}"
        super().__init__(" ".join(doc.split()).format(**kwargs))

    @property
    def message(self) -> str:
        return str(self)


# -- bad input (3) ---------------------------------------------------------------------------


class BadInput(HomepoolError):
    """{message}"""


class BadPath(BadInput):
    """Invalid pool path {path!r}: {why}."""


class NameTooLong(BadPath):
    """Invalid pool path {path!r}: {why}."""


class BadFolderName(BadInput):
    """Invalid folder name {name!r}: {why}."""


class BadCopies(BadInput):
    """Copies must be a whole number from 1 to {max}, not {copies}."""


class NotFound(BadInput):
    """No such file or folder in the pool: {path}. See `homepool ls`."""


class NoSuchFolder(BadInput):
    """No folder named {name!r}. See `homepool folder list`, or create it with `homepool folder add`."""


class FolderExists(BadInput):
    """A folder named {existing!r} already exists{clash}."""


class NotADirectory(BadInput):
    """{path} is a file, not a folder."""


class IsADirectory(BadInput):
    """{path} is a folder, not a file."""


class AlreadyExists(BadInput):
    """{path} already exists in the pool."""


class DirectoryNotEmpty(BadInput):
    """{path} is not empty; delete what is in it first."""


class NotInFolder(BadInput):
    """{path}: files live inside a folder (Photos/..., Documents/...), not at the top of the pool."""


class LinksAcrossFolders(BadInput):
    """{path}: all names of a file (its hard links) stay in one top-level folder, which decides
    its copies; copy it instead."""


class HasOtherNames(BadInput):
    """{path} has other names in the pool (hard links); write it through the mount, or delete
    its other names first."""


class BadDrive(BadInput):
    """Cannot add {path}: {why}."""


class UnknownDrive(BadInput):
    """{path} is not a drive of this pool. See `homepool drive list`."""


class SourceVanished(BadInput):
    """Source {path} vanished or changed while it was being imported; nothing of it was imported. Run the import again."""


class ImportIncomplete(BadInput):
    """{count} file(s) could not be read and were not imported (first: {first}); everything else was. Fix them and run the import again."""


class BadSource(BadInput):
    """Cannot import {path}: {why}."""


# -- pool state (4) --------------------------------------------------------------------------


class PoolStateError(HomepoolError):
    """{message}"""

    exit_code = 4


class NoPool(PoolStateError):
    """No pool at {path}. Create one with `homepool init`, point --pool/HOMEPOOL_POOL at one, or rebuild it with `homepool recover DRIVE...`."""


class NotAPool(PoolStateError):
    """{path} exists but is not a homepool state directory ({why}); choose another --pool directory."""


class PoolExists(PoolStateError):
    """A pool already exists at {path}; use another --pool directory."""


class NewerPool(PoolStateError):
    """The pool at {path} was written by a newer homepool (catalog revision {found}, this version knows {known}); upgrade homepool."""


class RecoverRefused(PoolStateError):
    """Cannot recover: {why}."""


class MountpointMissing(BadInput):
    """Cannot mount at {path}: it is not an existing directory. Create it first (mkdir -p {path})."""


class MountpointBusy(BadInput):
    """Cannot use {path}: {why}."""


class NotMounted(BadInput):
    """{path} is not a homepool mount."""


class FuseUnavailable(PoolStateError):
    """FUSE is not available: {why}."""


class MountFailed(PoolStateError):
    """Could not mount the pool at {path}: {why}."""


class MountStopping(PoolStateError):
    """The pool's mount at {path} is being unmounted, so it stopped; {what}."""


# -- no space (5) ----------------------------------------------------------------------------


class NoSpace(HomepoolError):
    """{message}"""

    exit_code = 5


class PoolFull(NoSpace):
    """No drive has room for {path} ({size}); the most any drive can take is {largest}. Add a drive or free some space."""


class ImportTooBig(NoSpace):
    """The import needs {needed} (with copies) but the pool has {free} free; nothing was imported.
    Add a drive or free some space."""


# -- busy (6) --------------------------------------------------------------------------------


class PoolBusy(HomepoolError):
    """The pool is busy: another homepool command (pid {pid}) is changing it. Wait for it to finish and try again."""

    exit_code = 6


class PoolMounted(PoolBusy):
    """The pool is mounted at {where} (pid {pid}), which makes every change to it: copy files in there, or
    `homepool unmount {where}` first."""


class MountUnreachable(PoolBusy):
    """The pool is mounted at {where} (pid {pid}), but the mount does not answer ({why}); try again in a
    moment, or `homepool unmount {where}` and run the command then."""


# -- data (7) and drive I/O (8) --------------------------------------------------------------


class NoReadableCopy(HomepoolError):
    """No readable copy of {path} is left (tried {tried}); run `homepool check` for details."""

    exit_code = 7


class DriveIOError(HomepoolError):
    """Drive {drive} failed during {op} of {path}: {err}. Check the drive (`homepool status`)."""

    exit_code = 8

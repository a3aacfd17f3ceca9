"""The pool: the one place that changes drives and catalog together.

Modules: `core` (the `Pool` API), `batch` (`WriteBatch`: many new files made durable
together), `live` (the mount's changes: files written in place on all their copies),
`ondrive` (small helpers on one drive's plain tree, no catalog).

Everything else (CLI, import, check, recover, and later the FUSE mount, WebDAV and the
background services) calls this API and never touches a member drive's tree or the catalog on
its own.

How a change stays consistent across a crash (see docs/architecture.md):
  1. new data is written to temp files in each target drive's .homepool/tmp/ and made durable;
  2. a journal row describing the switch is committed to the catalog;
  3. the switch is made on the drives (renames, unlinks), all idempotent, and made durable;
  4. the result is recorded and the journal row deleted, in one transaction.
A crash before 2 leaves orphan temp files (the old state; `check --repair` deletes them). A
crash after 2 leaves a journal row; the next command that opens the pool for writing repeats 3
and 4 first (the new state). Steps a missing or failing drive could not take are owed to it
(the `owed` table) and made when it is back.

Not thread-safe: one Pool object per thread of control. Each operation works on a snapshot of
the drive list taken when it starts.
"""

from .batch import Staged, WriteBatch
from .core import DEFAULT_FOLDERS, MAX_COPIES, DriveInfo, FolderInfo, Pool, describe
from .live import LiveFile
from .ondrive import conflict_name, copy_is_at_fault, rename_on, scan_tree

__all__ = [
    "DEFAULT_FOLDERS", "MAX_COPIES", "DriveInfo", "FolderInfo", "LiveFile", "Pool", "Staged", "WriteBatch",
    "conflict_name", "copy_is_at_fault", "describe", "rename_on", "scan_tree",
]

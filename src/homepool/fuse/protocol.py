"""The kernel's FUSE protocol as it crosses /dev/fuse: opcodes, flags and message layouts.

Taken from the kernel's `include/uapi/linux/fuse.h` (protocol 7.40, the first with passthrough).
Every message starts with `fuse_in_header`; every reply with `fuse_out_header`, whose error is
a negative errno. Little-endian, as the kernel lays the structs out on the machines we run on.
"""

from __future__ import annotations

import enum
import functools
import struct
from typing import NamedTuple

MAJOR = 7
MINOR = 40  # what we speak: 7.40 adds passthrough (older kernels get the smaller of the two)
MIN_MINOR = 31  # the oldest kernel protocol whose message layouts this module knows (Linux 5.10)
ROOT_ID = 1



class Op(enum.IntEnum):
    """Request opcodes (enum fuse_opcode), the ones this transport knows."""

    LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
    MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK = 8, 9, 10, 11, 12, 13
    OPEN, READ, WRITE, STATFS, RELEASE = 14, 15, 16, 17, 18
    FSYNC, SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, INIT = 20, 21, 22, 23, 24, 25, 26
    OPENDIR, READDIR, RELEASEDIR, FSYNCDIR, ACCESS, CREATE, INTERRUPT, DESTROY = 27, 28, 29, 30, 34, 35, 36, 38
    IOCTL, BATCH_FORGET, READDIRPLUS, RENAME2, LSEEK, STATX = 39, 42, 44, 45, 46, 52


# INIT flags (bits 32 and up travel in flags2)
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
BIG_WRITES = 1 << 5
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
READDIRPLUS_AUTO = 1 << 14
ASYNC_DIO = 1 << 15
PARALLEL_DIROPS = 1 << 18
MAX_PAGES = 1 << 22
HANDLE_KILLPRIV_V2 = 1 << 28  # we clear set-id bits (write, truncate, chown, O_TRUNC), not the kernel
INIT_EXT = 1 << 30
DIRECT_IO_ALLOW_MMAP = 1 << 36  # shared mmap of a FOPEN_DIRECT_IO file (Linux >= 6.6)
PASSTHROUGH = 1 << 37

# open reply flags
FOPEN_DIRECT_IO = 1 << 0
FOPEN_KEEP_CACHE = 1 << 1
FOPEN_CACHE_DIR = 1 << 3
FOPEN_PASSTHROUGH = 1 << 7

# setattr `valid` bits
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH, FATTR_ATIME_NOW, FATTR_MTIME_NOW = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
FATTR_KILL_SUIDGID = 1 << 11  # a truncate by a user who may not keep set-id bits
# What a setattr may change (one that changes none of it: chown(-1, -1), or the kernel's own
# "remove privileges" step)
FATTR_CHANGES = FATTR_MODE | FATTR_UID | FATTR_GID | FATTR_SIZE | FATTR_ATIME | FATTR_MTIME | FATTR_ATIME_NOW \
    | FATTR_MTIME_NOW
OPEN_KILL_SUIDGID = 1 << 0  # open_flags of OPEN: O_TRUNC by such a user

RENAME_NOREPLACE, RENAME_EXCHANGE = 1 << 0, 1 << 1
FSYNC_FDATASYNC = 1 << 0

# /dev/fuse ioctls: _IOW(229, nr, size)
DEV_IOC_BACKING_OPEN = (1 << 30) | (16 << 16) | (229 << 8) | 1  # struct fuse_backing_map
DEV_IOC_BACKING_CLOSE = (1 << 30) | (4 << 16) | (229 << 8) | 2  # uint32_t backing id

IN_HEADER = struct.Struct("<IIQQIIIHH")  # len opcode unique nodeid uid gid pid total_extlen padding
OUT_HEADER = struct.Struct("<IiQ")  # len error unique
INIT_IN = struct.Struct("<IIIII")  # major minor max_readahead flags flags2 (then unused)
# major minor max_readahead flags max_background congestion_threshold max_write time_gran
# max_pages map_alignment flags2 max_stack_depth, then 24 unused bytes
INIT_OUT = struct.Struct("<IIIIHHIIHHII24x")
ATTR = struct.Struct("<QQQqqqIIIIIIIIII")  # fuse_attr (88 bytes; times before 1970 are negative)
ENTRY_OUT = struct.Struct("<QQQQII")  # nodeid generation entry_valid attr_valid (+nsec), then ATTR
ATTR_OUT = struct.Struct("<QII")  # attr_valid attr_valid_nsec dummy, then ATTR
OPEN_OUT = struct.Struct("<QIi")  # fh open_flags backing_id
OPEN_IN = struct.Struct("<II")  # flags open_flags
CREATE_IN = struct.Struct("<IIII")  # flags mode umask open_flags
MKNOD_IN = struct.Struct("<IIII")  # mode rdev umask padding
MKDIR_IN = struct.Struct("<II")  # mode umask
RENAME_IN = struct.Struct("<Q")  # newdir
RENAME2_IN = struct.Struct("<QII")  # newdir flags padding
LINK_IN = struct.Struct("<Q")
SETATTR_IN = struct.Struct("<IIQQQqqqIIIIIIII")  # valid pad fh size lock_owner atime mtime ctime (signed), nsecs...
READ_IN = struct.Struct("<QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_KILL_SUIDGID = 1 << 2  # write_flags: the writer may not keep set-id bits (clear them)
WRITE_IN = READ_IN  # fh offset size write_flags lock_owner flags padding; the data follows
WRITE_OUT = struct.Struct("<II")
RELEASE_IN = struct.Struct("<QIIQ")
FLUSH_IN = struct.Struct("<QIIQ")
FSYNC_IN = struct.Struct("<QII")
SETXATTR_IN = struct.Struct("<II")  # size flags (without FUSE_SETXATTR_EXT)
GETXATTR_IN = struct.Struct("<II")  # size padding
GETXATTR_OUT = struct.Struct("<II")
STATFS_OUT = struct.Struct("<QQQQQIIII24x")  # blocks bfree bavail files ffree bsize namelen frsize padding
DIRENT = struct.Struct("<QQII")  # ino off namelen type, then the name padded to 8 bytes
DIRENTPLUS = struct.Struct("<" + ENTRY_OUT.format[1:] + ATTR.format[1:] + DIRENT.format[1:])  # then the name
FORGET_IN = struct.Struct("<Q")  # nlookup
BATCH_FORGET_IN = struct.Struct("<II")  # count, then that many FORGET_ONE
FORGET_ONE = struct.Struct("<QQ")  # nodeid nlookup
# Notifications: written to /dev/fuse unasked (unique 0, the code in the error field).
NOTIFY_INVAL_INODE, NOTIFY_INVAL_ENTRY = 2, 3
INVAL_INODE_OUT = struct.Struct("<Qqq")  # ino offset length (offset -1: attributes only; length 0: to the end)
INVAL_ENTRY_OUT = struct.Struct("<QII")  # parent namelen flags, then the name and a NUL


class Attr(NamedTuple):
    """What the kernel is told about an inode (struct fuse_attr)."""

    ino: int
    size: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    mtime_ns: int
    ctime_ns: int
    atime_ns: int
    blksize: int = 4096


def _attr_fields(a: Attr) -> tuple[int, ...]:
    """struct fuse_attr's fields, in order (ATTR, and the middle of DIRENTPLUS)."""
    asec, ansec = divmod(a.atime_ns, 10**9)
    msec, mnsec = divmod(a.mtime_ns, 10**9)
    csec, cnsec = divmod(a.ctime_ns, 10**9)
    return (a.ino, a.size, (a.size + 511) // 512, asec, msec, csec, ansec, mnsec, cnsec,
            a.mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, 0)


def pack_attr(a: Attr) -> bytes:
    return ATTR.pack(*_attr_fields(a))


@functools.lru_cache(maxsize=8)
def _sec_nsec(timeout: float) -> tuple[int, int]:
    """A timeout as the kernel takes it: whole seconds, then nanoseconds (a few timeouts are
    used, in every reply: worked out once)."""
    return int(timeout), int((timeout % 1) * 1e9)


def pack_entry(a: Attr | None, timeout: float) -> bytes:
    """fuse_entry_out; `a` None is a missing name the kernel may remember for `timeout`."""
    sec, nsec = _sec_nsec(timeout)
    if a is None:
        return ENTRY_OUT.pack(0, 0, sec, 0, nsec, 0) + bytes(ATTR.size)
    return ENTRY_OUT.pack(a.ino, 0, sec, sec, nsec, nsec) + pack_attr(a)


def pack_attr_out(a: Attr, timeout: float) -> bytes:
    return ATTR_OUT.pack(*_sec_nsec(timeout), 0) + pack_attr(a)


def direntplus(a: Attr, off: int, name: bytes, timeout: float) -> bytes:
    """A READDIRPLUS entry: `pack_entry` and `dirent` in one (a listing packs thousands, so
    `_attr_fields` is written out here: a call per entry is a tenth of the cost)."""
    sec, nsec = _sec_nsec(timeout)
    asec, ansec = divmod(a.atime_ns, 10**9)
    msec, mnsec = divmod(a.mtime_ns, 10**9)
    csec, cnsec = divmod(a.ctime_ns, 10**9)
    rec = DIRENTPLUS.pack(a.ino, 0, sec, sec, nsec, nsec, a.ino, a.size, (a.size + 511) // 512, asec, msec, csec,
                          ansec, mnsec, cnsec, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, 0,
                          a.ino, off, len(name), (a.mode >> 12) & 0o17) + name
    return rec + _PAD[-len(rec) % 8]


_PAD = tuple(bytes(n) for n in range(8))  # what pads an entry to 8 bytes, by length
# A READDIRPLUS entry without attributes: 128 zero bytes (node id 0), then the dirent
DIRENTPLUS_BARE = struct.Struct(f"<{ENTRY_OUT.size + ATTR.size}x" + DIRENT.format[1:])


def direntplus_bare(ino: int, off: int, name: bytes, mode: int) -> bytes:
    """A READDIRPLUS entry without attributes (node id 0: the kernel keeps what it has)."""
    rec = DIRENTPLUS_BARE.pack(ino, off, len(name), (mode >> 12) & 0o17) + name
    return rec + _PAD[-len(rec) % 8]


def dirent(ino: int, off: int, name: bytes, mode: int) -> bytes:
    rec = DIRENT.pack(ino, off, len(name), (mode >> 12) & 0o17) + name
    return rec + _PAD[-len(rec) % 8]

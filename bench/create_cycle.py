"""The mount's work for one small file, in process and without FUSE: LOOKUP of the new name,
CREATE, a 4 KiB WRITE, FLUSH, RELEASE and a GETATTR of the directory (the requests a program
that creates, writes and closes a file sends), LOOPS times (env). With MOVE=1 (env), each file
is then renamed and deleted as a program would (LOOKUP, RENAME, GETATTR of the directory,
LOOKUP, UNLINK, GETATTR): the difference is what a rename and a delete cost. With TAR=1, each
file's times, owner and mode are set before it is closed, as tar does (SETATTR of the times,
GETXATTR of security.capability, SETATTR of the owner, SETATTR of the mode). With
ANSWERS=1, no file is made: a GETATTR of a directory and a LOOKUP of a file in it are answered
by the transport (`Session`, its replies written to /dev/null), LOOPS times: what every
request costs before its own work. Run under
`valgrind --tool=callgrind` by bench/create_cycle.sh, which subtracts a run of 0 loops:
instructions are counted, not seconds, so two versions of the code compare on a busy machine.

    python bench/create_cycle.py STATE_DIR FOLDER
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from homepool.fuse import protocol as p
from homepool.fuse.ops import PoolOperations
from homepool.fuse.session import Ctx, FuseError, Session, SetAttr
from homepool.pool import Pool

NOTHING = SetAttr(None, None, None, None, None, None)  # a setattr that changes nothing (each TAR one sets one thing)


def answer_requests(ops: PoolOperations, parent: int, loops: int) -> None:
    """A GETATTR of `parent` and a LOOKUP of a file in it, `loops` times, through the transport."""
    attr, opened = ops.create(Ctx(0, 0, os.getpid()), parent, b"f", 0o644, os.O_WRONLY | os.O_CREAT)
    ops.release(opened.fh)
    session = Session(ops, Path("/nonexistent"), "cycle")
    session.fd = os.open(os.devnull, os.O_WRONLY)
    requests = []
    for op, body in ((p.Op.GETATTR, bytes(16)), (p.Op.LOOKUP, b"f\0")):
        buf = bytearray(p.IN_HEADER.size + len(body))
        p.IN_HEADER.pack_into(buf, 0, len(buf), op, 1, parent, 0, 0, os.getpid(), 0, 0)
        buf[p.IN_HEADER.size:] = body
        requests.append((buf, memoryview(buf), len(buf)))
    for _ in range(loops):
        for request in requests:
            session._answer(*request)
    assert session.served[p.Op.GETATTR] == session.served[p.Op.LOOKUP] == loops
    os.close(session.fd)


def main(state_dir: Path, folder: str, loops: int, move: bool, tar: bool, answers: bool) -> None:
    pool = Pool.open(state_dir, write=True)
    try:
        pool.go_live()
        pool.group_steps()
        ops = PoolOperations(pool)
        ctx = Ctx(0, 0, os.getpid())
        top = ops.lookup(ctx, 1, folder.encode())
        assert top is not None, f"no folder {folder}"
        parent = ops.mkdir(ctx, top.ino, b"cycle%d" % os.getpid(), 0o755).ino
        data = memoryview(b"y" * 4096)
        if answers:
            answer_requests(ops, parent, loops)
            loops = 0
        for n in range(loops):
            name = b"f%d" % n
            assert ops.lookup(ctx, parent, name) is None
            attr, opened = ops.create(ctx, parent, name, 0o644, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            ops.write(opened.fh, 0, data)
            if tar:
                ops.setattr(ctx, attr.ino, opened.fh, NOTHING._replace(mtime_ns=1_700_000_000 * 10**9))
                with contextlib.suppress(FuseError):
                    ops.getxattr(ctx, attr.ino, b"security.capability")
                ops.setattr(ctx, attr.ino, opened.fh, NOTHING._replace(uid=0, gid=0, kill_set_id=True))
                ops.setattr(ctx, attr.ino, opened.fh, NOTHING._replace(mode=0o644))
            ops.flush(opened.fh, os.getpid())
            ops.release(opened.fh)
            ops.getattr(ctx, parent)
            if move:
                assert ops.lookup(ctx, parent, name) is not None
                ops.rename(ctx, parent, name, parent, b"g%d" % n, 0)
                ops.getattr(ctx, parent)
                assert ops.lookup(ctx, parent, b"g%d" % n) is not None
                ops.unlink(ctx, parent, b"g%d" % n)
                ops.getattr(ctx, parent)
        ops.close()
    finally:
        pool.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], int(os.environ.get("LOOPS", "0")), os.environ.get("MOVE") == "1",
         os.environ.get("TAR") == "1", os.environ.get("ANSWERS") == "1")

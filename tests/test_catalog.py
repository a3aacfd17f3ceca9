"""The catalog on its own: schema, transactions, derived shortfall."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from homepool.catalog import CURRENT_REV, ROOT_ID, Catalog, Node, NoSuchRowError


@pytest.fixture
def cat(tmp_path: Path) -> Catalog:
    c = Catalog.create(tmp_path / "c.db", "pool-1", 0)
    yield c
    c.close()


def test_new_catalog_has_root_and_revision(cat: Catalog) -> None:
    assert cat.schema_rev() == CURRENT_REV
    assert cat.meta("pool_id") == "pool-1"
    root = cat.node(ROOT_ID)
    assert root.is_dir and root.parent_id is None
    assert cat.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_transaction_leaves_nothing(cat: Catalog) -> None:
    with pytest.raises(RuntimeError), cat.transaction():
        cat.add_node(ROOT_ID, "Photos", "dir", 0o40755, 0)
        raise RuntimeError("boom")
    assert cat.child(ROOT_ID, "Photos") is None


def test_nested_transactions_join_the_outer_one(cat: Catalog) -> None:
    with pytest.raises(RuntimeError), cat.transaction():
        with cat.transaction():
            cat.add_node(ROOT_ID, "A", "dir", 0o40755, 0)
        raise RuntimeError("outer fails")
    assert cat.child(ROOT_ID, "A") is None


def test_what_the_mount_keeps_in_memory_is_what_the_catalog_holds(tmp_path: Path) -> None:
    """The mount's caches (`track_paths`) keep a new node, its path, the columns set on it and
    the folders as inserted, without reading them back: a second connection reads the same."""
    cat = Catalog.create(tmp_path / "c.db", "pool-1", 0)
    cat.keep_in_memory()
    other = Catalog(tmp_path / "c.db", readonly=True)
    try:
        with cat.transaction():
            folder = cat.add_node(ROOT_ID, "Docs", "dir", 0o40755, 5, uid=7, gid=8)
            cat.add_folder(folder, "docs", 2)
            f = cat.add_node(folder, "a.txt", "file", 0o100640, 10, 3, "h", uid=7, gid=8)
        assert cat.folder_by_fold("docs") == (folder, 2) and cat.folder_by_fold("nope") is None
        with cat.transaction():
            cat.set_attrs(f, size=9, hash="h2", ctime_ns=12)
            cat.set_folder_copies(folder, 3)
            cat.add_folder(cat.add_node(ROOT_ID, "Nope", "dir", 0o40755, 5), "nope", 1)
        for node_id in (folder, f):
            assert cat.node(node_id) == other.node(node_id) == Node.of_row(
                other.db.execute(f"SELECT {Catalog._NODE_COLS} FROM nodes WHERE id = ?", (node_id,)).fetchone())
        assert cat.folder_by_fold("docs") == (folder, 3) and cat.folder_by_fold("nope") is not None
        assert cat.path_of(f) == other.path_of(f) == "Docs/a.txt"
        with pytest.raises(RuntimeError), cat.transaction():
            cat.set_attrs(f, size=1)
            raise RuntimeError("undone")
        assert cat.node(f).size == 9
    finally:
        other.close()
        cat.close()


def test_the_listings_and_names_the_mount_keeps_are_what_the_catalog_holds(tmp_path: Path) -> None:
    """A directory made by the mount, or listed to its end, is listed from memory, and a name
    found once is found again without a query; after every kind of change to a directory's
    entries, what it lists, page by page, and what each name names are what SQLite holds."""
    cat = Catalog.create(tmp_path / "c.db", "pool-1", 0)
    cat.keep_in_memory()
    other = Catalog(tmp_path / "c.db", readonly=True)  # lists by SQL only

    def same(*dirs: int) -> None:
        for d in dirs:
            whole = other.listing(d)
            assert cat.listing(d) == whole
            for after in {0, *(e[0] for e in whole)}:
                for most in (1, 2, 100):
                    assert cat.listing(d, after, most) == other.listing(d, after, most), (d, after, most)
            for name in names:
                assert cat.child(d, name) == other.child(d, name), (d, name)
        # The count bounding what is kept is of what is kept (dropped listings leave it), and
        # the names kept (a name not among them is not looked for) are the listings' names.
        assert cat._listed == sum(len(kept) for kept in cat._listings.values())
        assert cat._listed_names == {d: {e[2] for e in kept} for d, kept in cat._listings.items()}

    names = ["A", "B", "B2", "moved", "renamed", "extra", "extra2", "back", "new", "undone",
             *(f"f{i}" for i in range(5))]
    try:
        with cat.transaction():
            a = cat.add_node(ROOT_ID, "A", "dir", 0o40755, 1)
            b = cat.add_node(ROOT_ID, "B", "dir", 0o755, 1)
            files = [cat.add_node(a, f"f{i}", "file", 0o644, 1) for i in range(5)]
            fifo = cat.add_node(a, "pipe", "special", 0o10644, 1)
        assert a in cat._listings and b in cat._listings  # made here: kept from the start
        same(ROOT_ID, a, b)
        assert ROOT_ID in cat._listings and cat.listing(a)[-1] == (fifo, fifo, "pipe", "special", 0o10000)
        steps = [
            lambda: cat.move_node(files[1], b, "moved", False),  # out of one directory, into another
            lambda: cat.move_node(files[2], a, "renamed", False),  # within one
            lambda: cat.move_node(files[1], a, "back", False),  # and back, to its place among the others
            lambda: cat.add_link(files[3], b, "extra", 2),  # an extra name
            lambda: cat.move_node(cat.child(b, "extra").id, a, "extra2", False),  # an extra name moves
            lambda: cat.remove_name(cat.node(files[3])),  # the own name goes: the extra takes its place
            lambda: cat.delete_node(files[0], cat.node(files[0])),
            lambda: cat.move_node(b, a, "B2", True),  # a directory moves
            lambda: cat.add_node(b, "new", "file", 0o644, 3),
        ]
        for step in steps:
            with cat.transaction():
                step()
            same(ROOT_ID, a, b)
        assert b in cat._listings and a in cat._listings  # listed to their end again: kept
        with cat.transaction():  # kept as they change (no query to list, or to find a name not there)
            cat.move_node(files[4], b, "f4", False)
            cat.delete_node(fifo)
        assert b in cat._listings and a in cat._listings
        same(ROOT_ID, a, b)
        assert (b, "new") in cat._named and (a, "f4") in cat._named
        with pytest.raises(RuntimeError), cat.transaction():
            cat.add_node(b, "undone", "file", 0o644, 4)
            raise RuntimeError("undone")
        same(ROOT_ID, a, b)
    finally:
        other.close()
        cat.close()


def test_a_commit_that_fails_undoes_its_transaction(cat: Catalog) -> None:
    """The COMMIT itself fails (a constraint checked at commit time): the transaction is undone."""
    with pytest.raises(sqlite3.IntegrityError), cat.transaction():
        cat.db.execute("PRAGMA defer_foreign_keys = ON")  # (until this transaction ends)
        cat.add_node(ROOT_ID, "A", "dir", 0o40755, 0)
        cat.add_node(999, "orphan", "dir", 0o40755, 0)  # no parent 999: refused when committed
    assert not cat.db.in_transaction
    assert cat.child(ROOT_ID, "A") is None
    with cat.transaction():  # and the next one works
        cat.add_node(ROOT_ID, "B", "dir", 0o40755, 0)
    assert cat.child(ROOT_ID, "B") is not None


def test_names_are_unique_per_directory(cat: Catalog) -> None:
    import sqlite3

    with cat.transaction():
        cat.add_node(ROOT_ID, "A", "dir", 0o40755, 0)
    with pytest.raises(sqlite3.IntegrityError), cat.transaction():
        cat.add_node(ROOT_ID, "A", "dir", 0o40755, 0)


def test_shortfall_is_derived_from_replicas_on_active_drives(cat: Catalog) -> None:
    with cat.transaction():
        d1 = cat.add_drive("u1", "/d1", "one", "t", None, False)
        d2 = cat.add_drive("u2", "/d2", "two", "t", None, False)
        folder = cat.add_node(ROOT_ID, "Photos", "dir", 0o40755, 0)
        cat.add_folder(folder, "photos", 2)
        sub = cat.add_node(folder, "2010", "dir", 0o40755, 0)
        f = cat.add_node(sub, "a.jpg", "file", 0o100644, 0, 10, "h")
        cat.set_replica(f, d1, 10, 0, "h")
    assert cat.short_files() == [(f, 1, 2)]
    with cat.transaction():
        cat.set_replica(f, d2, 10, 0, "h")
    assert cat.short_files() == []
    with cat.transaction():
        cat.set_drive_state(d2, "missing")
    assert cat.short_files() == [(f, 1, 2)]
    with cat.transaction():
        cat.set_drive_state(d2, "active")
        cat.set_replica_state(f, d1, "bad")
    assert cat.short_files() == [(f, 1, 2)]
    assert cat.bytes_by_drive() == {d1: 10, d2: 10}


def test_journal_round_trip(cat: Catalog) -> None:
    with cat.transaction():
        e = cat.journal_add("write", {"path": "Photos/a", "targets": {"1": "x.part"}})
    (entry,) = cat.journal()
    assert entry.id == e and entry.payload["targets"] == {"1": "x.part"}
    with cat.transaction():
        cat.journal_done(e)
    assert cat.journal() == []


def test_get_val_raises_for_no_row(cat: Catalog) -> None:
    with pytest.raises(NoSuchRowError):
        cat.get_val("SELECT id FROM nodes WHERE id = -1")


def test_the_path_of_a_node_at_any_depth(cat: Catalog) -> None:
    """Paths have no length limit, so a tree may be deeper than Python's stack: the path is
    put together without recursion, and each folder's on the way is remembered."""
    cat.keep_in_memory()
    parent = ROOT_ID
    with cat.transaction():
        for i in range(3000):
            parent = cat.add_node(parent, f"d{i % 10}", "dir", 0o40755, 0)
    assert cat.path_of(parent) == "/".join(f"d{i % 10}" for i in range(3000))
    assert cat._paths[cat.node(parent).parent_id] == "/".join(f"d{i % 10}" for i in range(2999))
    with pytest.raises(NoSuchRowError):
        cat.path_of(parent + 1)

"""homepool: one storage pool from any drives; plain files on every drive, per-folder copies.

Layers (see docs/architecture.md): `pool` is the only code that changes drives and catalog
together; `catalog` (SQLite), `drives` (one member drive), `placement` (which drives) sit
below it; `importer`, `check`, `recover` and `cli` call it.
"""

__version__ = "0.1.0"

"""What the revisions share: creating a table only where it is missing.

The releases before Alembic created every table their code knew whenever one was missing, so a
database of a given ``schema_version`` may or may not hold a table added later without a
version step; the revisions that introduce tables create each one only where it is missing.
Column types are spelled out in each revision (frozen), never taken from ``tables.py``.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

#: Every timestamp column (``tables.UtcDateTime`` stores UTC in this type).
TIMESTAMP = sa.DateTime(timezone=True)
#: A 64-bit surrogate key that SQLite still auto-increments (only exactly INTEGER does).
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def create_missing(name: str, *elements: Any, **options: Any) -> None:
    """``op.create_table`` (with its indexes) unless the table exists."""
    if not sa.inspect(op.get_bind()).has_table(name):
        op.create_table(name, *elements, **options)

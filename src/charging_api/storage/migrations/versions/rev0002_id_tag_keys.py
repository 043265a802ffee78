"""Schema v2: id_tags.tag_key, the case-insensitive key, filled in for every tag.

Tags registered under v1 that differ only in case are one card to OCPP (CiString20) and cannot
both keep their registration: the revision refuses, naming them, and the database stays at v1
(the whole upgrade is one transaction) until the operator removes all but one of each. The
column carries ``DEFAULT ''``, which SQLite needs to add a NOT NULL column; the store writes
the key with every row, so the default never applies.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from charging_api.domain.models import id_tag_key
from charging_api.storage.schema import MigrationRefused

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE id_tags ADD COLUMN tag_key VARCHAR NOT NULL DEFAULT ''")
    id_tags = sa.table("id_tags", sa.column("tag", sa.String), sa.column("tag_key", sa.String))
    bind = op.get_bind()
    by_key: dict[str, list[str]] = {}
    for tag in bind.execute(sa.select(id_tags.c.tag).order_by(id_tags.c.tag)).scalars():
        by_key.setdefault(id_tag_key(tag), []).append(tag)
    clashes = [spellings for spellings in by_key.values() if len(spellings) > 1]
    if clashes:
        named = "; ".join(" / ".join(spellings) for spellings in clashes)
        raise MigrationRefused(
            f"id tags registered in several cases ({named}) are one tag to OCPP: delete all "
            "but one spelling of each from the id_tags table, then upgrade again"
        )
    if by_key:
        bind.execute(
            sa.update(id_tags)
            .where(id_tags.c.tag == sa.bindparam("b_tag"))
            .values(tag_key=sa.bindparam("b_key")),
            [{"b_tag": t, "b_key": key} for key, (t,) in by_key.items()],
        )
    op.create_index("ux_id_tags_tag_key", "id_tags", ["tag_key"], unique=True)

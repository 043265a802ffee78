"""Schema v3: transactions.closed_by and app_stop_reason.

``closed_by``: who closed the transaction first; ``app_stop_reason``: the reason the app gave
with its stop. Every transaction stopped before was stopped by its charge point.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE transactions ADD COLUMN closed_by VARCHAR")
    op.execute("ALTER TABLE transactions ADD COLUMN app_stop_reason VARCHAR")
    op.execute("UPDATE transactions SET closed_by = 'ChargePoint' WHERE stopped_at IS NOT NULL")

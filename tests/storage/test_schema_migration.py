"""A database written by an older version is upgraded in place by ``SqlStore.start``."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from charging_api.domain.models import ClosedBy
from charging_api.storage import SqlStore
from charging_api.storage.tables import SCHEMA_VERSION

#: The transactions table and version record as schema v1 created them.
V1_SCHEMA = """
CREATE TABLE schema_version (version INTEGER NOT NULL, PRIMARY KEY (version));
INSERT INTO schema_version (version) VALUES (1);
CREATE TABLE transactions (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
    charge_point_id VARCHAR NOT NULL,
    connector_id INTEGER NOT NULL,
    id_tag VARCHAR NOT NULL,
    user_id VARCHAR,
    id_tag_status VARCHAR NOT NULL,
    meter_start_wh BIGINT NOT NULL,
    started_at DATETIME NOT NULL,
    meter_stop_wh BIGINT,
    stopped_at DATETIME,
    stop_reason VARCHAR
);
INSERT INTO transactions VALUES
    (1, 'CP1', 1, 'TAG', 'alice', 'Accepted', 100, '2025-01-01 10:00:00.000000',
     900, '2025-01-01 11:00:00.000000', 'Local'),
    (2, 'CP1', 2, 'TAG', 'alice', 'Accepted', 200, '2025-01-01 12:00:00.000000',
     NULL, NULL, NULL);
"""


async def test_a_v1_sqlite_file_is_upgraded_and_keeps_its_transactions(tmp_path: Path) -> None:
    """start() on a v1 file adds the v2 columns, marks old stops as the charge point's,
    records the version, and the open transaction can be closed with the new fields."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:
        old.executescript(V1_SCHEMA)
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:
        stopped = await store.get_transaction(1)
        assert stopped is not None
        assert (stopped.meter_stop_wh, stopped.stop_reason, stopped.closed_by) == (
            900,
            "Local",
            ClosedBy.CHARGE_POINT,
        )
        open_tx = await store.get_transaction(2)
        assert open_tx is not None and open_tx.active and open_tx.closed_by is None
        closed = await store.stop_transaction(
            2, 250, datetime(2025, 1, 1, 13, tzinfo=UTC), "Other", ClosedBy.ADMIN, "UserStop"
        )
        assert closed is not None
        assert (closed.closed_by, closed.app_stop_reason) == (ClosedBy.ADMIN, "UserStop")
    finally:
        await store.close()
    with sqlite3.connect(path) as upgraded:
        versions = [v for (v,) in upgraded.execute("SELECT version FROM schema_version")]
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
    again = SqlStore(f"sqlite:///{path}")  # a second start migrates nothing twice
    await again.start()
    await again.close()

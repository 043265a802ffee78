"""Databases as the releases before Alembic wrote them (``schema_version`` 1), with data.

Shared by the store-level upgrade tests and the ``charging-api db`` command tests.
"""

from __future__ import annotations

#: The transactions table and version record as schema v1 created them on SQLite.
V1_SQLITE = """
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

#: The same v1 tables as PostgreSQL had them.
V1_POSTGRES = [
    "CREATE TABLE schema_version (version INTEGER PRIMARY KEY)",
    "INSERT INTO schema_version (version) VALUES (1)",
    """CREATE TABLE transactions (
        id SERIAL PRIMARY KEY,
        charge_point_id VARCHAR NOT NULL,
        connector_id INTEGER NOT NULL,
        id_tag VARCHAR NOT NULL,
        user_id VARCHAR,
        id_tag_status VARCHAR NOT NULL,
        meter_start_wh BIGINT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        meter_stop_wh BIGINT,
        stopped_at TIMESTAMPTZ,
        stop_reason VARCHAR
    )""",
    """INSERT INTO transactions (charge_point_id, connector_id, id_tag, user_id, id_tag_status,
        meter_start_wh, started_at, meter_stop_wh, stopped_at, stop_reason) VALUES
        ('CP1', 1, 'TAG', 'alice', 'Accepted', 100, '2025-01-01 10:00:00+00',
         900, '2025-01-01 11:00:00+00', 'Local'),
        ('CP1', 2, 'TAG', 'alice', 'Accepted', 200, '2025-01-01 12:00:00+00', NULL, NULL, NULL)""",
]

"""Timestamps on every wire: RFC 3339 UTC with milliseconds and ``Z``.

Strict OCPP peers (ajv with formats) reject a timestamp without a timezone, and the seed's
examples use this exact form, so everything that writes a wire timestamp formats through here:
both doors, the simulator and the Python client. Standard library only (the client must run
with ``websockets`` alone). Sub-millisecond digits are truncated, never rounded (rounding could
carry into the seconds). It runs once or twice per MeterValues, so it uses ``isoformat`` (C)
rather than ``strftime``.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_utc(moment: datetime) -> str:
    """``2024-01-15T10:30:00.000Z``; a naive datetime is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    elif moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def utc_now_text() -> str:
    """Now, as :func:`format_utc` writes it."""
    return format_utc(datetime.now(UTC))

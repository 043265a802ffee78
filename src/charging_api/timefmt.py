"""Timestamps on every wire: RFC 3339 UTC with milliseconds and ``Z``.

Strict OCPP peers (ajv with formats) reject a timestamp without a timezone, and the seed's
examples use this exact form, so both doors format through here.
"""

from __future__ import annotations

from datetime import UTC, datetime


def format_utc(moment: datetime) -> str:
    """``2024-01-15T10:30:00.000Z``; a naive datetime is taken as UTC."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def utc_now_text() -> str:
    return format_utc(datetime.now(UTC))

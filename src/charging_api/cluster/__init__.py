"""Several processes on one Redis and one PostgreSQL (``ROLE=gateway|api``, docs/scaling.md).

An edge package: it adapts the core's ports (``ChargerGateway``, ``EventBus``) to Redis and never
is imported by the core. :mod:`.keys` names every Redis key and channel in one place.
"""

"""Storage adapters for the core's ``Store`` port."""

from charging_api.storage.sql import SqlStore, StorageUnavailable

__all__ = ["SqlStore", "StorageUnavailable"]

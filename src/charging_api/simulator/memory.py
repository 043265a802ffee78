"""What a simulated charge point remembers across connections and reboots.

A real charger keeps its configuration, local authorization list, charging profiles, firmware
version and connector availability in non-volatile memory; :class:`ChargerMemory` is that
memory. :mod:`charging_api.simulator.fleet` creates one per charge point and hands it to every
:class:`~charging_api.simulator.charge_point.SimulatedChargePoint` it connects, so a Reset or a
firmware update (which close the socket and boot again) keeps them, as do lost connections.

:class:`LocalList` is the Local Auth List Management logic (SendLocalList, GetLocalListVersion,
lookups); it and the authorization cache are pure data, no I/O.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from charging_api.simulator.config import Configuration
from charging_api.simulator.connector import SimConnector
from charging_api.simulator.profiles import ProfileStore, parse_time

__all__ = ["ChargerMemory", "LocalList", "SimTimings", "tag_verdict"]

FIRMWARE_VERSION = "1.0.0"
LOCAL_LIST_MAX = 100


@dataclass(frozen=True, slots=True)
class SimTimings:
    """Delays of the simulated slow work, in seconds (tests make them tiny).

    ``firmware_step`` between FirmwareStatusNotifications (Downloading, Downloaded, Installing,
    Installed), ``diagnostics_step`` between Uploading and Uploaded, ``reboot`` between closing
    the socket for a Reset or an installed firmware and connecting again.
    """

    firmware_step: float = 2.0
    diagnostics_step: float = 2.0
    reboot: float = 1.0


def tag_verdict(info: Mapping[str, Any], now: datetime) -> str:
    """The status of an ``idTagInfo`` (snake_case) at ``now``: Expired once past its expiry."""
    status = str(info.get("status", "Invalid"))
    expiry = info.get("expiry_date")
    if status == "Accepted" and isinstance(expiry, str):
        try:
            if parse_time(expiry) <= now:
                return "Expired"
        except ValueError:
            return "Invalid"
    return status


class LocalList:
    """The local authorization list and its version (0: no list installed)."""

    def __init__(self) -> None:
        self.version = 0
        self.entries: dict[str, dict[str, Any]] = {}

    def update(self, version: int, update_type: str, items: Iterable[Mapping[str, Any]]) -> str:
        """SendLocalList (items in the ``ocpp`` library's snake_case form): the status.

        Full replaces the list. Differential adds or replaces the entries that carry an
        ``id_tag_info`` and removes those that do not; its version must be newer than the
        installed one (else ``VersionMismatch``). More than the list can hold: ``Failed``.
        """
        items = list(items)
        if update_type == "Differential" and version <= self.version:
            return "VersionMismatch"
        entries = {} if update_type == "Full" else dict(self.entries)
        for item in items:
            info = item.get("id_tag_info")
            if info is None:
                entries.pop(item["id_tag"], None)
            else:
                entries[item["id_tag"]] = dict(info)
        if len(entries) > LOCAL_LIST_MAX:
            return "Failed"
        self.entries, self.version = entries, version
        return "Accepted"


@dataclass(slots=True)
class ChargerMemory:
    """The non-volatile state of one charge point (see the module docstring)."""

    connectors: dict[int, SimConnector]
    config: Configuration
    timings: SimTimings = field(default_factory=SimTimings)
    local_list: LocalList = field(default_factory=LocalList)
    auth_cache: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: ProfileStore = field(default_factory=ProfileStore)
    firmware_version: str = FIRMWARE_VERSION
    firmware_status: str = "Idle"
    diagnostics_status: str = "Idle"
    rng: random.Random = field(default_factory=random.Random)

    def known_verdict(self, id_tag: str, now: datetime) -> str | None:
        """What the charger itself knows of a tag: the local list first (when enabled), then the
        authorization cache (when enabled); None when neither knows it."""
        if self.config.flag("LocalAuthListEnabled") and id_tag in self.local_list.entries:
            return tag_verdict(self.local_list.entries[id_tag], now)
        if self.config.flag("AuthorizationCacheEnabled") and id_tag in self.auth_cache:
            return tag_verdict(self.auth_cache[id_tag], now)
        return None

    def remember(self, id_tag: str, info: Mapping[str, Any]) -> None:
        """Cache an ``idTagInfo`` the central system gave (snake_case), when caching is on."""
        if self.config.flag("AuthorizationCacheEnabled"):
            self.auth_cache[id_tag] = dict(info)

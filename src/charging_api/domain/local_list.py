"""The local authorization list: the server's copy of each charge point's list, and syncing.

OCPP 1.6 lets a charge point keep a list of id tags it may accept without asking (offline,
or with ``LocalAuthorizeOffline``). The central system owns that list: it numbers versions
and sends them with SendLocalList, Full (the whole list) or Differential (what changed).
:class:`LocalListSync` keeps, per charge point, the version and the entries it last installed
(storage: they survive restarts), computes the next update from the registered id tags
(status, expiry, parent) and sends it:

* the first sync of a charge point, or one asked ``full``, sends a Full update;
* later syncs send a Differential update: new or changed tags with their ``idTagInfo``, and
  the tags no longer registered without one (OCPP: removed); a tag blocked centrally is in
  the next differential update as ``Blocked``; no change means nothing is sent;
* the charge point's ``VersionMismatch`` to a differential update is answered with a Full one;
  ``Failed`` and ``NotSupported`` are reported and nothing is recorded (the next sync tries
  again from the last installed version).

Trade-off: every registered tag goes to every charge point (no per-site lists), and a list
longer than ``max_entries`` (the charge point's ``SendLocalListMaxLength``) is refused with
a clear error rather than sent in parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from charging_api.domain.models import IdTag, LocalListState, Principal, id_tag_key, ocpp_datetime
from charging_api.domain.ports import ChargerGateway, Clock, OpsStateStore
from charging_api.errors import ChargingApiError, Forbidden, ValidationFailed

Entry = dict[str, object]


@dataclass(frozen=True, slots=True)
class SyncResult:
    """One charge point's sync: what was sent (``Full``, ``Differential`` or None when up
    to date or not asked) and what it answered (``Accepted``, ``UpToDate``, an error code)."""

    charge_point_id: str
    update_type: str | None
    status: str
    version: int
    entries: int


def entry_of(tag: IdTag) -> Entry:
    """The ``AuthorizationData`` of a registered tag."""
    info: dict[str, object] = {"status": tag.status.value}
    if tag.expiry is not None:
        info["expiryDate"] = ocpp_datetime(tag.expiry)
    if tag.parent_id_tag is not None:
        info["parentIdTag"] = tag.parent_id_tag
    return {"idTag": tag.tag, "idTagInfo": info}


def differential(old: dict[str, Entry], new: dict[str, Entry]) -> list[Entry]:
    """The entries that turn ``old`` into ``new`` (both keyed by id tag key): changed and
    new ones whole, removed ones as ``{"idTag": ...}`` without ``idTagInfo``."""
    changes = [entry for key, entry in sorted(new.items()) if old.get(key) != entry]
    changes.extend({"idTag": old[key]["idTag"]} for key in sorted(old.keys() - new.keys()))
    return changes


class LocalListSync:
    """Computes and sends local list updates (see the module docstring)."""

    def __init__(
        self, state: OpsStateStore, gateway: ChargerGateway, clock: Clock, max_entries: int = 100
    ) -> None:
        self._state = state
        self._gateway = gateway
        self._clock = clock
        self.max_entries = max_entries

    async def wanted(self) -> dict[str, Entry]:
        """The list every charge point should hold now: every registered tag."""
        return {id_tag_key(t.tag): entry_of(t) for t in await self._state.all_id_tags()}

    async def sync(
        self, principal: Principal, charge_point_id: str, full: bool = False
    ) -> SyncResult:
        """Bring one charge point's list up to date (admins)."""
        _admin(principal)
        return await self._sync(charge_point_id, await self.wanted(), full)

    async def sync_all(self, principal: Principal, full: bool = False) -> list[SyncResult]:
        """Every connected charge point; the others are reported ``CHARGE_POINT_OFFLINE``
        and get their update at the next sync."""
        _admin(principal)
        wanted = await self.wanted()
        results = []
        for cp_id in await self._state.charge_point_ids():
            if not self._gateway.is_online(cp_id):
                known = await self._state.get_local_list(cp_id)
                version = known.version if known else 0
                results.append(SyncResult(cp_id, None, "CHARGE_POINT_OFFLINE", version, 0))
                continue
            try:
                results.append(await self._sync(cp_id, wanted, full))
            except ChargingApiError as exc:
                results.append(SyncResult(cp_id, None, exc.code, 0, 0))
        return results

    async def _sync(self, cp_id: str, wanted: dict[str, Entry], full: bool) -> SyncResult:
        known = await self._state.get_local_list(cp_id)
        version = known.version if known else 0
        if known is not None and not full:
            changes = differential(known.entries, wanted)
            if not changes:
                return SyncResult(cp_id, None, "UpToDate", version, 0)
            status = await self._send(cp_id, "Differential", version + 1, changes)
            if status == "Accepted":
                await self._record(cp_id, version + 1, wanted)
                return SyncResult(cp_id, "Differential", status, version + 1, len(changes))
            if status != "VersionMismatch":
                return SyncResult(cp_id, "Differential", status, version, len(changes))
        entries = list(wanted.values())
        status = await self._send(cp_id, "Full", version + 1, entries)
        if status == "Accepted":
            await self._record(cp_id, version + 1, wanted)
            version += 1
        return SyncResult(cp_id, "Full", status, version, len(entries))

    async def _send(self, cp_id: str, kind: str, version: int, entries: list[Entry]) -> str:
        if len(entries) > self.max_entries:
            raise ValidationFailed(
                f"The local list update has {len(entries)} entries; charge points take at "
                f"most {self.max_entries} in one SendLocalList",
                {"chargePointId": cp_id, "entries": len(entries), "limit": self.max_entries},
            )
        payload: dict[str, Any] = {"listVersion": version, "updateType": kind}
        if entries:
            payload["localAuthorizationList"] = entries
        answer = await self._gateway.call(cp_id, "SendLocalList", payload)
        return str(answer.get("status"))

    async def _record(self, cp_id: str, version: int, entries: dict[str, Entry]) -> None:
        await self._state.put_local_list(LocalListState(cp_id, version, entries, self._clock.now()))

    async def record_sent(self, charge_point_id: str, payload: dict[str, Any]) -> None:
        """Keep an update an operator sent by hand (SendLocalList through the operator
        service) that the charge point accepted, so the next differential starts from it."""
        known = await self._state.get_local_list(charge_point_id)
        entries: dict[str, Entry] = (
            {} if known is None or payload.get("updateType") == "Full" else dict(known.entries)
        )
        for entry in payload.get("localAuthorizationList") or ():
            key = id_tag_key(str(entry["idTag"]))
            if "idTagInfo" in entry:
                entries[key] = dict(entry)
            else:
                entries.pop(key, None)
        await self._record(charge_point_id, int(payload["listVersion"]), entries)


def _admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise Forbidden("Only admins may send local authorization lists")

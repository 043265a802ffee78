"""One simulated OCPP 1.6-J charge point with every feature profile a central system can use.

:class:`SimulatedChargePoint` adds to the Core profile of
:class:`~charging_api.simulator.core.CoreChargePoint` (read its docstring for the connection's
life, the start/stop flows and the ``ocpp`` library's rules this module keeps too):

* Firmware Management: ``GetDiagnostics`` answers a file name, then
  ``DiagnosticsStatusNotification`` Uploading -> Uploaded (nothing is uploaded);
  ``UpdateFirmware`` waits for ``retrieveDate``, then ``FirmwareStatusNotification``
  Downloading -> Downloaded -> Installing -> Installed (DownloadFailed for a location that is not
  http(s)/ftp(s)), stops running transactions (reason Reboot) and reboots; the next
  BootNotification carries the new ``firmwareVersion`` (the file name of the location without
  its extension). The steps are ``SimTimings.firmware_step`` / ``diagnostics_step`` apart.
* Local Auth List Management: ``GetLocalListVersion`` (-1 while ``LocalAuthListEnabled`` is
  false), ``SendLocalList`` Full and Differential (see :class:`~.memory.LocalList`); the list
  authorizes without asking the central system when ``LocalPreAuthorize`` is on.
* Reservation: ``ReserveNow`` Accepted (StatusNotification Reserved), Occupied (a transaction,
  or another reservation), Unavailable (inoperative), Rejected (unknown connector, connector 0,
  expiry in the past); the reservation expires at ``expiryDate`` (StatusNotification
  Available), only its id tag can start there and its StartTransaction carries the
  ``reservationId``; ``CancelReservation`` Accepted or Rejected for an unknown id.
* Smart Charging: ``SetChargingProfile`` / ``ClearChargingProfile`` /
  ``GetCompositeSchedule`` over :class:`~.profiles.ProfileStore`; the limit in force caps the
  current the meter reports.
* Remote Trigger: ``TriggerMessage`` Accepted for BootNotification,
  DiagnosticsStatusNotification, FirmwareStatusNotification, Heartbeat, MeterValues (context
  Trigger) and StatusNotification, then that message; Rejected for an unknown connector;
  NotImplemented for anything else.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

from ocpp.routing import after, on
from ocpp.v16 import call
from ocpp.v16 import call_result as result
from ocpp.v16.enums import (
    Action,
    CancelReservationStatus,
    ChargePointErrorCode,
    ChargePointStatus,
    ChargingProfileStatus,
    ClearChargingProfileStatus,
    DiagnosticsStatus,
    FirmwareStatus,
    GetCompositeScheduleStatus,
    MessageTrigger,
    Reason,
    RegistrationStatus,
    ReservationStatus,
    TriggerMessageStatus,
    UpdateStatus,
)

from charging_api.simulator.connector import Reservation, SimConnector, new_connectors
from charging_api.simulator.core import CALL_FAILED, CoreChargePoint, now_iso
from charging_api.simulator.profiles import NOMINAL_VOLTAGE, Profile, parse_time

__all__ = ["SimConnector", "SimulatedChargePoint", "new_connectors"]

log = logging.getLogger("charging_api.simulator")

DOWNLOAD_SCHEMES = ("http", "https", "ftp", "ftps")
FIRMWARE_SUFFIXES = (".bin", ".img", ".fw", ".zip", ".gz", ".tar", ".tgz", ".hex")
TRIGGERS = (
    MessageTrigger.boot_notification,
    MessageTrigger.diagnostics_status_notification,
    MessageTrigger.firmware_status_notification,
    MessageTrigger.heartbeat,
    MessageTrigger.meter_values,
    MessageTrigger.status_notification,
)


def firmware_version_of(location: str) -> str:
    """The version an image at ``location`` installs: its file name without the extension."""
    name = PurePosixPath(urlparse(location).path).name
    while name.lower().endswith(FIRMWARE_SUFFIXES):
        name = name[: name.rindex(".")]
    return (name or "unnamed")[:50]


class SimulatedChargePoint(CoreChargePoint):
    """A simulated charge point answering all six OCPP 1.6 feature profiles (see the module
    docstring); the events a test can await are those of :class:`CoreChargePoint`."""

    def _booted(self) -> None:
        # After the reboot that installed it, the firmware is idle again.
        if self.memory.firmware_status == FirmwareStatus.installed:
            self.memory.firmware_status = FirmwareStatus.idle

    # --- Firmware Management ----------------------------------------------------------------

    @on(Action.get_diagnostics)  # type: ignore[untyped-decorator]
    def on_get_diagnostics(self, location: str, call_unique_id: str, **_: Any) -> Any:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        file_name = f"{self.id}-diagnostics-{stamp}.log"[:255]
        self._later(call_unique_id, lambda: self._spawn(self._upload(location), "diagnostics"))
        return result.GetDiagnostics(file_name=file_name)

    @after(Action.get_diagnostics)  # type: ignore[untyped-decorator]
    def after_get_diagnostics(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)

    async def _upload(self, location: str) -> None:
        log.info("%s uploading diagnostics to %s (simulated)", self.id, location)
        await self._diagnostics_status(DiagnosticsStatus.uploading)
        await asyncio.sleep(self.timings.diagnostics_step)
        await self._diagnostics_status(DiagnosticsStatus.uploaded)
        self.memory.diagnostics_status = DiagnosticsStatus.idle

    async def _diagnostics_status(self, status: str) -> None:
        self.memory.diagnostics_status = status
        await self.call(call.DiagnosticsStatusNotification(status=status), suppress=False)

    @on(Action.update_firmware)  # type: ignore[untyped-decorator]
    def on_update_firmware(
        self, location: str, retrieve_date: str, call_unique_id: str, **_: Any
    ) -> Any:
        self._later(
            call_unique_id,
            lambda: self._spawn(self._update_firmware(location, retrieve_date), "firmware"),
        )
        return result.UpdateFirmware()

    @after(Action.update_firmware)  # type: ignore[untyped-decorator]
    def after_update_firmware(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)

    async def _update_firmware(self, location: str, retrieve_date: str) -> None:
        try:
            wait = (parse_time(retrieve_date) - datetime.now(UTC)).total_seconds()
        except ValueError:
            wait = 0.0
        if wait > 0:
            await asyncio.sleep(wait)
        step = self.timings.firmware_step
        await self._firmware_status(FirmwareStatus.downloading)
        await asyncio.sleep(step)
        if urlparse(location).scheme.lower() not in DOWNLOAD_SCHEMES:
            await self._firmware_status(FirmwareStatus.download_failed)
            self.memory.firmware_status = FirmwareStatus.idle
            return
        await self._firmware_status(FirmwareStatus.downloaded)
        await asyncio.sleep(step)
        await self._firmware_status(FirmwareStatus.installing)
        await asyncio.sleep(step)
        self.memory.firmware_version = firmware_version_of(location)
        await self._firmware_status(FirmwareStatus.installed)
        log.info("%s firmware %s installed", self.id, self.memory.firmware_version)
        await self._reboot(Reason.reboot)

    async def _firmware_status(self, status: str) -> None:
        self.memory.firmware_status = status
        await self.call(call.FirmwareStatusNotification(status=status), suppress=False)

    # --- Local Auth List Management ---------------------------------------------------------

    @on(Action.get_local_list_version)  # type: ignore[untyped-decorator]
    def on_get_local_list_version(self, **_: Any) -> Any:
        if not self.config.flag("LocalAuthListEnabled"):
            return result.GetLocalListVersion(list_version=-1)
        return result.GetLocalListVersion(list_version=self.memory.local_list.version)

    @on(Action.send_local_list)  # type: ignore[untyped-decorator]
    def on_send_local_list(
        self,
        list_version: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> Any:
        if not self.config.flag("LocalAuthListEnabled"):
            return result.SendLocalList(status=UpdateStatus.not_supported)
        items = local_authorization_list or []
        if len(items) > self.config.integer("SendLocalListMaxLength"):
            return result.SendLocalList(status=UpdateStatus.failed)
        status = self.memory.local_list.update(list_version, update_type, items)
        log.info("%s SendLocalList %s v%d: %s", self.id, update_type, list_version, status)
        return result.SendLocalList(status=status)

    # --- Reservation ------------------------------------------------------------------------

    @on(Action.reserve_now)  # type: ignore[untyped-decorator]
    def on_reserve_now(
        self,
        connector_id: int,
        expiry_date: str,
        id_tag: str,
        reservation_id: int,
        call_unique_id: str,
        parent_id_tag: str | None = None,
        **_: Any,
    ) -> Any:
        connector = self.connectors.get(connector_id)
        try:
            expiry = parse_time(expiry_date)
        except ValueError:
            return result.ReserveNow(status=ReservationStatus.rejected)
        if connector is None or expiry <= datetime.now(UTC):
            return result.ReserveNow(status=ReservationStatus.rejected)
        if not connector.operative:
            return result.ReserveNow(status=ReservationStatus.unavailable)
        held = connector.reservation
        if (
            connector.busy
            or connector.stopping
            or connector.status not in (ChargePointStatus.available, ChargePointStatus.reserved)
            or (held is not None and held.reservation_id != reservation_id)
        ):
            return result.ReserveNow(status=ReservationStatus.occupied)
        moved = self._drop_reservation(reservation_id)  # the same id elsewhere is replaced
        connector.reservation = Reservation(reservation_id, id_tag, expiry, parent_id_tag)

        def report() -> None:
            for n in {*moved, connector_id}:
                self._spawn(self._report_idle(n), f"reservation:{n}")
            self._arm_expiry(connector)

        self._later(call_unique_id, report)
        log.info("%s connector %d reserved for %s", self.id, connector_id, id_tag)
        return result.ReserveNow(status=ReservationStatus.accepted)

    @after(Action.reserve_now)  # type: ignore[untyped-decorator]
    def after_reserve_now(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)

    @on(Action.cancel_reservation)  # type: ignore[untyped-decorator]
    def on_cancel_reservation(self, reservation_id: int, call_unique_id: str, **_: Any) -> Any:
        freed = self._drop_reservation(reservation_id)
        if not freed:
            return result.CancelReservation(status=CancelReservationStatus.rejected)

        def report() -> None:
            for n in freed:
                self._spawn(self._report_idle(n), f"reservation:{n}")

        self._later(call_unique_id, report)
        return result.CancelReservation(status=CancelReservationStatus.accepted)

    @after(Action.cancel_reservation)  # type: ignore[untyped-decorator]
    def after_cancel_reservation(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)

    def _drop_reservation(self, reservation_id: int) -> list[int]:
        """Remove the reservation with this id; the connectors it freed."""
        freed = []
        for n, connector in self.connectors.items():
            held = connector.reservation
            if held is not None and held.reservation_id == reservation_id:
                connector.reservation = None
                freed.append(n)
        return freed

    def _arm_expiry(self, connector: SimConnector) -> None:
        reservation = connector.reservation
        if reservation is not None:
            n = connector.connector_id
            self._spawn(self._expire(connector, reservation), f"expiry:{n}")

    async def _expire(self, connector: SimConnector, reservation: Reservation) -> None:
        wait = (reservation.expiry - datetime.now(UTC)).total_seconds()
        await asyncio.sleep(max(wait, 0.0))
        if connector.reservation is reservation:
            log.info("%s reservation %d expired", self.id, reservation.reservation_id)
            connector.reservation = None
            await self._report_idle(connector.connector_id)

    # --- Smart Charging ---------------------------------------------------------------------

    @on(Action.set_charging_profile)  # type: ignore[untyped-decorator]
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> Any:
        connector = self.connectors.get(connector_id)
        if connector_id != 0 and connector is None:
            return result.SetChargingProfile(status=ChargingProfileStatus.rejected)
        try:
            profile = Profile.from_request(connector_id, cs_charging_profiles, datetime.now(UTC))
        except (KeyError, TypeError, ValueError) as exc:
            log.info("%s SetChargingProfile rejected: %r", self.id, exc)
            return result.SetChargingProfile(status=ChargingProfileStatus.rejected)
        running = connector.transaction_id if connector is not None else None
        status = self.memory.profiles.install(profile, running)
        log.info(
            "%s SetChargingProfile %s on %d: %s", self.id, profile.purpose, connector_id, status
        )
        self._apply_limits()
        return result.SetChargingProfile(status=status)

    @on(Action.clear_charging_profile)  # type: ignore[untyped-decorator]
    def on_clear_charging_profile(self, **request: Any) -> Any:
        cleared = self.memory.profiles.clear(
            profile_id=request.get("id"),
            connector_id=request.get("connector_id"),
            purpose=request.get("charging_profile_purpose"),
            stack_level=request.get("stack_level"),
        )
        self._apply_limits()
        status = (
            ClearChargingProfileStatus.accepted if cleared else ClearChargingProfileStatus.unknown
        )
        return result.ClearChargingProfile(status=status)

    def _apply_limits(self) -> None:
        """Hold the current of every charging connector under its (new) limit at once."""
        for connector in self.connectors.values():
            if connector.transaction_id is not None:
                connector.limit_a = self._limit(connector)
                connector.apply_limit()

    @on(Action.get_composite_schedule)  # type: ignore[untyped-decorator]
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        connector = self.connectors.get(connector_id)
        if connector_id != 0 and connector is None:
            return result.GetCompositeSchedule(status=GetCompositeScheduleStatus.rejected)
        start = datetime.now(UTC).replace(microsecond=0)
        ceiling = (
            connector.max_current_a
            if connector is not None
            else max(c.max_current_a for c in self.connectors.values())
        )
        periods = self.memory.profiles.composite(
            connector_id,
            start,
            int(duration),
            ceiling,
            connector.transaction_id if connector is not None else None,
            connector.started_at if connector is not None else None,
        )
        unit = charging_rate_unit or "A"
        scale = NOMINAL_VOLTAGE if unit == "W" else 1.0
        schedule = {
            "duration": int(duration),
            "startSchedule": now_iso(start),
            "chargingRateUnit": unit,
            "chargingSchedulePeriod": [
                {"startPeriod": offset, "limit": round(amps * scale, 1)} for offset, amps in periods
            ],
        }
        return result.GetCompositeSchedule(
            status=GetCompositeScheduleStatus.accepted,
            connector_id=connector_id,
            schedule_start=now_iso(start),
            charging_schedule=schedule,
        )

    # --- Remote Trigger ---------------------------------------------------------------------

    @on(Action.trigger_message)  # type: ignore[untyped-decorator]
    def on_trigger_message(
        self, requested_message: str, call_unique_id: str, connector_id: int | None = None, **_: Any
    ) -> Any:
        if requested_message not in TRIGGERS:
            return result.TriggerMessage(status=TriggerMessageStatus.not_implemented)
        if connector_id not in (None, 0) and connector_id not in self.connectors:
            return result.TriggerMessage(status=TriggerMessageStatus.rejected)
        self._later(
            call_unique_id,
            lambda: self._spawn(self._triggered(requested_message, connector_id), "trigger"),
        )
        return result.TriggerMessage(status=TriggerMessageStatus.accepted)

    @after(Action.trigger_message)  # type: ignore[untyped-decorator]
    def after_trigger_message(self, call_unique_id: str, **_: Any) -> None:
        self._run_follow_up(call_unique_id)

    async def _triggered(self, message: str, connector_id: int | None) -> None:
        """Send the message a TriggerMessage asked for."""
        targets = (
            [self.connectors[connector_id]]
            if connector_id in self.connectors
            else list(self.connectors.values())
        )
        try:
            if message == MessageTrigger.boot_notification:
                answer = await self.call(self._boot_notification(), suppress=False)
                if answer.status == RegistrationStatus.accepted and answer.interval > 0:
                    self._set_heartbeat(float(answer.interval))
            elif message == MessageTrigger.heartbeat:
                await self.call(call.Heartbeat(), suppress=False)
            elif message == MessageTrigger.diagnostics_status_notification:
                await self._diagnostics_status(self.memory.diagnostics_status)
            elif message == MessageTrigger.firmware_status_notification:
                await self._firmware_status(self.memory.firmware_status)
            elif message == MessageTrigger.meter_values:
                for connector in targets:
                    await self._send_meter_values(connector, "Trigger")
            elif message == MessageTrigger.status_notification and connector_id == 0:
                await self._charge_point_status()
            else:
                for connector in targets:
                    await self._status(connector, connector.status)
        except CALL_FAILED as exc:
            log.warning("%s triggered %s failed: %r", self.id, message, exc)

    async def _charge_point_status(self) -> None:
        """StatusNotification for connector 0, the charge point as a whole."""
        operative = any(c.operative for c in self.connectors.values())
        await self.call(
            call.StatusNotification(
                connector_id=0,
                error_code=ChargePointErrorCode.no_error,
                status=ChargePointStatus.available if operative else ChargePointStatus.unavailable,
                timestamp=now_iso(),
            ),
            suppress=False,
        )

"""OCPP 1.6 CALLs a charge point sends us: translate the payload to a core call and the core's
answer back to a payload. No decisions here; those live in :class:`ChargingService`.

Payloads arrive already schema-validated (``schemas.validate``), so required keys are present
and typed as the OCA schema says.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from charging_api.domain.charging import ChargingService
from charging_api.domain.models import ChargePointInfo, DeviceJob, IdTagVerdict, MeterSample
from charging_api.ocpp.meter import meter_value_to_sample, parse_ocpp_datetime
from charging_api.timefmt import format_utc

Payload = dict[str, Any]
Handler = Callable[[ChargingService, str, Payload], Awaitable[Payload]]


def _id_tag_info(verdict: IdTagVerdict) -> Payload:
    info: Payload = {"status": verdict.status.value}
    if verdict.expiry is not None:
        info["expiryDate"] = format_utc(verdict.expiry)
    return info


async def boot_notification(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    verdict = await service.on_boot(
        cp_id,
        ChargePointInfo(
            vendor=p["chargePointVendor"],
            model=p["chargePointModel"],
            serial_number=p.get("chargePointSerialNumber") or p.get("chargeBoxSerialNumber"),
            firmware_version=p.get("firmwareVersion"),
        ),
    )
    return {
        "status": verdict.status,
        "currentTime": format_utc(verdict.current_time),
        "interval": verdict.interval_s,
    }


async def heartbeat(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    return {"currentTime": format_utc(service.on_heartbeat(cp_id))}


async def status_notification(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    timestamp = p.get("timestamp")
    await service.on_status(
        cp_id,
        p["connectorId"],
        p["status"],
        p["errorCode"],
        parse_ocpp_datetime(timestamp) if timestamp else None,
        info=p.get("info"),
        vendor_error_code=p.get("vendorErrorCode"),
    )
    return {}


async def authorize(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    return {"idTagInfo": _id_tag_info(await service.on_authorize(cp_id, p["idTag"]))}


async def start_transaction(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    """Connector 0 is the charge point itself, where no transaction can run: the ValueError
    is answered with CALLERROR PropertyConstraintViolation and nothing is stored."""
    if p["connectorId"] < 1:
        raise ValueError(
            f"StartTransaction connectorId must be 1 or more, not {p['connectorId']}: "
            "connector 0 is the charge point itself"
        )
    transaction_id, verdict = await service.on_start_transaction(
        cp_id, p["connectorId"], p["idTag"], p["meterStart"], parse_ocpp_datetime(p["timestamp"])
    )
    return {"transactionId": transaction_id, "idTagInfo": _id_tag_info(verdict)}


async def stop_transaction(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    samples: list[MeterSample] = []
    for meter_value in p.get("transactionData") or ():
        sample = meter_value_to_sample(meter_value)
        if sample is not None:
            samples.append(sample)
    verdict = await service.on_stop_transaction(
        cp_id,
        p["transactionId"],
        p["meterStop"],
        parse_ocpp_datetime(p["timestamp"]),
        p.get("reason"),
        p.get("idTag"),
        samples,
    )
    return {"idTagInfo": _id_tag_info(verdict)} if verdict is not None else {}


async def meter_values(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    samples: list[MeterSample] = []
    for meter_value in p["meterValue"]:
        sample = meter_value_to_sample(meter_value)
        if sample is not None:
            samples.append(sample)
    await service.on_meter_values(cp_id, p["connectorId"], p.get("transactionId"), samples)
    return {}


async def data_transfer(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    """Vendors on ``DATA_TRANSFER_VENDORS``: Accepted (and published to admins); any other
    vendor: UnknownVendorId, as OCTT TC_064 expects."""
    status = await service.on_data_transfer(cp_id, p["vendorId"], p.get("messageId"), p.get("data"))
    return {"status": status}


async def firmware_status(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    await service.on_device_status(cp_id, DeviceJob.FIRMWARE, p["status"])
    return {}


async def diagnostics_status(service: ChargingService, cp_id: str, p: Payload) -> Payload:
    await service.on_device_status(cp_id, DeviceJob.DIAGNOSTICS, p["status"])
    return {}


HANDLERS: dict[str, Handler] = {
    "BootNotification": boot_notification,
    "Heartbeat": heartbeat,
    "StatusNotification": status_notification,
    "Authorize": authorize,
    "StartTransaction": start_transaction,
    "StopTransaction": stop_transaction,
    "MeterValues": meter_values,
    "DataTransfer": data_transfer,
    "DiagnosticsStatusNotification": diagnostics_status,
    "FirmwareStatusNotification": firmware_status,
}

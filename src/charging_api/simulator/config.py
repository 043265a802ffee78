"""The configuration keys of a simulated charge point (OCPP 1.6 section 9), as data.

:class:`Configuration` holds the standard keys of the six feature profiles the simulator
implements, each with a value and a readonly flag, and decides ChangeConfiguration the way a
charger does: an unknown key is ``NotSupported``, a readonly key ``Rejected``, a value of the
wrong type (not an integer, not ``true``/``false``, a measurand the meter does not have)
``Rejected``, anything else ``Accepted`` and stored. Keys match case-insensitively and are
answered in their standard spelling.

Which changes take effect is the charge point's business (it reads the typed accessors after an
accepted change); this module only keeps values. Pure logic, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["SAMPLED_MEASURANDS", "ConfigKey", "Configuration"]

#: The measurands the simulated meter can report (see ``SimConnector.sampled_values``).
SAMPLED_MEASURANDS = (
    "Energy.Active.Import.Register",
    "Power.Active.Import",
    "Voltage",
    "Current.Import",
    "SoC",
)

FEATURE_PROFILES = (
    "Core,FirmwareManagement,LocalAuthListManagement,Reservation,SmartCharging,RemoteTrigger"
)
MAX_KEYS = 60


@dataclass(slots=True)
class ConfigKey:
    """One key: its value as the wire carries it (a string) and whether it can be changed."""

    key: str
    value: str
    readonly: bool
    check: Callable[[str], bool]


def _integer(minimum: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        try:
            return int(value.strip()) >= minimum
        except ValueError:
            return False

    return check


def _boolean(value: str) -> bool:
    return value.strip().lower() in ("true", "false")


def _measurands(value: str) -> bool:
    items = [item.strip() for item in value.split(",")]
    if value.strip() == "":
        return True
    return all(item in SAMPLED_MEASURANDS for item in items) and len(items) <= len(
        SAMPLED_MEASURANDS
    )


def _text(value: str) -> bool:
    return len(value) <= 500


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class Configuration:
    """The key set of one charge point; survives reconnects (it lives in ``ChargerMemory``)."""

    def __init__(
        self, *, connectors: int, meter_interval: float, heartbeat_interval: float
    ) -> None:
        rw, ro = False, True
        all_measurands = ",".join(SAMPLED_MEASURANDS)
        rows: list[tuple[str, str, bool, Callable[[str], bool]]] = [
            # Core
            ("AllowOfflineTxForUnknownId", "false", rw, _boolean),
            ("AuthorizationCacheEnabled", "true", rw, _boolean),
            ("AuthorizeRemoteTxRequests", "true", rw, _boolean),
            ("ClockAlignedDataInterval", "0", rw, _integer(0)),
            ("ConnectionTimeOut", "60", rw, _integer(1)),
            ("GetConfigurationMaxKeys", str(MAX_KEYS), ro, _text),
            ("HeartbeatInterval", _number(heartbeat_interval), rw, _integer(1)),
            ("LocalAuthorizeOffline", "true", rw, _boolean),
            ("LocalPreAuthorize", "false", rw, _boolean),
            ("MeterValuesAlignedData", "Energy.Active.Import.Register", rw, _measurands),
            ("MeterValuesSampledData", all_measurands, rw, _measurands),
            ("MeterValuesSampledDataMaxLength", str(len(SAMPLED_MEASURANDS)), ro, _text),
            ("MeterValueSampleInterval", _number(meter_interval), rw, _integer(0)),
            ("NumberOfConnectors", str(connectors), ro, _text),
            ("ResetRetries", "3", rw, _integer(0)),
            ("ConnectorPhaseRotation", "NotApplicable", rw, _text),
            ("StopTransactionOnEVSideDisconnect", "true", rw, _boolean),
            ("StopTransactionOnInvalidId", "true", rw, _boolean),
            ("StopTxnAlignedData", "", rw, _measurands),
            ("StopTxnSampledData", "Energy.Active.Import.Register", rw, _measurands),
            ("SupportedFeatureProfiles", FEATURE_PROFILES, ro, _text),
            ("TransactionMessageAttempts", "3", rw, _integer(0)),
            ("TransactionMessageRetryInterval", "60", rw, _integer(0)),
            ("UnlockConnectorOnEVSideDisconnect", "true", rw, _boolean),
            ("WebSocketPingInterval", "0", rw, _integer(0)),
            # Local Auth List Management
            ("LocalAuthListEnabled", "true", rw, _boolean),
            ("LocalAuthListMaxLength", "100", ro, _text),
            ("SendLocalListMaxLength", "100", ro, _text),
            # Reservation
            ("ReserveConnectorZeroSupported", "false", ro, _text),
            # Smart Charging
            ("ChargeProfileMaxStackLevel", "10", ro, _text),
            ("ChargingScheduleAllowedChargingRateUnit", "Current,Power", ro, _text),
            ("ChargingScheduleMaxPeriods", "24", ro, _text),
            ("ConnectorSwitch3to1PhaseSupported", "false", ro, _text),
            ("MaxChargingProfilesInstalled", "10", ro, _text),
        ]
        self._keys = {
            key.lower(): ConfigKey(key, value, ro_, check) for key, value, ro_, check in rows
        }

    # --- the two operations -----------------------------------------------------------------

    def get(self, keys: Iterable[str] | None) -> tuple[list[dict[str, object]], list[str]]:
        """GetConfiguration: (known keys in wire form, unknown key names); all keys when None."""
        wanted = list(keys) if keys else None
        if wanted is None:
            return [self._wire(k) for k in self._keys.values()], []
        known: list[dict[str, object]] = []
        unknown: list[str] = []
        for name in wanted:
            entry = self._keys.get(name.lower())
            if entry is None:
                unknown.append(name)
            else:
                known.append(self._wire(entry))
        return known, unknown

    def change(self, key: str, value: str) -> str:
        """ChangeConfiguration: the status to answer; the value is stored when Accepted."""
        entry = self._keys.get(key.lower())
        if entry is None:
            return "NotSupported"
        if entry.readonly or not entry.check(value):
            return "Rejected"
        entry.value = value.strip()
        if entry.check is _boolean:
            entry.value = entry.value.lower()
        return "Accepted"

    @staticmethod
    def _wire(entry: ConfigKey) -> dict[str, object]:
        return {"key": entry.key, "readonly": entry.readonly, "value": entry.value}

    # --- typed reads ------------------------------------------------------------------------

    def value(self, key: str) -> str:
        return self._keys[key.lower()].value

    def flag(self, key: str) -> bool:
        return self.value(key) == "true"

    def integer(self, key: str) -> int:
        return int(self.value(key))

    def set(self, key: str, value: float | str) -> None:
        """Store a value the charge point decided itself (e.g. the interval a boot answer gave)."""
        self._keys[key.lower()].value = value if isinstance(value, str) else _number(value)

    def canonical(self, key: str) -> str | None:
        """The standard spelling of ``key``, or None when it is not a key of this charge point."""
        entry = self._keys.get(key.lower())
        return entry.key if entry else None

    @property
    def sampled_measurands(self) -> tuple[str, ...]:
        raw = self.value("MeterValuesSampledData")
        return tuple(m.strip() for m in raw.split(",") if m.strip())

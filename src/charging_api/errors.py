"""One error tree for the whole service.

Every error a user can meet is a subclass of :class:`ChargingApiError` with a stable ``code``.
The app door turns them into ``error`` objects on the wire (``{code, message, details}``);
the charge point door never sees them (OCPP has its own error names, see ``ocpp.framing``).
Library exceptions are translated into these once, at the edge that imports the library.

::

    ChargingApiError
    ├── ProtocolViolation            the request itself is wrong (answered with an ``error`` message)
    │   ├── InvalidMessage           INVALID_MESSAGE: not JSON, not an object, bad envelope
    │   ├── UnknownMessageType       UNKNOWN_MESSAGE_TYPE
    │   ├── ValidationFailed         VALIDATION_ERROR: a field is missing or has the wrong type
    │   ├── NotAuthenticated         NOT_AUTHENTICATED
    │   ├── RateLimited              RATE_LIMITED
    │   ├── TooManyPending           TOO_MANY_PENDING
    │   └── ResyncRequired           RESYNC_REQUIRED
    ├── AuthenticationFailed         AUTHENTICATION_FAILED (bad signature, wrong algorithm, no user claim)
    │   └── TokenExpired             TOKEN_EXPIRED
    ├── Forbidden                    FORBIDDEN: not your id tag, not your transaction, not your user id
    ├── NoIdTag                      NO_ID_TAG: the user has no id tag to charge with
    ├── ChargePointNotFound          CHARGE_POINT_NOT_FOUND
    ├── ConnectorNotFound            CONNECTOR_NOT_FOUND
    ├── ConnectorBusy                CONNECTOR_BUSY: a start is already under way on that connector
    ├── ConnectorReserved            CONNECTOR_RESERVED: reserved for another id tag (or taken)
    ├── ReservationNotFound          RESERVATION_NOT_FOUND: unknown, ended, or not the asker's
    ├── TransactionNotFound          TRANSACTION_NOT_FOUND
    ├── TransactionNotActive         TRANSACTION_NOT_ACTIVE: already stopped
    ├── ChargePointOffline           CHARGE_POINT_OFFLINE
    ├── ChargePointTimeout           CHARGE_POINT_TIMEOUT: no answer, or no StartTransaction, in time
    ├── ChargePointRejected          CHARGE_POINT_REJECTED: the charge point answered Rejected
    ├── ChargePointError             CHARGE_POINT_ERROR: the charge point answered a CALLERROR
    ├── ChargePointBusy              CHARGE_POINT_BUSY: too many commands queued for one charge point
    ├── InvalidPayload               INVALID_PAYLOAD: an operation's OCPP payload breaks its schema
    ├── UnknownOperation             UNKNOWN_OPERATION: not one of OCPP 1.6's central-system operations
    ├── TransactionRunning           TRANSACTION_RUNNING: refused while a transaction runs (force)
    ├── ConnectorUnavailable         CONNECTOR_UNAVAILABLE: an operator took the connector out of service
    ├── MethodNotAllowed             METHOD_NOT_ALLOWED: an HTTP route asked with a method it lacks
    ├── ServiceUnavailable           SERVICE_UNAVAILABLE: a shared part of a cluster (Redis) does
    │                                not answer; nothing was done, retry (``details.retryable``)
    └── InternalError                INTERNAL_ERROR: a bug; logged with a trace, never leaked

The HTTP routes (``/health``, ``/api/stats``) answer with the same codes, in
``{"success": false, "error": {code, message}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ChargingApiError(Exception):
    """Root of every error the service reports to a user."""

    code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object of the app protocol."""
        wire: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            wire["details"] = self.details
        return wire


class ProtocolViolation(ChargingApiError):
    """The request is not one we can act on; answered with an ``error`` message."""

    code = "INVALID_MESSAGE"


class InvalidMessage(ProtocolViolation):
    code = "INVALID_MESSAGE"


class UnknownMessageType(ProtocolViolation):
    code = "UNKNOWN_MESSAGE_TYPE"


class ValidationFailed(ProtocolViolation):
    code = "VALIDATION_ERROR"


class NotAuthenticated(ProtocolViolation):
    code = "NOT_AUTHENTICATED"

    def __init__(self, message: str = "Client not authenticated") -> None:
        super().__init__(message, {"requiredAction": "Send auth_request with valid JWT token"})


class RateLimited(ProtocolViolation):
    code = "RATE_LIMITED"


class TooManyPending(ProtocolViolation):
    code = "TOO_MANY_PENDING"


class ResyncRequired(ProtocolViolation):
    code = "RESYNC_REQUIRED"


class AuthenticationFailed(ChargingApiError):
    code = "AUTHENTICATION_FAILED"


class TokenExpired(AuthenticationFailed):
    code = "TOKEN_EXPIRED"


class Forbidden(ChargingApiError):
    code = "FORBIDDEN"


class NoIdTag(ChargingApiError):
    code = "NO_ID_TAG"


class ChargePointNotFound(ChargingApiError):
    code = "CHARGE_POINT_NOT_FOUND"


class ConnectorNotFound(ChargingApiError):
    code = "CONNECTOR_NOT_FOUND"


class ConnectorBusy(ChargingApiError):
    code = "CONNECTOR_BUSY"


class ConnectorReserved(ChargingApiError):
    code = "CONNECTOR_RESERVED"


class ReservationNotFound(ChargingApiError):
    code = "RESERVATION_NOT_FOUND"


class TransactionNotFound(ChargingApiError):
    code = "TRANSACTION_NOT_FOUND"


class TransactionNotActive(ChargingApiError):
    code = "TRANSACTION_NOT_ACTIVE"


class ChargePointOffline(ChargingApiError):
    code = "CHARGE_POINT_OFFLINE"


class ChargePointTimeout(ChargingApiError):
    code = "CHARGE_POINT_TIMEOUT"


class ChargePointRejected(ChargingApiError):
    code = "CHARGE_POINT_REJECTED"


class ChargePointError(ChargingApiError):
    code = "CHARGE_POINT_ERROR"


class ChargePointBusy(ChargingApiError):
    code = "CHARGE_POINT_BUSY"


class InvalidPayload(ChargingApiError):
    """An operation's request payload breaks its OCPP 1.6 schema; nothing was sent.
    ``details.schemaError`` names the rule, ``details.ocppErrorCode`` the OCPP-J error name."""

    code = "INVALID_PAYLOAD"


class UnknownOperation(ChargingApiError):
    """Not one of the 19 operations a central system sends in OCPP 1.6."""

    code = "UNKNOWN_OPERATION"


class TransactionRunning(ChargingApiError):
    """An operation that would cut a running transaction short (a Reset), asked without
    ``force``."""

    code = "TRANSACTION_RUNNING"


class ConnectorUnavailable(ChargingApiError):
    """The connector was made Inoperative by an operator (ChangeAvailability): no app start."""

    code = "CONNECTOR_UNAVAILABLE"


class MethodNotAllowed(ChargingApiError):
    code = "METHOD_NOT_ALLOWED"


class ServiceUnavailable(ChargingApiError):
    """The cluster's Redis does not answer: the request was not carried out and may be retried
    as it is (``details.retryable`` is true; the nodes reconnect by themselves)."""

    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message, {"retryable": True, **(details or {})})


class InternalError(ChargingApiError):
    code = "INTERNAL_ERROR"


def all_error_codes() -> dict[str, type[ChargingApiError]]:
    """Every code on the wire, for docs and the test that keeps docs/protocol.md true."""
    found: dict[str, type[ChargingApiError]] = {}
    stack: list[type[ChargingApiError]] = [ChargingApiError]
    while stack:
        cls = stack.pop()
        found.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    return found

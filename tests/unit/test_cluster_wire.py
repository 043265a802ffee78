"""What crosses Redis between nodes comes back as it left: errors, principals, results."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from charging_api.cluster.wire import (
    decode,
    encode,
    error_from_wire,
    error_to_wire,
    principal_from_wire,
    principal_to_wire,
)
from charging_api.domain.charging import StartOutcome, StopOutcome
from charging_api.domain.models import (
    ClosedBy,
    IdTagStatus,
    Principal,
    Reservation,
    ReservationStatus,
    Role,
    Transaction,
)
from charging_api.domain.sessions import Limits
from charging_api.errors import (
    ChargingApiError,
    InternalError,
    NotAuthenticated,
    ServiceUnavailable,
    all_error_codes,
)

AT = datetime(2026, 11, 26, 12, 0, 1, 500_000, tzinfo=UTC)


def through_json(value: object) -> object:
    return orjson.loads(orjson.dumps(value))


@pytest.mark.parametrize("code", sorted(all_error_codes()))
def test_every_error_code_comes_back_as_its_class_with_message_and_details(code: str) -> None:
    cls = all_error_codes()[code]
    sent = cls.__new__(cls)
    ChargingApiError.__init__(sent, f"{code} happened", {"chargePointId": "CP1", "n": 2})
    received = error_from_wire(through_json(error_to_wire(sent)))  # type: ignore[arg-type]
    assert type(received) is cls
    assert (received.code, received.message, received.details) == (
        code,
        f"{code} happened",
        {"chargePointId": "CP1", "n": 2},
    )


def test_errors_with_their_own_constructors_keep_what_the_sender_said() -> None:
    retry = error_from_wire(through_json(error_to_wire(ServiceUnavailable("Redis down"))))  # type: ignore[arg-type]
    assert isinstance(retry, ServiceUnavailable) and retry.details == {"retryable": True}
    auth = error_from_wire(through_json(error_to_wire(NotAuthenticated())))  # type: ignore[arg-type]
    assert isinstance(auth, NotAuthenticated) and auth.to_wire() == NotAuthenticated().to_wire()


def test_an_unknown_code_from_a_newer_node_is_an_internal_error_naming_it() -> None:
    error = error_from_wire({"code": "FROM_THE_FUTURE", "message": "new", "details": {}})
    assert isinstance(error, InternalError)
    assert error.details == {"code": "FROM_THE_FUTURE"}


def test_a_principal_round_trips() -> None:
    principal = Principal("alice", Role.ADMIN, frozenset({"TAG-B", "TAG-A"}), AT)
    assert principal_from_wire(through_json(principal_to_wire(principal))) == principal  # type: ignore[arg-type]
    plain = Principal("bob")
    assert principal_from_wire(through_json(principal_to_wire(plain))) == plain  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        StartOutcome(7, 1, "Accepted", "Charging started successfully", 3),
        StopOutcome(7, "Accepted", "Charging stopped successfully"),
        Transaction(7, "CP1", 1, "TAG-A", "alice", 1000, AT),
        Transaction(
            8,
            "CP1",
            2,
            "TAG-B",
            None,
            0,
            AT,
            IdTagStatus.BLOCKED,
            1500,
            AT,
            "Other",
            ClosedBy.ADMIN,
            "done",
        ),
        Reservation(
            3, "CP1", 1, "TAG-A", "alice", AT, AT, "alice", None, ReservationStatus.USED, 7, AT
        ),
        Limits(7.5, None, Decimal("12.30"), 90.0),
    ],
)
def test_results_round_trip_through_json(value: object) -> None:
    assert decode(type(value), through_json(encode(value))) == value  # type: ignore[arg-type]

"""Hostile charge points against the real server on ``/ocpp/{id}``.

Sections: Security Profiles 1 and 2 (Basic auth at the upgrade, then over TLS); production
mode; impersonation; a second connection with the same id; malformed OCPP-J, frame after frame
on one socket; oversized frames, floods (with and without the per-connection rate limit) and a
slow-loris upgrade; a hypothesis property test that throws generated hostile frames over real
sockets. After the attacks the server still answers ``/health``, a normal charge point still
works, and the database holds exactly the transactions it should.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
import websockets
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from ocpp.v16 import call
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from charging_api.domain import access
from charging_api.domain.models import IdTag
from charging_api.ocpp.handlers import HANDLERS
from charging_api.ocpp.server import OcppServer
from tests.conftest import RunningServer, app_client, make_settings, running_server
from tests.e2e.test_ocpp_conformance import (
    BOOT,
    RawChargePoint,
    all_transactions,
    raw_charge_point,
    stamp,
)
from tests.peers.py_charge_point import connected_charge_point
from tests.security.certs import CertFiles, make_self_signed

# ----------------------------------------------------------------------------- helpers


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def refused_status(url: str, **kwargs: Any) -> int:
    """The HTTP status of a refused upgrade (fails the test if the upgrade succeeds)."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(
            url, subprotocols=[websockets.Subprotocol("ocpp1.6")], open_timeout=10, **kwargs
        ):
            pass
    return refused.value.response.status_code


async def health(server: RunningServer) -> dict[str, Any]:
    """GET /health over a raw TCP connection; the decoded JSON body of a 200."""
    parts = urlsplit(server.http_url)
    assert parts.hostname is not None and parts.port is not None
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    decoded: dict[str, Any] = orjson.loads(body)
    return decoded


async def assert_still_serving(server: RunningServer) -> None:
    """/health answers and a fresh, normal charge point boots and heartbeats."""
    assert (await health(server))["status"] == "healthy"
    async with connected_charge_point(server.ocpp_url, f"CP-OK-{uuid.uuid4().hex[:8]}") as cp:
        assert (await cp.call(call.Heartbeat(), suppress=False)).current_time.endswith("Z")


async def transaction_ids(server: RunningServer) -> set[int]:
    return {tx.id for tx in await all_transactions(server)}


@contextlib.asynccontextmanager
async def extra_ocpp_server(server: RunningServer, **kwargs: Any) -> AsyncIterator[str]:
    """A second OCPP door on the same core (service, gateway, database) with its own limits;
    yields its base URL (``ws://127.0.0.1:PORT/ocpp``)."""
    door = OcppServer(server.app.service, server.app.gateway, **kwargs)
    port = await door.start("127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{port}/ocpp"
    finally:
        await door.shutdown()


async def replies_until(cp: RawChargePoint, probe_id: str) -> list[list[Any]]:
    """Frames received before the answer to ``probe_id`` (bounded: 10 frames, 10 s each)."""
    before: list[list[Any]] = []
    for _ in range(10):
        frame = await cp.recv()
        if isinstance(frame, list) and len(frame) > 1 and frame[1] == probe_id:
            assert frame[0] == 3, frame
            return before
        before.append(frame)
    raise AssertionError(f"no answer to the probe; got {before}")


async def probe(cp: RawChargePoint) -> list[list[Any]]:
    """Send a Heartbeat and return what arrived before its answer (which proves the
    connection lives)."""
    probe_id = f"probe-{uuid.uuid4().hex[:24]}"
    await cp.send([2, probe_id, "Heartbeat", {}])
    return await replies_until(cp, probe_id)


# ----------------------------------------------------------------------------- profile 1


async def register(server: RunningServer, cp_id: str, password: str | None) -> None:
    hashed = access.hash_password(password) if password else None
    await server.app.store.add_charge_point(cp_id, hashed)


async def test_profile1_right_password_connects(server: RunningServer) -> None:
    """Security Profile 1: a charge point registered with a password connects with id:pw."""
    await register(server, "CP-P1", "s3cret-pw")
    async with connected_charge_point(
        server.ocpp_url, "CP-P1", additional_headers=basic("CP-P1", "s3cret-pw")
    ) as cp:
        assert (await cp.call(call.Heartbeat(), suppress=False)).current_time.endswith("Z")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("CP-P1", "wrong"),
        basic("CP-P1", ""),
        basic("CP-OTHER", "s3cret-pw"),
        {"Authorization": "Basic !!!not-base64!!!"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        {"Authorization": "Bearer s3cret-pw"},
    ],
    ids=[
        "missing",
        "wrong-password",
        "empty-password",
        "other-user",
        "bad-base64",
        "no-colon",
        "bearer",
    ],
)
async def test_profile1_wrong_or_missing_credentials_get_401(
    server: RunningServer, headers: dict[str, str]
) -> None:
    """Security Profile 1: missing, wrong or malformed credentials get HTTP 401 at the
    upgrade, and no session exists."""
    await register(server, "CP-P1", "s3cret-pw")
    url = f"{server.ocpp_url}/CP-P1"
    assert await refused_status(url, additional_headers=headers) == 401
    assert not server.app.gateway.is_online("CP-P1")


async def test_unknown_charge_point_with_credentials_is_refused(server: RunningServer) -> None:
    """An unregistered id presenting a password (even in development mode) gets 401: there
    is no password it could match."""
    url = f"{server.ocpp_url}/CP-NOBODY"
    assert await refused_status(url, additional_headers=basic("CP-NOBODY", "guess")) == 401


@pytest.mark.parametrize("path", ["/ocpp/", "/ocpp/a/b", "/other/CP-1", "/ocpp/" + "x" * 49])
async def test_bad_paths_get_404(server: RunningServer, path: str) -> None:
    """Paths other than /ocpp/{id} (one segment, at most 48 characters) get HTTP 404."""
    base = server.ocpp_url.removesuffix("/ocpp")
    assert await refused_status(base + path) == 404


# ----------------------------------------------------------------------------- profile 2


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, str, CertFiles]]:
    certs = make_self_signed(tmp_path / "tls")
    settings_ = make_settings(tmp_path, ocpp_tls_cert=certs.cert, ocpp_tls_key=certs.key)
    async with running_server(settings_) as running:
        await register(running, "CP-P2", "tls-pw")
        yield running, running.ocpp_url.replace("ws://", "wss://"), certs


async def test_profile2_basic_auth_over_tls(
    tls_server: tuple[RunningServer, str, CertFiles],
) -> None:
    """Security Profile 2: over TLS the right id:pw connects; a wrong password gets 401."""
    server, wss_url, certs = tls_server
    async with connected_charge_point(
        wss_url, "CP-P2", ssl=certs.client_context(), additional_headers=basic("CP-P2", "tls-pw")
    ) as cp:
        assert (await cp.call(call.Heartbeat(), suppress=False)).current_time.endswith("Z")
    status = await refused_status(
        f"{wss_url}/CP-P2", ssl=certs.client_context(), additional_headers=basic("CP-P2", "no")
    )
    assert status == 401
    assert await transaction_ids(server) == set()


async def test_profile2_port_speaks_only_tls(
    tls_server: tuple[RunningServer, str, CertFiles], tmp_path: Path
) -> None:
    """The TLS port refuses plain WebSocket, and a client that does not trust the server's
    certificate fails verification."""
    server, wss_url, _ = tls_server
    with pytest.raises((websockets.InvalidHandshake, OSError, EOFError)):
        async with websockets.connect(
            f"{server.ocpp_url}/CP-P2", open_timeout=5, additional_headers=basic("CP-P2", "tls-pw")
        ):
            pass
    stranger = make_self_signed(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        async with websockets.connect(
            f"{wss_url}/CP-P2",
            ssl=stranger.client_context(),
            open_timeout=5,
            additional_headers=basic("CP-P2", "tls-pw"),
        ):
            pass
    assert not server.app.gateway.is_online("CP-P2")


# ----------------------------------------------------------------------------- production


async def test_production_refuses_unknown_and_admits_registered(tmp_path: Path) -> None:
    """Production mode: an unregistered id gets 401 at the upgrade; registered ones (with
    or without a password) connect."""
    async with running_server(make_settings(tmp_path, app_env="production")) as server:
        assert server.settings.production
        assert await refused_status(f"{server.ocpp_url}/CP-STRANGER") == 401
        await register(server, "CP-REG", None)
        await register(server, "CP-REG-PW", "pw-123")
        async with connected_charge_point(server.ocpp_url, "CP-REG") as cp:
            assert (await cp.boot()).status == "Accepted"
        assert await refused_status(f"{server.ocpp_url}/CP-REG-PW") == 401
        async with connected_charge_point(
            server.ocpp_url, "CP-REG-PW", additional_headers=basic("CP-REG-PW", "pw-123")
        ) as cp:
            assert (await cp.boot()).status == "Accepted"
        assert await server.app.store.get_charge_point("CP-STRANGER") is None


# ----------------------------------------------------------------------------- impersonation


async def test_credentials_of_one_charge_point_never_open_another(server: RunningServer) -> None:
    """Impersonation at the upgrade: CP-B's credentials (or CP-B's password under CP-A's
    name) never open CP-A's session."""
    await register(server, "CP-IA", "pw-a")
    await register(server, "CP-IB", "pw-b")
    url = f"{server.ocpp_url}/CP-IA"
    assert await refused_status(url, additional_headers=basic("CP-IB", "pw-b")) == 401
    assert await refused_status(url, additional_headers=basic("CP-IA", "pw-b")) == 401
    assert not server.app.gateway.is_online("CP-IA")


async def test_charge_point_cannot_stop_another_ones_transaction(server: RunningServer) -> None:
    """Impersonation after the upgrade: CP-B's StopTransaction for CP-A's transaction is
    acknowledged but changes nothing; only CP-A can end it."""
    await server.app.store.put_id_tag(IdTag("TAG-ALICE", "alice"))
    async with (
        app_client(server, server.token("alice")) as alice,
        connected_charge_point(server.ocpp_url, "CP-IA") as cp_a,
        connected_charge_point(server.ocpp_url, "CP-IB") as cp_b,
    ):
        started = await cp_a.start_tx(1, "TAG-ALICE", meter_start=0)
        assert (await alice.push("transaction_update"))["data"]["status"] == "Started"
        await cp_b.stop_tx(started.transaction_id, 99999, reason="Local")
        tx = await server.app.store.get_transaction(started.transaction_id)
        assert tx is not None and tx.active
        await alice.request("heartbeat")
        assert alice.pushes.empty()
        await cp_a.stop_tx(started.transaction_id, 500, reason="Local")
        ended = await alice.push("transaction_update")
        assert ended["data"]["status"] == "Stopped"
        assert ended["data"]["meterStopWh"] == 500
        assert ended["data"]["chargePointId"] == "CP-IA"
    assert await transaction_ids(server) == {started.transaction_id}
    await assert_still_serving(server)


async def test_charge_point_cannot_feed_another_ones_transaction(server: RunningServer) -> None:
    """Impersonation after the upgrade: CP-B's MeterValues naming CP-A's transaction never
    reach CP-A's user and are not stored as that transaction's samples."""
    await server.app.store.put_id_tag(IdTag("TAG-ALICE", "alice"))
    async with (
        app_client(server, server.token("alice")) as alice,
        connected_charge_point(server.ocpp_url, "CP-IA") as cp_a,
        connected_charge_point(server.ocpp_url, "CP-IB") as cp_b,
    ):
        started = await cp_a.start_tx(1, "TAG-ALICE", meter_start=0)
        assert (await alice.push("transaction_update"))["data"]["status"] == "Started"
        await cp_b.meter(1, started.transaction_id, [{"value": "999000"}])
        await cp_a.meter(1, started.transaction_id, [{"value": "1000"}])
        seen = await alice.push("meter_values_update")
        assert seen["data"]["chargePointId"] == "CP-IA"
        assert seen["data"]["meterValue"]["energyImportKWh"] == 1.0
    await server.app.store.flush()
    samples = await server.app.store.meter_samples_of(started.transaction_id)
    assert [(s.charge_point_id, s.sample.energy_import_kwh) for s in samples] == [("CP-IA", 1.0)]


# ----------------------------------------------------------------------------- replacement


async def test_second_connection_replaces_the_first(server: RunningServer) -> None:
    """A second connection with the same id replaces the first: the old socket is closed,
    the CALL outstanding on it fails so the app gets CHARGE_POINT_OFFLINE, the new one works."""
    async with (
        app_client(server, server.token("rita", id_tag="TAG-RITA")) as rita,
        raw_charge_point(server.ocpp_url, "CP-TWICE") as old,
    ):
        assert (await old.call("BootNotification", BOOT))[2]["status"] == "Accepted"
        first = asyncio.create_task(
            rita.request("start_charging_request", {"chargePointId": "CP-TWICE", "connectorId": 1})
        )
        asked = await old.recv()
        assert asked[0] == 2 and asked[2] == "RemoteStartTransaction"  # never answered
        async with connected_charge_point(server.ocpp_url, "CP-TWICE") as new:
            response = await first
            assert response["data"]["success"] is False
            assert response["error"]["code"] == "CHARGE_POINT_OFFLINE"
            await asyncio.wait_for(old.ws.wait_closed(), 10)
            assert old.ws.close_code == 1000
            assert old.ws.close_reason == "replaced by a new connection"

            second = asyncio.create_task(
                rita.request(
                    "start_charging_request", {"chargePointId": "CP-TWICE", "connectorId": 1}
                )
            )
            assert (await asyncio.wait_for(new.remote_starts.get(), 10))["id_tag"] == "TAG-RITA"
            started = await new.start_tx(1, "TAG-RITA", meter_start=0)
            assert (await second)["data"]["transactionId"] == started.transaction_id
            assert server.app.gateway.is_online("CP-TWICE")
    assert await transaction_ids(server) == {started.transaction_id}
    await assert_still_serving(server)


# ----------------------------------------------------------------------------- malformed OCPP-J

STATUS_OK = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}

MALFORMED: list[tuple[str, str | bytes, list[Any] | None]] = [
    ("not-json", "{not json", [4, "-1", "FormationViolation", "Message is not valid JSON", {}]),
    (
        "binary-garbage",
        b"\x00\xff\xfe",
        [4, "-1", "FormationViolation", "Message is not valid JSON", {}],
    ),
    (
        "object",
        '{"a":1}',
        [4, "-1", "FormationViolation", "Message must be a non-empty JSON array", {}],
    ),
    (
        "empty-array",
        "[]",
        [4, "-1", "FormationViolation", "Message must be a non-empty JSON array", {}],
    ),
    (
        "short-call",
        '[2,"m1","Heartbeat"]',
        [4, "m1", "FormationViolation", "CALL must be [2, id, action, payload]", {}],
    ),
    (
        "numeric-id",
        '[2,17,"Heartbeat",{}]',
        [4, "-1", "FormationViolation", "Message id must be a string of 1 to 36 characters", {}],
    ),
    (
        "unknown-type",
        '[7,"m2","Heartbeat",{}]',
        [4, "m2", "FormationViolation", "Unknown message type id 7", {}],
    ),
    (
        "payload-array",
        '[2,"m3","Heartbeat",[]]',
        [4, "m3", "FormationViolation", "CALL payload must be an object", {}],
    ),
    (
        "unknown-action",
        '[2,"m4","Teleport",{}]',
        [4, "m4", "NotImplemented", "Unknown action Teleport", {}],
    ),
    (
        "cs-action",
        '[2,"m5","Reset",{"type":"Hard"}]',
        [4, "m5", "NotSupported", "Reset is not supported by a central system", {}],
    ),
    ("missing-field", '[2,"m6","Authorize",{}]', [4, "m6", "ProtocolError"]),
    ("wrong-type", '[2,"m7","Authorize",{"idTag":5}]', [4, "m7", "TypeConstraintViolation"]),
    (
        "bad-enum",
        orjson.dumps([2, "m8", "StatusNotification", {**STATUS_OK, "status": "Nope"}]),
        [4, "m8", "PropertyConstraintViolation"],
    ),
    (
        "huge-connector",
        orjson.dumps([2, "m9", "StatusNotification", {**STATUS_OK, "connectorId": 2**63}]),
        [4, "m9", "PropertyConstraintViolation"],
    ),
    (
        "no-items",
        '[2,"m10","MeterValues",{"connectorId":1,"meterValue":[]}]',
        [4, "m10", "OccurenceConstraintViolation"],
    ),
    ("extra-field", '[2,"m11","Heartbeat",{"extra":true}]', [4, "m11", "FormationViolation"]),
    ("result-for-nothing", '[3,"nobody",{"status":"Accepted"}]', None),
    ("error-for-nothing", '[4,"nobody","GenericError","",{}]', None),
    ("bad-result", "[3,5,{}]", None),
    ("bad-error", '[4,"x",5]', None),
]


@pytest.mark.parametrize(
    ("frame", "expected"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
async def test_malformed_frame_gets_its_callerror_and_connection_lives(
    server: RunningServer, frame: str | bytes, expected: list[Any] | None
) -> None:
    """Each malformed OCPP-J frame gets the defined CALLERROR (replies to no pending CALL get
    nothing), and a Heartbeat afterwards is answered on the same socket."""
    async with raw_charge_point(server.ocpp_url, "CP-BAD") as cp:
        await cp.send(frame)
        before = await probe(cp)
        if expected is None:
            assert before == []
        else:
            assert len(before) == 1, before
            assert before[0][: len(expected)] == expected
            assert len(before[0]) == 5 and isinstance(before[0][4], dict)
        assert server.app.gateway.is_online("CP-BAD")
    assert await transaction_ids(server) == set()


async def test_many_malformed_frames_on_one_socket(server: RunningServer) -> None:
    """All the malformed frames, one after another on one socket: each is answered (or not)
    as defined, in order, and the socket stays up."""
    async with raw_charge_point(server.ocpp_url, "CP-BAD-ALL") as cp:
        for _, frame, expected in MALFORMED:
            await cp.send(frame)
            before = await probe(cp)
            assert len(before) == (0 if expected is None else 1)
            if expected is not None:
                assert before[0][: len(expected)] == expected
        assert (await cp.call("BootNotification", BOOT))[2]["status"] == "Accepted"
    await assert_still_serving(server)


# ----------------------------------------------------------------------------- limits


async def test_oversized_frame_closes_with_1009(server: RunningServer) -> None:
    """A frame over OCPP_MAX_FRAME_SIZE closes that connection with 1009; the server and
    other charge points carry on."""
    limit = server.settings.ocpp_max_frame_size
    async with (
        connected_charge_point(server.ocpp_url, "CP-BYSTANDER") as bystander,
        raw_charge_point(server.ocpp_url, "CP-BIG") as cp,
    ):
        await cp.heartbeat_works()
        padding = "a" * (limit + 10)
        await cp.send([2, "big", "DataTransfer", {"vendorId": "x", "data": padding}])
        with pytest.raises(ConnectionClosedError) as closed:
            await cp.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert (await bystander.call(call.Heartbeat(), suppress=False)).current_time
    assert not server.app.gateway.is_online("CP-BIG")
    await assert_still_serving(server)


async def test_flood_without_rate_limit_is_answered_in_order(server: RunningServer) -> None:
    """A pipelined flood of 500 CALLs (rate limit off, the default) is answered in order
    while another charge point is served alongside."""
    count = 500
    async with (
        raw_charge_point(server.ocpp_url, "CP-FLOOD") as flooder,
        connected_charge_point(server.ocpp_url, "CP-NEIGHBOUR") as neighbour,
    ):

        async def send_all() -> None:
            for i in range(count):
                await flooder.send([2, f"f-{i}", "Heartbeat", {}])

        async def read_all() -> list[str]:
            return [(await flooder.recv())[1] for _ in range(count)]

        sender = asyncio.create_task(send_all())
        reader = asyncio.create_task(read_all())
        assert (await neighbour.call(call.Heartbeat(), suppress=False)).current_time
        await sender
        assert await reader == [f"f-{i}" for i in range(count)]
    await assert_still_serving(server)


async def test_rate_limit_paces_a_flooding_charge_point(server: RunningServer) -> None:
    """With a rate limit (50/s, burst 50) a pipelined flood of 100 CALLs is paced to about
    a second, nothing is dropped, and another charge point is served meanwhile."""
    count, rate = 100, 50.0
    loop = asyncio.get_running_loop()
    async with (
        extra_ocpp_server(server, rate_limit=rate) as url,
        raw_charge_point(url, "CP-PACED") as flooder,
        raw_charge_point(url, "CP-CALM") as calm,
    ):
        began = loop.time()
        for i in range(count):
            await flooder.send([2, f"p-{i}", "Heartbeat", {}])
        first = await flooder.recv()
        assert first[1] == "p-0"
        answered = 1

        async def read_rest() -> list[str]:
            nonlocal answered
            ids = []
            for _ in range(count - 1):
                ids.append((await flooder.recv())[1])
                answered += 1
            return ids

        reader = asyncio.create_task(read_rest())
        await calm.heartbeat_works()
        assert answered < count  # the calm charge point did not wait for the flood
        rest = await reader
        elapsed = loop.time() - began
        assert [first[1], *rest] == [f"p-{i}" for i in range(count)]
        assert elapsed >= (count - rate) / rate * 0.9, elapsed
    await assert_still_serving(server)


async def test_slow_loris_upgrade_is_dropped_after_open_timeout(server: RunningServer) -> None:
    """A client that never finishes its HTTP upgrade is disconnected after open_timeout,
    and does not hold up other charge points meanwhile."""
    loop = asyncio.get_running_loop()
    async with extra_ocpp_server(server, open_timeout=1.0) as url:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        began = loop.time()
        writer.write(b"GET /ocpp/CP-SLOW HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        await writer.drain()
        async with raw_charge_point(url, "CP-BUSY") as other:
            await other.heartbeat_works()
        try:
            leftover = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            leftover = b""
        elapsed = loop.time() - began
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert leftover == b""
        assert 0.9 <= elapsed < 10, elapsed
    await assert_still_serving(server)


# ----------------------------------------------------------------------------- property test

FIELDS = st.sampled_from(
    [
        "connectorId",
        "idTag",
        "meterStart",
        "meterStop",
        "timestamp",
        "transactionId",
        "status",
        "errorCode",
        "meterValue",
        "sampledValue",
        "value",
        "vendorId",
        "chargePointVendor",
        "chargePointModel",
        "reason",
        "data",
        "info",
    ]
) | st.text(max_size=12)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
    | st.sampled_from(["2024-01-15T10:30:00Z", "Available", "Accepted", "NoError", "1500", ""])
)
JSON = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(FIELDS, inner, max_size=5),
    max_leaves=12,
)
IDS = st.text(min_size=1, max_size=36)
ACTIONS = st.sampled_from(
    [
        *sorted(HANDLERS),
        "RemoteStartTransaction",
        "RemoteStopTransaction",
        "Reset",
        "GetConfiguration",
    ]
) | st.text(max_size=40)
HUGE = st.integers(min_value=1_000, max_value=60_000).map(lambda n: "x" * n)


def dumps(value: Any) -> str:
    """JSON text by the standard library (which, unlike orjson, writes integers of any size)."""
    return json.dumps(value)


TIMES = st.sampled_from(
    [
        "2024-01-15T10:30:00Z",
        "2024-01-15T10:30:00.123456+02:00",
        "0001-01-01T00:00:00-01:00",
        "9999-12-31T23:59:59-23:59",
        "2024-02-30T10:00:00Z",
        "1970-01-01T00:00:00Z",
        "yesterday",
    ]
)
TEMPLATES: dict[str, dict[str, Any]] = {
    "BootNotification": {"chargePointVendor": "V", "chargePointModel": "M"},
    "Heartbeat": {},
    "StatusNotification": {"connectorId": 1, "errorCode": "NoError", "status": "Available"},
    "Authorize": {"idTag": "FUZZ"},
    "StartTransaction": {
        "connectorId": 1,
        "idTag": "FUZZ",
        "meterStart": 0,
        "timestamp": "2024-01-15T10:30:00Z",
    },
    "StopTransaction": {"transactionId": 1, "meterStop": 0, "timestamp": "2024-01-15T10:30:00Z"},
    "MeterValues": {
        "connectorId": 1,
        "meterValue": [{"timestamp": "2024-01-15T10:30:00Z", "sampledValue": [{"value": "1"}]}],
    },
    "DataTransfer": {"vendorId": "v"},
    "DiagnosticsStatusNotification": {"status": "Idle"},
    "FirmwareStatusNotification": {"status": "Idle"},
}


@st.composite
def near_valid_calls(draw: st.DrawFn) -> str:
    """A schema-valid CALL for an action we handle, with at most one field mutated, dropped
    or added: reaches the handlers with hostile values of the right shape."""
    action = draw(st.sampled_from(sorted(TEMPLATES)))
    payload = dict(TEMPLATES[action])
    how = draw(st.sampled_from(["keep", "replace", "drop", "add", "time", "sample"]))
    if how == "replace" and payload:
        payload[draw(st.sampled_from(sorted(payload)))] = draw(LEAVES | JSON)
    elif how == "drop" and payload:
        del payload[draw(st.sampled_from(sorted(payload)))]
    elif how == "add":
        payload[draw(FIELDS)] = draw(JSON)
    elif how == "time" and "timestamp" in payload:
        payload["timestamp"] = draw(TIMES)
    elif how == "sample" and action == "MeterValues":
        payload["meterValue"] = [
            {
                "timestamp": draw(TIMES),
                "sampledValue": [
                    draw(
                        st.dictionaries(
                            st.sampled_from(
                                [
                                    "value",
                                    "unit",
                                    "measurand",
                                    "phase",
                                    "location",
                                    "format",
                                    "context",
                                ]
                            ),
                            LEAVES,
                            min_size=1,
                        )
                    )
                ],
            }
        ]
    return dumps([2, draw(IDS), action, payload])


RANDOM_CALLS = st.tuples(st.just(2), IDS, ACTIONS, st.dictionaries(FIELDS, JSON, max_size=6))
OTHER_FRAMES: st.SearchStrategy[str | bytes] = st.one_of(
    st.tuples(
        st.just(2),
        IDS,
        st.sampled_from(["DataTransfer", "Authorize", "Teleport"]),
        st.builds(lambda key, s: {key: s}, st.sampled_from(["vendorId", "idTag", "data"]), HUGE),
    ).map(dumps),
    st.tuples(st.sampled_from([3, 4]), IDS | JSON, JSON, JSON).map(lambda t: dumps(list(t))),
    st.lists(JSON, max_size=6).map(dumps),
    JSON.map(dumps),
    st.text(max_size=200),
    st.binary(max_size=200),
    HUGE.map(lambda s: f'[2,"h","Heartbeat",{{"x":"{s}"'),
)
#: A third each: near-valid CALLs (reach the handlers), random CALLs, everything else.
FRAMES: st.SearchStrategy[str | bytes] = st.sampled_from([0, 1, 2]).flatmap(
    lambda i: (near_valid_calls(), RANDOM_CALLS.map(dumps), OTHER_FRAMES)[i]
)


def expectation(frame: str | bytes) -> tuple[str, str | None]:
    """What the server must answer: ("call", id) one reply with that id; ("silent", None)
    nothing; ("other", None) one FormationViolation CALLERROR."""
    try:
        value = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return "other", None
    if not isinstance(value, list) or not value:
        return "other", None
    kind = value[0]
    if type(kind) is int and kind in (3, 4):
        return "silent", None
    if (
        type(kind) is int
        and kind == 2
        and len(value) == 4
        and isinstance(value[1], str)
        and 1 <= len(value[1]) <= 36
    ):
        return "call", value[1]
    return "other", None


@pytest.fixture
def ledger() -> set[int]:
    """Transaction ids the server handed out during the property test."""
    return set()


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)
@given(frame=FRAMES)
async def test_hostile_frames_never_break_the_server(
    server: RunningServer, ledger: set[int], frame: str | bytes
) -> None:
    """Any frame: a CALL is answered once with its id (never InternalError), a reply-shaped
    frame not at all, anything else with one FormationViolation; the socket, /health and a
    normal charge point keep working; only answered StartTransactions created transactions."""
    kind, unique_id = expectation(frame)
    async with raw_charge_point(server.ocpp_url, "CP-FUZZ") as cp:
        await cp.send(frame)
        before = await probe(cp)
    answer = "-" if not before else before[0][2] if before[0][0] == 4 else "result"
    event(f"{kind}: {answer}")
    if kind == "silent":
        assert before == []
    else:
        assert len(before) == 1, before
        reply = before[0]
        assert isinstance(reply, list) and reply[0] in (3, 4), reply
        if kind == "call":
            assert reply[1] == unique_id
        else:
            assert reply[0] == 4 and reply[2] == "FormationViolation", reply
            assert reply[1] == "-1" or isinstance(reply[1], str)
        if reply[0] == 4:
            assert len(reply) == 5 and isinstance(reply[2], str) and isinstance(reply[4], dict)
            assert len(reply[3]) <= 255
            assert reply[2] != "InternalError", reply  # bad input is never a server bug
        elif orjson.loads(frame)[2] == "StartTransaction":
            ledger.add(reply[2]["transactionId"])
    assert await transaction_ids(server) == ledger
    await assert_still_serving(server)


async def test_database_holds_exactly_the_attack_tables_transactions(
    server: RunningServer,
) -> None:
    """After a run of attacks on one server (impersonated stop, replayed and offline starts,
    malformed and oversized frames) the database holds exactly the legitimate transactions,
    in the state their own charge points left them."""
    await server.app.store.put_id_tag(IdTag("TAG-Z", "zoe"))
    async with (
        connected_charge_point(server.ocpp_url, "CP-Z1") as z1,
        connected_charge_point(server.ocpp_url, "CP-Z2") as z2,
    ):
        a = await z1.start_tx(1, "TAG-Z", meter_start=0)
        when = stamp()
        b = await z2.start_tx(1, "TAG-Z", meter_start=10, timestamp=when)
        replay = await z2.start_tx(1, "TAG-Z", meter_start=10, timestamp=when)
        assert replay.transaction_id == b.transaction_id
        await z2.stop_tx(a.transaction_id, 1, reason="Local")  # not z2's: ignored
        async with raw_charge_point(server.ocpp_url, "CP-Z3") as raw:
            for _, frame, _expected in MALFORMED:
                await raw.send(frame)
                await probe(raw)
            await raw.send(
                [
                    2,
                    "big",
                    "DataTransfer",
                    {"vendorId": "x", "data": "a" * server.settings.ocpp_max_frame_size},
                ]
            )
            with pytest.raises(ConnectionClosed):
                await raw.recv()
        await z1.stop_tx(a.transaction_id, 800, reason="Local")
    txs = {tx.id: tx for tx in await all_transactions(server)}
    assert set(txs) == {a.transaction_id, b.transaction_id}
    assert (txs[a.transaction_id].active, txs[a.transaction_id].meter_stop_wh) == (False, 800)
    assert txs[b.transaction_id].active
    await assert_still_serving(server)

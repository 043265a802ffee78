"""A connection sees what its current token allows: re-authenticating with a user-role token
ends admin subscriptions and what resume would replay of them (issue 10 item 7)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import AppClient, RunningServer, app_client
from tests.peers.py_charge_point import connected_charge_point

CP = "CP-ROLE"


async def nothing_pushed(client: AppClient) -> list[dict[str, Any]]:
    """Pushes that reached ``client`` before a heartbeat round trip: the server writes a
    connection's frames in order, so whatever was sent before the reply has arrived."""
    assert (await client.request("heartbeat"))["type"] == "heartbeat"
    pushed = []
    while not client.pushes.empty():
        pushed.append(client.pushes.get_nowait())
    return pushed


def status_of(status: str) -> Any:
    return lambda message: message["data"].get("status") == status


async def test_reauth_as_user_ends_the_admin_view_on_the_same_socket(
    server: RunningServer,
) -> None:
    """After re-auth with role user: no more pushes about other users' charge points, no
    replay of those received as admin (RESYNC_REQUIRED), unsubscribe/subscribe FORBIDDEN."""
    async with (
        connected_charge_point(server.ocpp_url, CP) as cp,
        app_client(server, server.token("root", role="admin")) as root,
        app_client(server, server.token("ops", role="admin")) as witness,
    ):
        for admin in (root, witness):
            reply = await admin.request("subscribe", {"chargePointIds": "*"})
            assert reply["data"] == {"success": True, "chargePointIds": "*"}
        await cp.status(1, "Available")
        seen = await root.push("charging_status_update", where=status_of("Available"))
        await witness.push("charging_status_update", where=status_of("Available"))

        demoted = await root.request("auth_request", {"token": server.token("root")})
        assert demoted["data"]["success"] is True and demoted["data"]["role"] == "user"

        await cp.status(1, "Unavailable")
        await witness.push("charging_status_update", where=status_of("Unavailable"))
        assert await nothing_pushed(root) == []

        resumed = await root.request(
            "resume", {"lastSeq": seen["seq"] - 1, "epoch": demoted["data"]["epoch"]}
        )
        assert resumed["error"]["code"] == "RESYNC_REQUIRED", resumed
        assert await nothing_pushed(root) == []
        for kind in ("unsubscribe", "subscribe"):
            refused = await root.request(kind, {"chargePointIds": "*"})
            assert refused["error"]["code"] == "FORBIDDEN"

        # Admin again: nothing comes back by itself; a new subscribe is needed.
        again = await root.request("auth_request", {"token": server.token("root", role="admin")})
        assert again["data"]["role"] == "admin"
        await cp.status(1, "Available")
        await witness.push("charging_status_update", where=status_of("Available"))
        assert await nothing_pushed(root) == []


async def test_a_user_role_connection_of_the_same_user_ends_and_blocks_subscriptions(
    server: RunningServer,
) -> None:
    """Subscriptions belong to the user's stream, which every connection of the user shares:
    while one of them holds a user-role token there are none, and subscribe is FORBIDDEN."""
    async with (
        connected_charge_point(server.ocpp_url, CP) as cp,
        app_client(server, server.token("root", role="admin")) as admin,
        app_client(server, server.token("ops", role="admin")) as witness,
    ):
        for watcher in (admin, witness):
            await watcher.request("subscribe", {"chargePointIds": [CP]})
        async with app_client(server, server.token("root")) as plain:
            await cp.status(1, "Faulted", "GroundFailure")
            await witness.push("charging_status_update", where=status_of("Faulted"))
            assert await nothing_pushed(plain) == []
            assert await nothing_pushed(admin) == []
            refused = await admin.request("subscribe", {"chargePointIds": [CP]})
            assert refused["error"]["code"] == "FORBIDDEN"
        # The user-role connection is gone (once the server has seen the close, bounded wait):
        # the admin may watch again.
        hub = server.app.app_server.hub
        for _ in range(500):
            if hub.session_count_of("root") == 1:
                break
            await asyncio.sleep(0.01)
        assert hub.session_count_of("root") == 1
        reply = await admin.request("subscribe", {"chargePointIds": [CP]})
        assert reply["data"]["success"] is True
        await cp.status(1, "Available")
        await admin.push("charging_status_update", where=status_of("Available"))

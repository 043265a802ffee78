"""Library baseline: a central system written with the PyPI ``ocpp`` library in its documented
style (a ``ChargePoint`` subclass with ``@on`` handlers, schema validation on) that only replies:
no storage, no fan-out. Logging at WARNING (the library logs every frame at INFO); uvloop, as ours.

    python -m bench.peers.ocpp_lib_server PORT
"""

from __future__ import annotations

import asyncio
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import uvloop
from ocpp.routing import on
from ocpp.v16 import ChargePoint as BaseChargePoint
from ocpp.v16 import call_result
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol


def _now() -> str:
    return datetime.now(UTC).isoformat()


class ChargePoint(BaseChargePoint):  # type: ignore[misc]
    @on(Action.boot_notification)  # type: ignore[untyped-decorator]
    async def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kwargs: Any
    ) -> Any:
        return call_result.BootNotification(
            current_time=_now(), interval=300, status=RegistrationStatus.accepted
        )

    @on(Action.heartbeat)  # type: ignore[untyped-decorator]
    async def on_heartbeat(self, **kwargs: Any) -> Any:
        return call_result.Heartbeat(current_time=_now())

    @on(Action.status_notification)  # type: ignore[untyped-decorator]
    async def on_status_notification(
        self, connector_id: int, error_code: str, status: str, **kwargs: Any
    ) -> Any:
        return call_result.StatusNotification()

    @on(Action.authorize)  # type: ignore[untyped-decorator]
    async def on_authorize(self, id_tag: str, **kwargs: Any) -> Any:
        return call_result.Authorize(id_tag_info={"status": AuthorizationStatus.accepted})

    @on(Action.start_transaction)  # type: ignore[untyped-decorator]
    async def on_start_transaction(self, connector_id: int, id_tag: str, **kwargs: Any) -> Any:
        return call_result.StartTransaction(
            transaction_id=1, id_tag_info={"status": AuthorizationStatus.accepted}
        )

    @on(Action.stop_transaction)  # type: ignore[untyped-decorator]
    async def on_stop_transaction(self, **kwargs: Any) -> Any:
        return call_result.StopTransaction()

    @on(Action.meter_values)  # type: ignore[untyped-decorator]
    async def on_meter_values(
        self, connector_id: int, meter_value: list[Any], **kwargs: Any
    ) -> Any:
        return call_result.MeterValues()


async def on_connect(websocket: ServerConnection) -> None:
    path = websocket.request.path if websocket.request else "/"
    charge_point = ChargePoint(path.strip("/").split("/")[-1], websocket)
    try:
        await charge_point.start()
    except ConnectionClosed:
        pass


async def _main(port: int) -> None:
    async with serve(
        on_connect,
        "127.0.0.1",
        port,
        subprotocols=[Subprotocol("ocpp1.6")],
        compression=None,
        ping_interval=None,
    ):
        await asyncio.Future()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    uvloop.run(_main(int(sys.argv[1])))

"""A charge point written with the PyPI ``ocpp`` library: a real OCPP-J peer for the tests.

It answers RemoteStart/RemoteStop as told (``remote_start_answer``) and records what it was
asked in queues the tests await; the test itself sends the charge point's side of the story
(StatusNotification, StartTransaction, MeterValues, ...) so each scenario is explicit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint, call, call_result
from ocpp.v16.enums import Action
from websockets.typing import Subprotocol


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class LibraryChargePoint(ChargePoint):  # type: ignore[misc]
    def __init__(self, cp_id: str, connection: Any) -> None:
        super().__init__(cp_id, connection, response_timeout=10)
        self.remote_starts: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.remote_stops: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.remote_start_answer = "Accepted"
        self.remote_stop_answer = "Accepted"

    @on(Action.remote_start_transaction)  # type: ignore[untyped-decorator]
    async def on_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any) -> Any:
        self.remote_starts.put_nowait({"id_tag": id_tag, "connector_id": connector_id})
        return call_result.RemoteStartTransaction(status=self.remote_start_answer)

    @on(Action.remote_stop_transaction)  # type: ignore[untyped-decorator]
    async def on_remote_stop(self, transaction_id: int, **_: Any) -> Any:
        self.remote_stops.put_nowait({"transaction_id": transaction_id})
        return call_result.RemoteStopTransaction(status=self.remote_stop_answer)

    # The charge point's own messages, as one-liners for the tests.
    async def boot(self) -> Any:
        return await self.call(
            call.BootNotification(charge_point_model="TestModel", charge_point_vendor="TestVendor"),
            suppress=False,
        )

    async def status(self, connector_id: int, status: str, error_code: str = "NoError") -> Any:
        return await self.call(
            call.StatusNotification(
                connector_id=connector_id,
                error_code=error_code,
                status=status,
                timestamp=now_text(),
            ),
            suppress=False,
        )

    async def authorize(self, id_tag: str) -> Any:
        return await self.call(call.Authorize(id_tag=id_tag), suppress=False)

    async def start_tx(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str | None = None
    ) -> Any:
        return await self.call(
            call.StartTransaction(
                connector_id=connector_id,
                id_tag=id_tag,
                meter_start=meter_start,
                timestamp=timestamp or now_text(),
            ),
            suppress=False,
        )

    async def stop_tx(
        self,
        transaction_id: int,
        meter_stop: int,
        reason: str | None = None,
        id_tag: str | None = None,
        timestamp: str | None = None,
    ) -> Any:
        return await self.call(
            call.StopTransaction(
                meter_stop=meter_stop,
                timestamp=timestamp or now_text(),
                transaction_id=transaction_id,
                reason=reason,
                id_tag=id_tag,
            ),
            suppress=False,
        )

    async def meter(
        self,
        connector_id: int,
        transaction_id: int | None,
        sampled: list[dict[str, Any]],
        timestamp: str | None = None,
    ) -> Any:
        return await self.call(
            call.MeterValues(
                connector_id=connector_id,
                transaction_id=transaction_id,
                meter_value=[{"timestamp": timestamp or now_text(), "sampled_value": sampled}],
            ),
            suppress=False,
        )


@contextlib.asynccontextmanager
async def connected_charge_point(
    ocpp_url: str,
    cp_id: str,
    *,
    boot: bool = True,
    cls: type[LibraryChargePoint] = LibraryChargePoint,
    **connect_kwargs: Any,
) -> AsyncIterator[LibraryChargePoint]:
    """Connect, start the library's read loop as an owned task, boot, and clean up after."""
    async with websockets.connect(
        f"{ocpp_url}/{cp_id}", subprotocols=[Subprotocol("ocpp1.6")], **connect_kwargs
    ) as ws:
        cp = cls(cp_id, ws)
        reader = asyncio.create_task(cp.start())
        try:
            if boot:
                await cp.boot()
            yield cp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader

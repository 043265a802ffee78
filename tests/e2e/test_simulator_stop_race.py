"""The simulator takes a RemoteStop that arrives before its StartTransaction's answer.

The central system answers the app's start once the transaction is stored, and the app may ask
to stop at once (the seed's browser client does): the RemoteStop can then reach the charge point
before it has read the transactionId of its own start. A scripted central system, on a real
socket, forces that order: it sends RemoteStopTransaction for the new id before answering the
simulator's StartTransaction.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.typing import Subprotocol

from charging_api.simulator.fleet import run_charge_point

NOW = "2024-05-01T12:00:00Z"
TX = 42


async def test_a_remote_stop_before_the_start_answer_stops_the_transaction_once_started() -> None:
    stop_answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    stopped: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    tasks: set[asyncio.Task[None]] = set()
    asked: list[str] = []  # the RemoteStart is sent once

    async def answer_start_after_the_stop(ws: ServerConnection, unique_id: str) -> None:
        # The stop first, for the id we are about to give; then the answer.
        await ws.send(json.dumps([2, "stop", "RemoteStopTransaction", {"transactionId": TX}]))
        await asyncio.wait_for(asyncio.shield(stop_answer), 10)
        reply = {"transactionId": TX, "idTagInfo": {"status": "Accepted"}}
        await ws.send(json.dumps([3, unique_id, reply]))

    async def central_system(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] == 3 and msg[1] == "stop":
                stop_answer.set_result(msg[2])
                continue
            if msg[0] != 2:
                continue
            unique_id, action, payload = msg[1], msg[2], msg[3]
            reply: dict[str, Any] = {}
            if action == "BootNotification":
                reply = {"status": "Accepted", "currentTime": NOW, "interval": 300}
            elif action == "Authorize":
                reply = {"idTagInfo": {"status": "Accepted"}}
            elif action == "Heartbeat":
                reply = {"currentTime": NOW}
            elif action == "StartTransaction":
                task = asyncio.create_task(answer_start_after_the_stop(ws, unique_id))
                tasks.add(task)  # (this loop must go on reading: the stop's answer comes here)
                continue
            elif action == "StopTransaction" and not stopped.done():
                stopped.set_result(payload)
            await ws.send(json.dumps([3, unique_id, reply]))
            if action == "StatusNotification" and payload["status"] == "Available" and not asked:
                asked.append(unique_id)
                # Booted (it reports its connectors after the boot answer): start a charge.
                await ws.send(json.dumps([2, "rs", "RemoteStartTransaction", {"idTag": "T1"}]))

    async with serve(
        central_system, "127.0.0.1", 0, subprotocols=[Subprotocol("ocpp1.6")]
    ) as server:
        port = server.sockets[0].getsockname()[1]
        halt = asyncio.Event()
        runner = asyncio.create_task(
            run_charge_point(
                f"ws://127.0.0.1:{port}", "CP-RACE", meter_interval=0.5, reconnect=False, stop=halt
            )
        )
        try:
            assert await asyncio.wait_for(stop_answer, 10) == {"status": "Accepted"}
            payload = await asyncio.wait_for(stopped, 10)
            assert payload["transactionId"] == TX and payload["reason"] == "Remote"
        finally:
            halt.set()
            await asyncio.wait_for(runner, 10)

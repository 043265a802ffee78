"""A fleet of simulated charge points, each kept connected to the central system.

:func:`run_fleet` is the entry point of ``charging-api simulate``: it runs ``count`` charge points
(``SIM-0001``, ``SIM-0002``, ... see :func:`charge_point_ids`) concurrently in one TaskGroup.
Each one connects to ``{url}/{charge_point_id}`` with subprotocol ``ocpp1.6`` (HTTP Basic auth
with the charge point id as user name when a password is given), runs a
:class:`~charging_api.simulator.charge_point.SimulatedChargePoint` until the socket closes, and
reconnects after a capped exponential backoff with jitter (1 s doubling to 60 s, each wait drawn
uniformly from its upper half). The backoff starts over once a connection got as far as an
accepted BootNotification. The charge point's memory (connectors with their energy register,
transaction under way, availability and reservation; configuration, local list, charging
profiles, firmware version) survives reconnects. A charge point that closed the socket to reboot
(Reset, firmware installed) connects again after ``SimTimings.reboot`` seconds, even when
``reconnect`` is false: a reboot is the charger's own doing, not a lost connection.

Logging: one INFO line on ``charging_api.simulator`` per state change of a charge point
(connected, booted, connector status, transaction started/stopped, disconnected). The ``ocpp``
library logs every frame at INFO on the ``ocpp`` logger; quieten that one for large fleets.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from urllib.parse import quote

from websockets import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.headers import build_authorization_basic
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from charging_api.simulator.charge_point import (
    SimConnector,
    SimulatedChargePoint,
    new_connectors,
)
from charging_api.simulator.core import new_memory
from charging_api.simulator.memory import ChargerMemory, SimTimings

__all__ = ["backoff_delay", "charge_point_ids", "run_charge_point", "run_fleet"]

log = logging.getLogger("charging_api.simulator")

SUBPROTOCOL = Subprotocol("ocpp1.6")
BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


def charge_point_ids(count: int, prefix: str = "SIM-") -> list[str]:
    """The ids of a fleet: ``f"{prefix}{i:04d}"`` for i = 1..count."""
    return [f"{prefix}{i:04d}" for i in range(1, count + 1)]


def backoff_delay(
    attempt: int,
    *,
    base: float = BACKOFF_BASE,
    cap: float = BACKOFF_CAP,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): min(cap, base * 2**attempt),
    drawn uniformly from its upper half so a fleet that dropped at once does not return at once.
    """
    ceiling = min(cap, base * 2 ** min(attempt, 32))
    return (rng or random).uniform(ceiling / 2, ceiling)


def charge_point_url(base_url: str, charge_point_id: str) -> str:
    return f"{base_url.rstrip('/')}/{quote(charge_point_id, safe='')}"


async def run_charge_point(
    url: str,
    charge_point_id: str,
    *,
    meter_interval: float = 10.0,
    connectors: int = 1,
    reconnect: bool = True,
    stop: asyncio.Event | None = None,
    basic_auth_password: str | None = None,
    state: dict[int, SimConnector] | None = None,
    on_connect: Callable[[SimulatedChargePoint], None] | None = None,
    memory: ChargerMemory | None = None,
    timings: SimTimings | None = None,
) -> None:
    """Keep one simulated charge point connected to ``{url}/{charge_point_id}``.

    Returns when ``stop`` is set (closing the socket), or after the first connection ends when
    ``reconnect`` is false (a reboot reconnects all the same). ``on_connect`` sees each new
    :class:`SimulatedChargePoint` before it runs (tests use it to await the charge point's
    events). ``memory`` (else one made from ``state``/``connectors``, ``meter_interval`` and
    ``timings``) is what the charge point keeps across connections.
    """
    stop = stop or asyncio.Event()
    if memory is None:
        memory = new_memory(
            state if state is not None else new_connectors(connectors), meter_interval, timings
        )
    target = charge_point_url(url, charge_point_id)
    headers = (
        {"Authorization": build_authorization_basic(charge_point_id, basic_auth_password)}
        if basic_auth_password is not None
        else None
    )
    attempt = 0
    while not stop.is_set():
        booted = rebooting = False
        try:
            async with connect(
                target, subprotocols=[SUBPROTOCOL], additional_headers=headers
            ) as ws:
                if ws.subprotocol != SUBPROTOCOL:
                    log.warning(
                        "%s server did not agree to subprotocol %s", charge_point_id, SUBPROTOCOL
                    )
                    await ws.close(1002, "subprotocol ocpp1.6 required")
                else:
                    log.info("%s connected to %s", charge_point_id, target)
                    cp = SimulatedChargePoint(
                        charge_point_id, ws, meter_interval=meter_interval, memory=memory
                    )
                    if on_connect is not None:
                        on_connect(cp)
                    await _run_until_stopped(cp, ws, stop)
                    booted, rebooting = cp.booted.is_set(), cp.rebooting
        except InvalidStatus as exc:
            log.warning("%s refused: HTTP %d", charge_point_id, exc.response.status_code)
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            log.warning("%s cannot connect: %s", charge_point_id, str(exc) or type(exc).__name__)
        except Exception:
            log.exception("%s crashed", charge_point_id)
        if stop.is_set() or not (reconnect or rebooting):
            break
        attempt = 0 if booted else attempt + 1
        delay = memory.timings.reboot if rebooting else backoff_delay(max(attempt - 1, 0))
        log.info("%s reconnecting in %.1fs", charge_point_id, delay)
        try:
            async with asyncio.timeout(delay):
                await stop.wait()
        except TimeoutError:
            pass


async def _run_until_stopped(
    cp: SimulatedChargePoint, ws: ClientConnection, stop: asyncio.Event
) -> None:
    """Run ``cp`` until its socket closes, closing the socket first if ``stop`` is set."""
    async with asyncio.TaskGroup() as tg:
        runner = tg.create_task(cp.run(), name=f"{cp.id}:run")
        watcher = tg.create_task(stop.wait(), name=f"{cp.id}:stop")
        await asyncio.wait({runner, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if watcher.done():
            await ws.close()
        else:
            watcher.cancel()


async def run_fleet(
    url: str,
    count: int,
    *,
    prefix: str = "SIM-",
    meter_interval: float = 10.0,
    connectors: int = 1,
    reconnect: bool = True,
    stop: asyncio.Event | None = None,
    basic_auth_password: str | None = None,
    timings: SimTimings | None = None,
) -> None:
    """Run ``count`` simulated charge points against the central system at ``url``.

    ``url`` is the OCPP endpoint without the charge point id (``ws://host:port/ocpp``). Runs
    until ``stop`` is set (forever when it is None), or, when ``reconnect`` is false, until every
    charge point's first connection has ended. Raises ValueError for a bad url or count.
    """
    if count < 0:
        raise ValueError("count must not be negative")
    if meter_interval <= 0:
        raise ValueError("meter_interval must be positive")
    if connectors < 1:
        raise ValueError("connectors must be at least 1")
    try:
        parse_uri(charge_point_url(url, prefix + "0"))
    except InvalidURI as exc:
        raise ValueError(f"not a ws:// or wss:// url: {url!r}") from exc
    stop = stop or asyncio.Event()
    log.info("starting %d simulated charge points against %s", count, url)
    async with asyncio.TaskGroup() as tg:
        for charge_point_id in charge_point_ids(count, prefix):
            tg.create_task(
                run_charge_point(
                    url,
                    charge_point_id,
                    meter_interval=meter_interval,
                    connectors=connectors,
                    reconnect=reconnect,
                    stop=stop,
                    basic_auth_password=basic_auth_password,
                    timings=timings,
                ),
                name=charge_point_id,
            )
    log.info("simulated charge points stopped")

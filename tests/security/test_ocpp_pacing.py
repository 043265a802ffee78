"""OCPP_RATE_LIMIT paces a charge point that sends too fast (the shared TokenBucket spent into
debt): every message is still answered, nothing is dropped or refused, only later."""

from __future__ import annotations

import time
from pathlib import Path

from ocpp.v16 import call

from tests.conftest import make_settings, running_server
from tests.peers.py_charge_point import connected_charge_point


async def test_a_fast_charge_point_is_paced_not_refused(tmp_path: Path) -> None:
    """At 5 messages/s (burst 5), 11 CALLs in a row are all answered, and the last 6 (boot
    included) wait for their tokens: the run takes at least a second."""
    settings = make_settings(tmp_path, ocpp_rate_limit=5)
    async with running_server(settings) as server:
        began = time.monotonic()
        async with connected_charge_point(server.ocpp_url, "CP-FAST") as cp:  # boot: 1 CALL
            answers = [await cp.call(call.Heartbeat(), suppress=False) for _ in range(10)]
        elapsed = time.monotonic() - began
    assert all(answer.current_time for answer in answers)
    assert elapsed >= 1.0 - 0.05, elapsed  # 6 messages over the burst at 0.2 s each

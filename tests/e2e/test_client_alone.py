"""``charging_api.client`` works with only ``websockets`` installed: the server's dependencies
(orjson, pydantic, SQLAlchemy, PyJWT, ocpp ...) are not importable in the client's process."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import websockets

import charging_api
from tests.conftest import RunningServer
from tests.peers.py_charge_point import connected_charge_point

#: Runs in a Python without site-packages (``-S -E``): only the standard library and what the
#: directory given first holds, which is ``websockets`` and ``charging_api`` and nothing else.
CLIENT_SCRIPT = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from charging_api.client import ChargingClient

async def main():
    client = ChargingClient(sys.argv[2], sys.argv[3], reconnect=False)
    try:
        auth = await client.connect()
        state = await client.get_state()
    finally:
        await client.close()
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    ours = sorted(name for name in sys.modules if name.startswith("charging_api"))
    print(json.dumps({"auth": auth, "state": state, "loaded": loaded, "ours": ours}))

asyncio.run(main())
"""

SERVER_ONLY = {
    "orjson",
    "pydantic",
    "pydantic_settings",
    "sqlalchemy",
    "jwt",
    "ocpp",
    "fastjsonschema",
    "cryptography",
    "uvloop",
    "asyncpg",
}


async def test_the_client_runs_with_websockets_alone(server: RunningServer, tmp_path: Path) -> None:
    """An app with only websockets installed authenticates and reads its state."""
    alone = tmp_path / "site"
    alone.mkdir()
    (alone / "websockets").symlink_to(Path(websockets.__file__).parent)
    (alone / "charging_api").symlink_to(Path(charging_api.__file__).parent)
    async with connected_charge_point(server.ocpp_url, "CP-ALONE") as cp:
        await cp.status(1, "Available")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-S",
            "-E",
            "-c",
            CLIENT_SCRIPT,
            str(alone),
            server.app_url,
            server.token("alone-user", id_tag="TAG-ALONE"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=tmp_path,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["auth"]["userId"] == "alone-user"
    assert isinstance(result["state"], dict)
    assert not SERVER_ONLY & set(result["loaded"]), result["loaded"]
    assert set(result["ours"]) <= {"charging_api", "charging_api.client", "charging_api.timefmt"}

"""Per-request cost of the same typed route in FastAPI and Litestar (docs/architecture.md,
"Decisions"): an auth dependency, a query parameter and a list of 20 pydantic models, called
in-process through ASGI (no network), best of 3 x 3000 calls.

Run: ``.venv/bin/pip install fastapi==0.163.2 && .venv/bin/python bench/rest_frameworks.py``
(FastAPI is not a dependency of the project; Litestar is).
"""

import asyncio
import time
from typing import Annotated

from pydantic import BaseModel


class Item(BaseModel):
    id: str
    status: str
    connectors: list[int]


ITEMS = [Item(id=f"CP{i}", status="Available", connectors=[1, 2]) for i in range(20)]


def fastapi_app():
    from fastapi import Depends, FastAPI, Header, HTTPException

    app = FastAPI()

    def auth(authorization: Annotated[str | None, Header()] = None) -> str:
        if authorization != "Bearer k":
            raise HTTPException(401)
        return "admin"

    @app.get("/api/charge-points", response_model=list[Item])
    async def lst(who: Annotated[str, Depends(auth)], limit: int = 50) -> list[Item]:
        return ITEMS[:limit]

    return app


def litestar_app():
    from litestar import Litestar, get
    from litestar.di import Provide
    from litestar.exceptions import NotAuthorizedException
    from litestar.params import Parameter

    async def auth(
        authorization: Annotated[str | None, Parameter(header="authorization")] = None,
    ) -> str:
        if authorization != "Bearer k":
            raise NotAuthorizedException()
        return "admin"

    @get("/api/charge-points", dependencies={"who": Provide(auth)})
    async def lst(who: str, limit: int = 50) -> list[Item]:
        return ITEMS[:limit]

    return Litestar([lst])


async def drive(app, n):
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/charge-points",
        "raw_path": b"/api/charge-points",
        "query_string": b"limit=20",
        "root_path": "",
        "headers": [(b"authorization", b"Bearer k"), (b"host", b"x")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(m):
        if m["type"] == "http.response.start":
            sent.append(m["status"])

    for _ in range(200):
        await app(dict(scope), receive, send)
    assert set(sent) == {200}, set(sent)
    t = time.perf_counter()
    for _ in range(n):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - t) / n * 1e6


for name, make in (("fastapi", fastapi_app), ("litestar", litestar_app)):
    t0 = time.perf_counter()
    app = make()
    built = time.perf_counter() - t0
    best = min(asyncio.run(drive(app, 3000)) for _ in range(3))
    print(f"{name}: {best:.1f} us/request (best of 3 x 3000), app built in {built * 1000:.0f} ms")

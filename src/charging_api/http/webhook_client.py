"""The webhook poster: one HTTP/1.1 POST per delivery on a fresh connection (stdlib asyncio).

Small on purpose: deliveries are rare (session events), so no pool; ``Connection: close``;
the whole exchange is bounded by ``timeout``; only the status line is read. https URLs use the
default TLS context (certificates verified).
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit


class HttpPoster:
    def __init__(self, timeout: float = 10.0) -> None:
        self.timeout = timeout

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST ``body``; the response's status code. OSError/TimeoutError when unreachable."""
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        host = parts.hostname or ""
        port = parts.port or (443 if secure else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl.create_default_context() if secure else None
            )
            try:
                lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}",
                         f"Content-Length: {len(body)}", "Connection: close"]  # fmt: skip
                lines += [f"{name}: {value}" for name, value in headers.items()]
                writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
                await writer.drain()
                status_line = await reader.readline()
            finally:
                writer.close()
        fields = status_line.split()
        if len(fields) < 2 or not fields[1].isdigit():
            raise OSError(f"not an HTTP response: {status_line[:60]!r}")
        return int(fields[1])

"""Structured log lines (``key=value``) that never carry tokens or secrets.

Anything shaped like a JWT, a ``Bearer``/``Basic`` credential, or one of the configured secrets
is replaced by ``[redacted]`` before it is written, whatever code logged it (our own, a
library's, an exception's text). Two layers: a filter redacts each record's message (for every
handler, including ones added later), and the formatter redacts the whole formatted line, so the
``trace=`` part (an exception's text and its chained causes, e.g. SQL parameters) is covered too.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_AUTH = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= 4]

    def redact(self, text: str) -> str:
        text = _JWT.sub("[redacted]", text)
        text = _AUTH.sub(r"\1 [redacted]", text)
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += " | " + repr(record.exc_info[1])
            record.exc_text = None
        record.msg = self.redact(message)
        record.args = None
        return True


class KeyValueFormatter(logging.Formatter):
    """``time=... level=INFO logger=charging_api.x msg="..."``, passed whole through ``redact``."""

    def __init__(self, redact: Callable[[str], str] | None = None) -> None:
        super().__init__()
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage().replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        line = (
            f"time={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}Z "
            f'level={record.levelname} logger={record.name} msg="{message}"'
        )
        if record.exc_info and record.levelno >= logging.ERROR:
            trace = self.formatException(record.exc_info).replace("\n", "\\n")
            line += f' trace="{trace}"'
        return self._redact(line) if self._redact is not None else line


def configure(level: str, log_file: Path | None, secrets: Iterable[str]) -> None:
    import time

    redactor = RedactingFilter(secrets)
    formatter = KeyValueFormatter(redactor.redact)
    formatter.converter = time.gmtime
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(redactor)
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(max(logging.getLevelName(level), logging.WARNING))

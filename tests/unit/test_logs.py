"""Log redaction covers the whole written line, the exception's trace included."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from charging_api import logs
from charging_api.api.auth import issue_token

SECRET = "log-secret-0123456789-abcdefghijklmn"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.configure replaces the root handlers; put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ws_level = logging.getLogger("websockets").level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if handler not in handlers:
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("websockets").setLevel(ws_level)


@pytest.mark.usefixtures("restore_logging")
def test_a_token_inside_an_exception_is_redacted_in_the_trace(tmp_path: Path) -> None:
    """Text carried by an exception (here: SQL parameters with a token and the secret, and a
    chained cause) never reaches LOG_FILE, neither in msg= nor in trace=."""
    log_file = tmp_path / "app.log"
    logs.configure("INFO", log_file, [SECRET])
    token = issue_token(SECRET, "alice", expires_in=600)
    try:
        try:
            raise ValueError(f"cause with Bearer {token}")
        except ValueError as cause:
            raise RuntimeError(f"INSERT failed [parameters: ('{token}', '{SECRET}')]") from cause
    except RuntimeError:
        logging.getLogger("charging_api.test").exception("request failed")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = log_file.read_text()
    assert "request failed" in text and 'trace="' in text
    assert "RuntimeError" in text and "ValueError" in text  # the trace is still there
    assert token not in text
    assert token.rsplit(".", 1)[-1] not in text  # not even the signature
    assert SECRET not in text
    assert text.count("[redacted]") >= 4

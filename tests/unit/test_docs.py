"""The docs stay true: every error code and message type on the wire is documented."""

from __future__ import annotations

from pathlib import Path

from charging_api.api.messages import PUSH_TYPES, REQUESTS
from charging_api.errors import all_error_codes

DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def test_every_error_code_is_in_protocol_md() -> None:
    """A new error code cannot ship without its line in docs/protocol.md."""
    text = DOCS.read_text()
    missing = [code for code in all_error_codes() if f"`{code}`" not in text]
    assert missing == []


def test_every_message_type_is_in_protocol_md() -> None:
    """Every request, reply and push type is documented."""
    text = DOCS.read_text()
    types = set(REQUESTS) | {reply for _, reply in REQUESTS.values()} | set(PUSH_TYPES)
    missing = sorted(t for t in types if f"`{t}`" not in text)
    assert missing == []


def test_every_setting_is_documented() -> None:
    """Each configuration key appears in README.md or docs/security.md."""
    from charging_api.config import Settings

    root = DOCS.parents[1]
    text = (root / "README.md").read_text() + (root / "docs" / "security.md").read_text()
    missing = sorted(
        name.upper() for name in Settings.model_fields if f"`{name.upper()}`" not in text
    )
    assert missing == []

"""The docs stay true: every error code and message type on the wire is documented."""

from __future__ import annotations

import argparse
import ast
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


ROOT = DOCS.parents[1]
SRC = ROOT / "src" / "charging_api"


def _importers_of(top: str) -> set[str]:
    """Modules of ``charging_api`` (dotted, relative) that import package ``top`` in code."""
    found: set[str] = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            if any(name == top or name.startswith(top + ".") for name in names):
                found.add(".".join(path.relative_to(SRC).with_suffix("").parts))
    return found


def test_every_cli_command_is_documented() -> None:
    """Each ``charging-api`` command is in architecture.md's CLI line and shown in README.md."""
    from charging_api.cli import _parser

    commands = next(
        action.choices
        for action in _parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    arch = (ROOT / "docs" / "architecture.md").read_text()
    cli_line = next(line for line in arch.splitlines() if line.strip().startswith("cli.py"))
    readme = (ROOT / "README.md").read_text()
    assert sorted(c for c in commands if c not in cli_line) == []
    assert sorted(c for c in commands if f"charging-api {c}" not in readme) == []


def test_architecture_says_which_modules_import_the_ocpp_library() -> None:
    """A layout line that says it imports the `ocpp` library names a package that really does."""
    importers = _importers_of("ocpp")
    assert importers and all(m.startswith("simulator") for m in importers), importers
    arch = (ROOT / "docs" / "architecture.md").read_text()
    claims = [
        line.split()[0].rstrip("/")
        for line in arch.splitlines()
        if "import" in line and "`ocpp` library" in line and line.startswith("  ")
        and "imports none" not in line
    ]  # fmt: skip
    assert claims == ["simulator"], claims


async def test_architecture_describes_the_cors_preflight_the_routes_answer() -> None:
    """The routes answer an OPTIONS preflight for an allowed origin, and the docs say so."""
    from charging_api.domain.models import Principal
    from charging_api.http.routes import HttpConfig, HttpRoutes

    def refuse(token: str) -> Principal:
        raise ValueError(token)

    routes = HttpRoutes(HttpConfig("t", ("https://app.example",)), dict, dict, refuse)
    reply = await routes("OPTIONS", "/health", {"Origin": "https://app.example"})
    assert reply is not None and reply[0] == 204
    assert ("Access-Control-Allow-Origin", "https://app.example") in reply[1]
    arch = " ".join((ROOT / "docs" / "architecture.md").read_text().split())
    assert "no CORS preflight" not in arch
    assert "`OPTIONS` as a CORS preflight" in arch

"""The AsyncAPI 3 document of /ws against the message models and docs/protocol.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from charging_api import __version__
from charging_api.api.asyncapi import asyncapi_document
from charging_api.api.messages import PUSH_TYPES, REQUESTS

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
NAME = re.compile(r"`([a-z]+(?:_[a-z]+)*)`")


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after ``heading``, header and rule skipped."""
    section = text.split(heading, 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    table: list[list[str]] = []
    started = False
    for line in section.splitlines():
        if line.startswith("|"):
            started = True
            table.append([cell.strip() for cell in line.strip("|").split("|")])
        elif started:
            break
    assert rows, heading
    return table[2:]


def documented_types() -> set[str]:
    """Every message type docs/protocol.md names in its request and push tables."""
    text = PROTOCOL_MD.read_text()
    names: set[str] = {"error"} if "`error` message" in text else set()
    for row in _table(text, "## Requests and their replies"):
        names.update(NAME.findall(row[0]))
        names.update(NAME.findall(row[2])[:1])  # the reply type comes first in its cell
    for row in _table(text, "## Pushes"):
        names.update(NAME.findall(row[0]))
    return names


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_protocol_md_documents_exactly_the_asyncapi_messages() -> None:
    """Every message type of the AsyncAPI document is in docs/protocol.md, and none else."""
    messages = set(asyncapi_document(__version__)["components"]["messages"])
    documented = documented_types()
    assert sorted(messages - documented) == [], "in the models, not documented"
    assert sorted(documented - messages) == [], "documented, but no such message"


def test_asyncapi_covers_the_models_and_resolves() -> None:
    """Each request carries its model's schema, replies and pushes are listed, refs resolve."""
    doc = asyncapi_document(__version__)
    assert doc["asyncapi"] == "3.0.0"
    messages = doc["components"]["messages"]
    assert set(REQUESTS) | {reply for _, reply in REQUESTS.values()} | PUSH_TYPES <= set(messages)
    start = messages["start_charging_request"]["payload"]["properties"]["data"]["$ref"]
    schema = doc["components"]["schemas"][start.rsplit("/", 1)[1]]
    assert schema["properties"]["connectorId"]["maximum"] == 255
    for ref in _refs(doc):
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert node, ref

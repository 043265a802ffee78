"""The AsyncAPI 3 document of the app WebSocket (``/ws``), generated from the message models.

Requests take their ``data`` schema from :data:`charging_api.api.messages.REQUESTS` (the same
pydantic models that validate them); replies, pushes (:data:`~charging_api.api.messages.PUSH_TYPES`)
and ``error`` share the envelope, their ``data`` described in docs/protocol.md. Nothing here is
written per message: a message added to the models appears in the document, and
``tests/unit/test_asyncapi.py`` holds docs/protocol.md to the same list.
"""

from __future__ import annotations

from typing import Any

from charging_api.api.messages import PUSH_TYPES, REQUESTS

__all__ = ["asyncapi_document", "message_types"]

_ENVELOPE_FIELDS: dict[str, Any] = {
    "id": {"type": ["string", "integer"], "description": "The request's id (replies), evt-<seq>"},
    "timestamp": {"type": "string", "description": "RFC 3339 UTC"},
}
_ERROR = {
    "type": "object",
    "properties": {
        "code": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
    "required": ["code", "message"],
}


def message_types() -> dict[str, str]:
    """Every message type on ``/ws`` -> ``"request"``, ``"reply"``, ``"push"`` or ``"error"``."""
    kinds: dict[str, str] = {}
    for request, (_, reply) in REQUESTS.items():
        kinds[request] = "request"
        kinds.setdefault(reply, "reply")
    for push in PUSH_TYPES:
        kinds[push] = "push"
    kinds["error"] = "error"
    return kinds


def _envelope(kind: str, data: dict[str, Any], *, seq: bool = False) -> dict[str, Any]:
    properties: dict[str, Any] = {
        **_ENVELOPE_FIELDS,
        "type": {"const": kind},
        "data": data,
        "error": _ERROR,
    }
    if seq:
        properties["seq"] = {"type": "integer", "minimum": 0}
    return {"type": "object", "properties": properties, "required": ["type"]}


def asyncapi_document(version: str) -> dict[str, Any]:
    """The whole document (AsyncAPI 3.0.0, schemas in JSON Schema)."""
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for kind, role in sorted(message_types().items()):
        if role == "request":
            model = REQUESTS[kind][0]
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in schema.pop("$defs", {}).items():
                schemas[name] = definition
            schemas[model.__name__] = schema
            data: dict[str, Any] = {"$ref": f"#/components/schemas/{model.__name__}"}
            summary = f"{kind}: answered with {REQUESTS[kind][1]}"
        else:
            data = {"type": "object"}
            summary = {"reply": "a reply", "push": "a push", "error": "a failed request"}[role]
        messages[kind] = {
            "name": kind,
            "title": kind,
            "summary": f"{summary} (see docs/protocol.md)",
            "contentType": "application/json",
            "payload": _envelope(kind, data, seq=role == "push"),
        }
    sent = [k for k, role in message_types().items() if role == "request"]
    received = [k for k, role in message_types().items() if role != "request"]
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "charging-api app protocol",
            "version": version,
            "description": "JSON text frames over WebSocket; see docs/protocol.md.",
        },
        "servers": {
            "app": {"host": "localhost:8080", "protocol": "ws", "pathname": "/ws"},
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in sorted(messages)},
            }
        },
        "operations": {
            "send": {
                "action": "receive",
                "channel": {"$ref": "#/channels/ws"},
                "summary": "What an app sends (the server receives)",
                "messages": [{"$ref": f"#/channels/ws/messages/{k}"} for k in sorted(sent)],
            },
            "receive": {
                "action": "send",
                "channel": {"$ref": "#/channels/ws"},
                "summary": "What the server sends",
                "messages": [{"$ref": f"#/channels/ws/messages/{k}"} for k in sorted(received)],
            },
        },
        "components": {"messages": messages, "schemas": schemas},
    }

"""OCPP-J framing without I/O: text in -> Call / CallResult / CallError, or a FrameError
carrying the CALLERROR to answer with. Frames out are built here too.

Error names are OCPP 1.6-J's (section 4.2.3). Choices where peers differ:
- not JSON, not a list, wrong length or element types, a message type id other than 2, 3, 4:
  ``FormationViolation`` (the ``ocpp`` library answers PropertyConstraintViolation to an
  unknown type id); the message id is answered as ``"-1"`` when none can be read (not a
  string of 1 to 36 characters).
- a CALLRESULT or CALLERROR is never answered, not even a malformed one, nor one that
  answers no CALL of ours: the server logs and ignores it.
- an action OCPP 1.6 does not define: ``NotImplemented`` ("not known by receiver");
  a 1.6 action a central system does not take (e.g. RemoteStartTransaction sent to us):
  ``NotSupported`` ("recognized but not supported"). The ``ocpp`` library answers the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

CALL = 2
CALLRESULT = 3
CALLERROR = 4
UNKNOWN_ID = "-1"


@dataclass(frozen=True, slots=True)
class Call:
    unique_id: str
    action: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallResult:
    unique_id: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CallError:
    unique_id: str
    code: str
    description: str
    details: dict[str, Any]


Frame = Call | CallResult | CallError


class FrameError(Exception):
    """A bad frame; ``answer`` says whether to reply with :meth:`to_frame` (never for a
    CALLRESULT/CALLERROR)."""

    def __init__(
        self, code: str, description: str, unique_id: str = UNKNOWN_ID, answer: bool = True
    ) -> None:
        super().__init__(description)
        self.code = code
        self.description = description
        self.unique_id = unique_id
        self.answer = answer

    def to_frame(self) -> bytes:
        return encode_error(self.unique_id, self.code, self.description)


def parse(text: str | bytes) -> Frame:
    """One OCPP-J frame -> Call / CallResult / CallError; FrameError says what to answer.

    The message type is read first: a malformed CALLRESULT or CALLERROR is never answered
    (``answer=False``: OCPP-J answers only CALLs); anything else that is malformed (not JSON,
    not an array, a type id other than 2/3/4, a bad CALL) is answered with FormationViolation.
    """
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError("FormationViolation", "Message is not valid JSON") from None
    if not isinstance(message, list) or not message:
        raise FrameError("FormationViolation", "Message must be a non-empty JSON array")
    kind = message[0]
    answer = not _is_int(kind) or kind not in (CALLRESULT, CALLERROR)
    unique_id = message[1] if len(message) > 1 else None
    if not isinstance(unique_id, str) or not unique_id or len(unique_id) > 36:
        raise FrameError(
            "FormationViolation",
            "Message id must be a string of 1 to 36 characters",
            answer=answer,
        )
    if not _is_int(kind):
        raise FrameError("FormationViolation", "Message type id must be an integer", unique_id)
    if kind == CALL:
        if len(message) != 4 or not isinstance(message[2], str):
            raise FrameError(
                "FormationViolation", "CALL must be [2, id, action, payload]", unique_id
            )
        if not isinstance(message[3], dict):
            raise FrameError("FormationViolation", "CALL payload must be an object", unique_id)
        return Call(unique_id, message[2], message[3])
    if kind == CALLRESULT:
        if len(message) != 3 or not isinstance(message[2], dict):
            raise FrameError("FormationViolation", "bad CALLRESULT", unique_id, answer=False)
        return CallResult(unique_id, message[2])
    if kind == CALLERROR:
        if len(message) not in (4, 5) or not isinstance(message[2], str):
            raise FrameError("FormationViolation", "bad CALLERROR", unique_id, answer=False)
        description = message[3] if isinstance(message[3], str) else ""
        details = message[4] if len(message) > 4 and isinstance(message[4], dict) else {}
        return CallError(unique_id, message[2], description, details)
    raise FrameError("FormationViolation", f"Unknown message type id {kind}", unique_id)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def encode_call(unique_id: str, action: str, payload: dict[str, Any]) -> bytes:
    return orjson.dumps([CALL, unique_id, action, payload])


def encode_result(unique_id: str, payload: dict[str, Any]) -> bytes:
    return orjson.dumps([CALLRESULT, unique_id, payload])


def encode_error(
    unique_id: str, code: str, description: str, details: dict[str, Any] | None = None
) -> bytes:
    return orjson.dumps([CALLERROR, unique_id, code, description[:255], details or {}])

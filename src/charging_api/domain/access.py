"""Who may do what. Pure functions, one rule each, so docs/protocol.md can list them 1:1.

Rules:
1. A user may charge with an id tag only if the tag is theirs: named in their token's ``idTag``
   claim, or registered to them in storage. An admin may use any tag. Tags compare
   case-insensitively (OCPP's CiString20, :func:`~charging_api.domain.models.id_tag_key`).
2. A user may act only as themselves: a ``userId`` in a request must be the token's user
   (admins may act for anyone).
3. A user may stop only transactions they own; an admin may stop any.
4. A user sees status and meter updates only of sessions they own (or asked to start);
   admins see everything they subscribe to. (Applied where updates are routed: events carry
   their owner, and the app door's hub delivers each to that owner's streams.)
5. A charge point never starts or stops anything for a user: only a user's own request causes
   a RemoteStart/RemoteStop.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from charging_api.domain.models import (
    IdTag,
    IdTagStatus,
    IdTagVerdict,
    Principal,
    id_tag_key,
)


def may_act_as(principal: Principal, user_id: str | None) -> bool:
    """Rule 2."""
    return user_id is None or user_id == principal.user_id or principal.is_admin


def may_use_id_tag(principal: Principal, user_id: str, tag: str, record: IdTag | None) -> bool:
    """Rule 1: ``record`` is what storage knows about ``tag`` (None if nothing)."""
    if principal.is_admin:
        return True
    if record is not None and record.user_id is not None:
        return record.user_id == user_id
    if user_id != principal.user_id:
        return False
    key = id_tag_key(tag)
    return any(id_tag_key(claimed) == key for claimed in principal.id_tags)


def may_stop(principal: Principal, owner_user_id: str | None) -> bool:
    """Rule 3: ``owner_user_id`` is the transaction's owner (None: nobody's)."""
    return principal.is_admin or (owner_user_id is not None and owner_user_id == principal.user_id)


def verdict_for(record: IdTag | None, now: datetime) -> IdTagVerdict:
    """What Authorize/StartTransaction answer for an id tag (OCPP IdTagInfo)."""
    if record is None:
        return IdTagVerdict(IdTagStatus.INVALID)
    if record.status is not IdTagStatus.ACCEPTED:
        return IdTagVerdict(record.status, record.expiry, record.parent_id_tag)
    if record.expiry is not None and record.expiry <= now:
        return IdTagVerdict(IdTagStatus.EXPIRED, record.expiry, record.parent_id_tag)
    return IdTagVerdict(IdTagStatus.ACCEPTED, record.expiry, record.parent_id_tag)


_PBKDF2_ROUNDS = 120_000


def hash_password(password: str) -> str:
    """Salted PBKDF2-SHA256 for charge point Basic-auth passwords (Security Profile 1/2)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _PBKDF2_ROUNDS)
    return f"pbkdf2_sha256${_PBKDF2_ROUNDS}${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against :func:`hash_password` output."""
    try:
        scheme, rounds, salt_hex, digest_hex = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt_hex), int(rounds))
    return hmac.compare_digest(digest.hex(), digest_hex)

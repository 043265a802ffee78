"""JWT -> Principal. Pure: no I/O, no clock but the one passed in.

The algorithm is pinned (``alg: none`` and every algorithm but the configured one are refused,
which also stops an HS256-with-the-public-key confusion). The user id is claim ``sub``, or
``userId`` for tokens made by the seed's backend.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import jwt
import jwt.types

from charging_api.domain.models import Principal, Role
from charging_api.errors import AuthenticationFailed, TokenExpired


class TokenVerifier:
    def __init__(
        self,
        secret: str,
        algorithm: str = "HS256",
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 0.0,
    ) -> None:
        self._secret = secret
        self._algorithms = [algorithm]
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway

    def verify(self, token: str) -> Principal:
        """The token's principal, or AuthenticationFailed/TokenExpired saying why not."""
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed("A JWT is required in data.token")
        options: jwt.types.Options = {"require": ["exp"], "verify_aud": self._audience is not None}
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=self._algorithms,
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired("Token has expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthenticationFailed("Token is not valid yet") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationFailed(f"Token lacks the {exc.claim} claim") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationFailed("Token issuer is not accepted") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed("Token audience is not accepted") from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationFailed("Token algorithm is not accepted") from None
        except jwt.InvalidTokenError:
            raise AuthenticationFailed("Invalid token") from None
        return principal_from_claims(claims)


def principal_from_claims(claims: dict[str, Any]) -> Principal:
    user = claims.get("sub") or claims.get("userId")
    if not isinstance(user, str) or not user:
        raise AuthenticationFailed("Token has no user claim (sub or userId)")
    role = Role.ADMIN if claims.get("role") == "admin" else Role.USER
    tags: set[str] = set()
    raw_tags = claims.get("idTag")
    if isinstance(raw_tags, str) and raw_tags:
        tags.add(raw_tags)
    elif isinstance(raw_tags, list):
        tags.update(t for t in raw_tags if isinstance(t, str) and t)
    exp = claims.get("exp")
    expires = datetime.fromtimestamp(float(exp), UTC) if isinstance(exp, int | float) else None
    return Principal(user, role, frozenset(tags), expires)


def issue_token(
    secret: str,
    user_id: str,
    *,
    expires_in: float,
    id_tag: str | None = None,
    role: str | None = None,
    algorithm: str = "HS256",
    issuer: str | None = None,
    audience: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``charging-api token`` and the tests."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": issued + int(expires_in)}
    if id_tag:
        claims["idTag"] = id_tag
    if role:
        claims["role"] = role
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    return jwt.encode(claims, secret, algorithm=algorithm)

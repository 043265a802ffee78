"""JWT -> Principal. Verification does no I/O (:func:`read_key_file` is the only reader).

The algorithm is pinned: ``JWT_ALGORITHM`` alone is accepted, so ``alg: none`` and every other
algorithm are refused before any key is touched. With an HMAC algorithm (HS256, the default)
the key is ``JWT_SECRET``; with an asymmetric one (RS*/PS*/ES*) it is the identity provider's
public key (a PEM file) or a key from a local JWKS file picked by the token's ``kid``. Because
the algorithm is pinned and an asymmetric verifier holds no shared secret, an HS256 token
signed with the public key (the classic key confusion) is refused.

Checked: signature, ``exp`` (required; expired -> TOKEN_EXPIRED), ``nbf`` and ``iat`` (in the
future -> AUTHENTICATION_FAILED), ``iss`` and ``aud`` when configured, and a user claim (``sub``,
or ``userId`` for tokens made by the seed's backend). Every failure is an
:class:`AuthenticationFailed`; the message never echoes the token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import jwt.types
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from charging_api.domain.models import Principal, Role
from charging_api.errors import AuthenticationFailed, TokenExpired

#: Algorithms the verifier knows, by key family.
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
#: Every JWT_ALGORITHM value: HMAC with JWT_SECRET, or a public key (JWT_PUBLIC_KEY_FILE or
#: JWT_JWKS_FILE). The configuration validates against this set; it is written only here.
ALGORITHMS = HMAC_ALGORITHMS | RSA_ALGORITHMS | frozenset(EC_ALGORITHMS)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

#: ``exp`` must fall in [1970-01-01, 10000-01-01): what a datetime (and the wire's
#: RFC 3339 text) can hold.
MIN_EXP = 0
MAX_EXP = 253_402_300_800


def read_key_file(path: Path | str | None) -> str | None:
    """The text of a PEM or JWKS file, read once at start-up (None when not configured)."""
    if path is None:
        return None
    return Path(path).read_text(encoding="utf-8")


class TokenVerifier:
    """Verifies app tokens with one pinned algorithm and one key source."""

    def __init__(
        self,
        secret: str,
        algorithm: str = "HS256",
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 0.0,
        *,
        public_key: str | None = None,
        jwks: str | None = None,
    ) -> None:
        """``public_key`` is PEM text (a public key or a certificate); ``jwks`` is JWKS JSON
        text. Exactly one of them is needed for an asymmetric ``algorithm``, neither for HMAC.
        A bad key raises ValueError here, at start-up, not at the first login."""
        self._algorithm = algorithm
        self._algorithms = [algorithm]
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._secret: str | None = None
        self._public_key: PublicKey | None = None
        self._keys_by_kid: dict[str, PublicKey] | None = None
        if algorithm in HMAC_ALGORITHMS:
            if public_key is not None or jwks is not None:
                raise ValueError(f"{algorithm} verifies with the secret; no public key is used")
            if not secret:
                raise ValueError(f"{algorithm} needs a non-empty secret")
            self._secret = secret
        elif algorithm in RSA_ALGORITHMS or algorithm in EC_ALGORITHMS:
            if (public_key is None) == (jwks is None):
                raise ValueError(f"{algorithm} needs exactly one of a PEM public key and a JWKS")
            if public_key is not None:
                self._public_key = _check_key(_load_pem(public_key), algorithm, "the public key")
            else:
                assert jwks is not None
                self._keys_by_kid = _load_jwks(jwks, algorithm)
        else:
            raise ValueError(f"unsupported JWT algorithm {algorithm}")

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def verify(self, token: str) -> Principal:
        """The token's principal, or AuthenticationFailed/TokenExpired saying why not."""
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed("A JWT is required in data.token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise AuthenticationFailed("Invalid token") from None
        if header.get("alg") != self._algorithm:
            raise AuthenticationFailed("Token algorithm is not accepted")
        key = self._key_for(header)
        options: jwt.types.Options = {
            "require": ["exp"],
            "verify_aud": self._audience is not None,
            "verify_iss": self._issuer is not None,
        }
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
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
        except jwt.InvalidSignatureError:
            raise AuthenticationFailed("Token signature is not valid") from None
        except jwt.InvalidTokenError:
            raise AuthenticationFailed("Invalid token") from None
        except (OverflowError, ValueError, TypeError):
            # A claim PyJWT cannot compare (e.g. ``exp: Infinity``, which Python's JSON reads).
            raise AuthenticationFailed("Invalid token") from None
        return principal_from_claims(claims)

    def _key_for(self, header: dict[str, Any]) -> str | PublicKey:
        if self._secret is not None:
            return self._secret
        if self._public_key is not None:
            return self._public_key
        keys = self._keys_by_kid or {}
        kid = header.get("kid")
        if kid is None:
            if len(keys) == 1:
                return next(iter(keys.values()))
            raise AuthenticationFailed("Token has no kid and the key set has several keys")
        if not isinstance(kid, str) or kid not in keys:
            raise AuthenticationFailed("Token key id is not known")
        return keys[kid]


def _load_pem(text: str) -> Any:
    data = text.encode()
    if b"PRIVATE KEY" in data:
        raise ValueError("the public key file holds a private key; configure the public key")
    try:
        if b"BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return load_pem_public_key(data)
    except ValueError:
        raise ValueError("the public key file is not a PEM public key or certificate") from None


def _check_key(key: Any, algorithm: str, what: str) -> PublicKey:
    if algorithm in RSA_ALGORITHMS:
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"{what} is not an RSA public key, as {algorithm} needs")
        if key.key_size < 2048:
            raise ValueError(f"{what} is a {key.key_size}-bit RSA key; at least 2048 bits needed")
        return key
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{what} is not an EC public key, as {algorithm} needs")
    if key.curve.name != EC_ALGORITHMS[algorithm]:
        raise ValueError(
            f"{what} is on curve {key.curve.name}; {algorithm} needs {EC_ALGORITHMS[algorithm]}"
        )
    return key


def _load_jwks(text: str, algorithm: str) -> dict[str, PublicKey]:
    """Signature keys of the right family by ``kid``; other keys are left out."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ValueError("the JWKS file is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS file has no keys list")
    wanted_kty = "RSA" if algorithm in RSA_ALGORITHMS else "EC"
    keys: dict[str, PublicKey] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("kty") != wanted_kty:
            continue
        if entry.get("use", "sig") != "sig" or entry.get("alg", algorithm) != algorithm:
            continue
        if "d" in entry:
            raise ValueError(f"the JWKS file holds a private key (entry {index}); remove it")
        kid = entry.get("kid")
        name = f"JWKS key {kid!r}" if kid else f"JWKS entry {index}"
        try:
            jwk = jwt.PyJWK(entry, algorithm)
        except jwt.PyJWKError as exc:
            raise ValueError(f"{name} cannot be used: {exc}") from None
        key = _check_key(jwk.key, algorithm, name)
        keys[kid if isinstance(kid, str) and kid else f"#{index}"] = key
    if not keys:
        raise ValueError(f"the JWKS file has no {wanted_kty} signature key for {algorithm}")
    return keys


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
    return Principal(
        user, role, frozenset(tags), _expiry(claims.get("exp")), _groups(claims.get("groups"))
    )


#: The longest group name taken from a token (the longest tariff scope name).
MAX_GROUP_LENGTH = 128


def _groups(raw: Any) -> frozenset[str]:
    """The ``groups`` claim: a string or a list of strings, as identity providers put it.
    Entries that are not strings of 1-128 characters are left out, like malformed ``idTag``
    entries: the token is signed, and groups only choose a tariff, so a provider's odd entry
    must not lock its users out."""
    names = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
    return frozenset(g for g in names if isinstance(g, str) and 1 <= len(g) <= MAX_GROUP_LENGTH)


def _expiry(exp: Any) -> datetime | None:
    """``exp`` as a datetime: a JSON number of seconds up to the end of year 9999. A numeric
    string (which PyJWT lets through) or a later date is refused, never ignored."""
    if exp is None:
        return None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise AuthenticationFailed("Token exp claim must be a number (seconds since 1970)")
    if not MIN_EXP <= exp < MAX_EXP:
        raise AuthenticationFailed("Token exp claim is outside the years 1970-9999")
    return datetime.fromtimestamp(float(exp), UTC)


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
    kid: str | None = None,
    groups: Sequence[str] = (),
) -> str:
    """A signed token for ``charging-api token`` and the tests (``secret`` is the HMAC secret,
    or the PEM private key for an asymmetric ``algorithm``)."""
    issued = int(now if now is not None else time.time())
    expires = issued + int(expires_in)
    if expires >= MAX_EXP:
        raise ValueError("the token would expire after the year 9999; choose a shorter lifetime")
    claims: dict[str, Any] = {"sub": user_id, "iat": issued, "exp": expires}
    if id_tag:
        claims["idTag"] = id_tag
    if role:
        claims["role"] = role
    if groups:
        claims["groups"] = list(groups)
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, secret, algorithm=algorithm, headers=headers)

"""JWT verification (pure, then over the socket) and a token's life on a live connection.

The forgery catalogue here (:func:`forgeries`) is also thrown at the server by
tests/security/test_app_attacks.py.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from charging_api.api.auth import TokenVerifier
from charging_api.config import ConfigError
from charging_api.domain.models import Role
from charging_api.errors import AuthenticationFailed, TokenExpired
from tests.conftest import (
    SECRET,
    AppClient,
    RunningServer,
    app_client,
    make_settings,
    running_server,
)

AUTH_FAILED = "AUTHENTICATION_FAILED"
EXPIRED = "TOKEN_EXPIRED"

# ----------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{segment(header)}.{segment(claims)}.{signature}"


def hmac_signed(key: bytes, claims: dict[str, Any], alg: str = "HS256") -> str:
    """An HMAC token made by hand: PyJWT refuses a PEM as an HMAC key, attackers do not."""
    signing_input = f"{segment({'alg': alg, 'typ': 'JWT'})}.{segment(claims)}"
    digest = hmac.new(key, signing_input.encode(), getattr(hashlib, f"sha{alg[2:]}")).digest()
    return f"{signing_input}.{b64(digest)}"


def good_claims(user: str = "alice", **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user, "iat": now, "exp": now + 3600}
    claims.update(extra)
    return claims


@functools.cache
def rsa_key(name: str = "idp") -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def ec_key(name: str = "idp", curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1() if curve == "P-384" else ec.SECP256R1())


def private_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, **extra: Any) -> dict[str, Any]:
    algorithm: Any = (
        jwt.algorithms.RSAAlgorithm
        if isinstance(key, rsa.RSAPrivateKey)
        else jwt.algorithms.ECAlgorithm
    )
    jwk: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    jwk.update(extra)
    return jwk


def forgeries(secret: str = SECRET) -> dict[str, tuple[str, str]]:
    """Every way to get a token wrong, for an HS256 server with ``secret``: name -> (token, code)."""
    now = int(time.time())
    good = good_claims()
    valid = jwt.encode(good, secret, algorithm="HS256")
    header, _, signature = valid.split(".")
    attacker = rsa_key("attacker")
    return {
        "alg none": (unsigned({"alg": "none", "typ": "JWT"}, good), AUTH_FAILED),
        "alg none with the real signature": (
            unsigned({"alg": "none", "typ": "JWT"}, good, signature),
            AUTH_FAILED,
        ),
        "wrong secret": (
            jwt.encode(good, "another-secret-0123456789-abcdefghijklm", algorithm="HS256"),
            AUTH_FAILED,
        ),
        "payload swapped for an admin role": (
            f"{header}.{segment(good_claims(role='admin'))}.{signature}",
            AUTH_FAILED,
        ),
        "signature stripped": (f"{header}.{segment(good)}.", AUTH_FAILED),
        "another HMAC algorithm (HS512)": (
            hmac_signed(secret.encode(), good, "HS512"),
            AUTH_FAILED,
        ),
        "attacker's RSA key embedded as jwk": (
            jwt.encode(
                good,
                private_pem(attacker),
                algorithm="RS256",
                headers={"jwk": public_jwk(attacker)},
            ),
            AUTH_FAILED,
        ),
        "expired": (
            jwt.encode({"sub": "alice", "iat": now - 120, "exp": now - 60}, secret, "HS256"),
            EXPIRED,
        ),
        "not valid yet (nbf)": (
            jwt.encode(good_claims(nbf=now + 600), secret, algorithm="HS256"),
            AUTH_FAILED,
        ),
        "issued in the future (iat)": (
            jwt.encode(good_claims(iat=now + 600, exp=now + 4200), secret, algorithm="HS256"),
            AUTH_FAILED,
        ),
        "no user claim": (
            jwt.encode({"iat": now, "exp": now + 3600, "role": "admin"}, secret, "HS256"),
            AUTH_FAILED,
        ),
        "empty user claim": (
            jwt.encode(good_claims(user=""), secret, algorithm="HS256"),
            AUTH_FAILED,
        ),
        "no exp": (jwt.encode({"sub": "alice", "iat": now}, secret, "HS256"), AUTH_FAILED),
        "not a JWT": ("not.a.jwt", AUTH_FAILED),
        # exp edge cases (issue 10 item 9): once INTERNAL_ERROR, or accepted and then ignored.
        "exp after year 9999": (
            jwt.encode(good_claims(exp=now + 300_000_000_000), secret, "HS256"),
            AUTH_FAILED,
        ),
        "exp as a numeric string": (
            jwt.encode(good_claims(exp=str(now + 3600)), secret, "HS256"),
            AUTH_FAILED,
        ),
        "exp Infinity": (hmac_signed(secret.encode(), good_claims(exp=float("inf"))), AUTH_FAILED),
    }


# ------------------------------------------------------------------ pure: HMAC verifier


def test_a_valid_token_gives_its_principal() -> None:
    """sub, role admin and idTag (string or list) become the principal."""
    verifier = TokenVerifier(SECRET)
    token = jwt.encode(good_claims(role="admin", idTag=["T1", "", 7, "T2"]), SECRET, "HS256")
    principal = verifier.verify(token)
    assert principal.user_id == "alice"
    assert principal.role is Role.ADMIN
    assert principal.id_tags == frozenset({"T1", "T2"})
    assert principal.expires_at is not None


def test_the_groups_claim_is_carried_and_odd_entries_left_out() -> None:
    """groups (a list or one string) become the principal's groups (they choose a group's
    tariff); entries that are not strings of 1-128 characters are left out, the token stands."""
    verifier = TokenVerifier(SECRET)
    listed = verifier.verify(jwt.encode(good_claims(groups=["fleet", "staff"]), SECRET, "HS256"))
    assert listed.groups == frozenset({"fleet", "staff"})
    single = verifier.verify(jwt.encode(good_claims(groups="fleet"), SECRET, "HS256"))
    assert single.groups == frozenset({"fleet"})
    assert verifier.verify(jwt.encode(good_claims(), SECRET, "HS256")).groups == frozenset()
    odd = good_claims(groups=["fleet", 1, "", "x" * 129, {"g": 1}])
    assert verifier.verify(jwt.encode(odd, SECRET, "HS256")).groups == frozenset({"fleet"})
    shaped = good_claims(groups={"fleet": True})
    assert verifier.verify(jwt.encode(shaped, SECRET, "HS256")).groups == frozenset()


def test_the_seed_backends_userid_claim_is_the_user() -> None:
    """A token with userId instead of sub names the user."""
    now = int(time.time())
    token = jwt.encode({"userId": "user-123", "exp": now + 60}, SECRET, "HS256")
    assert TokenVerifier(SECRET).verify(token).user_id == "user-123"


@pytest.mark.parametrize("name", sorted(forgeries()))
def test_every_forgery_is_refused_with_its_code(name: str) -> None:
    """Each forged or invalid token raises AuthenticationFailed with the expected code."""
    token, code = forgeries()[name]
    with pytest.raises(AuthenticationFailed) as caught:
        TokenVerifier(SECRET).verify(token)
    assert caught.value.code == code
    assert token not in caught.value.message


def test_expired_is_its_own_error_type() -> None:
    """An expired token raises TokenExpired, a subclass callers can tell apart."""
    with pytest.raises(TokenExpired):
        TokenVerifier(SECRET).verify(forgeries()["expired"][0])


def test_leeway_tolerates_small_clock_skew() -> None:
    """A token that expired 2 s ago passes a verifier with 5 s leeway, not one with none."""
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now - 60, "exp": now - 2}, SECRET, "HS256")
    assert TokenVerifier(SECRET, leeway=5).verify(token).user_id == "alice"
    with pytest.raises(TokenExpired):
        TokenVerifier(SECRET).verify(token)


@pytest.mark.parametrize(
    ("claims", "accepted"),
    [
        ({"iss": "https://idp.example", "aud": "charging-api"}, True),
        ({"iss": "https://idp.example", "aud": ["other", "charging-api"]}, True),
        ({"iss": "https://evil.example", "aud": "charging-api"}, False),
        ({"aud": "charging-api"}, False),
        ({"iss": "https://idp.example", "aud": "other"}, False),
        ({"iss": "https://idp.example"}, False),
    ],
)
def test_issuer_and_audience_are_checked_when_configured(
    claims: dict[str, Any], accepted: bool
) -> None:
    """With JWT_ISSUER/JWT_AUDIENCE set, a missing or different iss/aud is refused."""
    verifier = TokenVerifier(SECRET, issuer="https://idp.example", audience="charging-api")
    token = jwt.encode(good_claims(**claims), SECRET, "HS256")
    if accepted:
        assert verifier.verify(token).user_id == "alice"
    else:
        with pytest.raises(AuthenticationFailed) as caught:
            verifier.verify(token)
        assert caught.value.code == AUTH_FAILED


def test_iss_and_aud_are_ignored_when_not_configured() -> None:
    """Without JWT_ISSUER/JWT_AUDIENCE any iss/aud passes (the seed's tokens have none)."""
    token = jwt.encode(good_claims(iss="whoever", aud="whatever"), SECRET, "HS256")
    assert TokenVerifier(SECRET).verify(token).user_id == "alice"


@pytest.mark.parametrize("token", ["", None, 42])
def test_a_missing_token_is_refused(token: Any) -> None:
    """An empty or non-string token is AUTHENTICATION_FAILED."""
    with pytest.raises(AuthenticationFailed):
        TokenVerifier(SECRET).verify(token)


# -------------------------------------------------------------- pure: asymmetric keys


def test_rs256_with_a_pem_public_key() -> None:
    """RS256 tokens of the identity provider pass; another key, HS256-with-the-PEM, none fail."""
    idp = rsa_key()
    verifier = TokenVerifier(SECRET, "RS256", public_key=public_pem(idp))
    assert verifier.verify(jwt.encode(good_claims(), private_pem(idp), "RS256")).user_id == "alice"
    refused = {
        "another key": jwt.encode(good_claims(), private_pem(rsa_key("attacker")), "RS256"),
        "key confusion": hmac_signed(public_pem(idp).encode(), good_claims()),
        "shared secret": jwt.encode(good_claims(), SECRET, "HS256"),
        "alg none": unsigned({"alg": "none"}, good_claims()),
        "PS256 with the right key": jwt.encode(good_claims(), private_pem(idp), "PS256"),
    }
    for name, token in refused.items():
        with pytest.raises(AuthenticationFailed) as caught:
            verifier.verify(token)
        assert caught.value.code == AUTH_FAILED, name


def test_a_pem_certificate_is_accepted_as_the_public_key() -> None:
    """JWT_PUBLIC_KEY_FILE may hold the identity provider's certificate."""
    idp = rsa_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp.example")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(idp.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(idp, hashes.SHA256())
    )
    verifier = TokenVerifier(
        SECRET, "RS256", public_key=cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    assert verifier.verify(jwt.encode(good_claims(), private_pem(idp), "RS256")).user_id == "alice"


def jwks_text() -> str:
    """Two ES256 keys, plus keys the ES256 verifier must leave out."""
    return json.dumps(
        {
            "keys": [
                public_jwk(ec_key("k1"), kid="k1", use="sig", alg="ES256"),
                public_jwk(ec_key("k2"), kid="k2"),
                public_jwk(ec_key("enc"), kid="enc", use="enc"),
                public_jwk(rsa_key(), kid="rsa"),
                {"kty": "oct", "kid": "oct", "k": b64(SECRET.encode())},
            ]
        }
    )


def es256(key_name: str, kid: str | None, claims: dict[str, Any] | None = None) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(
        claims or good_claims(), private_pem(ec_key(key_name)), "ES256", headers=headers
    )


def test_es256_with_a_jwks_picks_the_key_by_kid() -> None:
    """Each kid verifies with its own key; unknown kid, wrong key, missing kid are refused."""
    verifier = TokenVerifier(SECRET, "ES256", jwks=jwks_text())
    assert verifier.verify(es256("k1", "k1")).user_id == "alice"
    assert verifier.verify(es256("k2", "k2")).user_id == "alice"
    refused = {
        "unknown kid": es256("k1", "k3"),
        "kid of another key": es256("k1", "k2"),
        "encryption key": es256("enc", "enc"),
        "no kid, several keys": es256("k1", None),
        "symmetric key from the set": jwt.encode(
            good_claims(), SECRET, "HS256", headers={"kid": "oct"}
        ),
        "kid not a string": unsigned({"alg": "ES256", "kid": ["k1"]}, good_claims(), "AAAA"),
    }
    for name, token in refused.items():
        with pytest.raises(AuthenticationFailed) as caught:
            verifier.verify(token)
        assert caught.value.code == AUTH_FAILED, name


def test_a_jwks_with_one_key_accepts_tokens_without_kid() -> None:
    """With a single usable key the kid is optional."""
    verifier = TokenVerifier(
        SECRET, "ES256", jwks=json.dumps({"keys": [public_jwk(ec_key("k1"), kid="k1")]})
    )
    assert verifier.verify(es256("k1", None)).user_id == "alice"
    with pytest.raises(AuthenticationFailed):
        verifier.verify(es256("k2", None))


@pytest.mark.parametrize(
    ("algorithm", "material", "problem"),
    [
        ("RS256", {}, "exactly one"),
        ("RS256", {"public_key": "pem", "jwks": "{}"}, "exactly one"),
        ("RS256", {"public_key": "not a pem"}, "not a PEM"),
        ("RS256", {"public_key": "private"}, "private key"),
        ("RS256", {"public_key": "ec"}, "not an RSA public key"),
        ("RS256", {"public_key": "rsa1024"}, "1024-bit"),
        ("ES256", {"public_key": "rsa"}, "not an EC public key"),
        ("ES256", {"public_key": "p384"}, "curve secp384r1"),
        ("ES256", {"jwks": "[]"}, "no keys list"),
        ("ES256", {"jwks": "{"}, "not JSON"),
        ("ES256", {"jwks": "rsa-only"}, "no EC signature key"),
        ("ES256", {"jwks": "private"}, "private key"),
        ("HS256", {"public_key": "rsa"}, "secret"),
        ("none", {}, "unsupported"),
    ],
)
def test_bad_key_configuration_fails_at_start_up(
    algorithm: str, material: dict[str, str], problem: str
) -> None:
    """A missing, private, wrong-family or weak key is a ValueError when the verifier is built."""
    texts = {
        "private": private_pem(rsa_key()),
        "ec": public_pem(ec_key()),
        "rsa": public_pem(rsa_key()),
        "p384": public_pem(ec_key("p384", "P-384")),
        "rsa1024": public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
    }
    jwks = {
        "rsa-only": json.dumps({"keys": [public_jwk(rsa_key(), kid="r")]}),
        "private": json.dumps({"keys": [json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key()))]}),
    }
    kwargs: dict[str, Any] = {}
    if "public_key" in material:
        kwargs["public_key"] = texts.get(material["public_key"], material["public_key"])
    if "jwks" in material:
        kwargs["jwks"] = jwks.get(material["jwks"], material["jwks"])
    with pytest.raises(ValueError, match=problem):
        TokenVerifier(SECRET, algorithm, **kwargs)


# ------------------------------------------------------------------------------ config


def test_config_accepts_an_asymmetric_algorithm_with_a_key_file(tmp_path: Path) -> None:
    """JWT_ALGORITHM=RS256 with JWT_PUBLIC_KEY_FILE loads; the key file must exist."""
    pem = tmp_path / "idp.pem"
    pem.write_text(public_pem(rsa_key()))
    settings = make_settings(tmp_path, jwt_algorithm="rs256", jwt_public_key_file=pem)
    assert settings.jwt_algorithm == "RS256"
    with pytest.raises(ConfigError, match="JWT_PUBLIC_KEY_FILE"):
        make_settings(tmp_path, jwt_algorithm="RS256", jwt_public_key_file=tmp_path / "absent")


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"jwt_algorithm": "none"}, "JWT_ALGORITHM"),
        ({"jwt_algorithm": "RS256"}, "needs exactly one of JWT_PUBLIC_KEY_FILE"),
        (
            {"jwt_algorithm": "ES256", "jwt_public_key_file": "key", "jwt_jwks_file": "key"},
            "needs exactly one",
        ),
        ({"jwt_algorithm": "HS256", "jwt_public_key_file": "key"}, "asymmetric"),
    ],
)
def test_config_refuses_an_unusable_jwt_setup(
    tmp_path: Path, overrides: dict[str, Any], problem: str
) -> None:
    """Unknown algorithm, asymmetric without a key, HMAC with a key: one ConfigError line."""
    key = tmp_path / "key.pem"
    key.write_text(public_pem(ec_key()))
    values = {k: (key if v == "key" else v) for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=problem):
        make_settings(tmp_path, **values)


# --------------------------------------------------------------------- over the socket


async def auth_failure(client: AppClient, token: str) -> dict[str, Any]:
    reply = await client.request("auth_request", {"token": token})
    assert reply["type"] == "auth_response", reply
    assert reply["data"]["success"] is False
    assert reply["data"]["message"] == reply["error"]["message"]
    return reply


@pytest.mark.parametrize(("forgery", "code"), [("wrong secret", AUTH_FAILED), ("expired", EXPIRED)])
async def test_auth_response_carries_the_failure_code(
    server: RunningServer, forgery: str, code: str
) -> None:
    """A refused token is an auth_response with success false and the code; still not logged in."""
    async with app_client(server) as client:
        reply = await auth_failure(client, forgeries()[forgery][0])
        assert reply["error"]["code"] == code
        after = await client.request("get_state")
        assert after["error"]["code"] == "NOT_AUTHENTICATED"


async def test_exp_edge_cases_are_authentication_failed_and_the_socket_lives_on(
    server: RunningServer,
) -> None:
    """exp past 9999, as a numeric string, or Infinity: AUTHENTICATION_FAILED, never
    INTERNAL_ERROR, and the same socket then logs in with a good token."""
    catalogue = forgeries()
    async with app_client(server) as client:
        for name in ("exp after year 9999", "exp as a numeric string", "exp Infinity"):
            reply = await auth_failure(client, catalogue[name][0])
            assert reply["error"]["code"] == AUTH_FAILED, (name, reply)
            assert "exp" in reply["error"]["message"] or reply["error"]["message"] == (
                "Invalid token"
            )
        ok = await client.request("auth_request", {"token": server.token("alice")})
        assert ok["data"]["success"] is True


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_an_asymmetric_server_over_the_socket(tmp_path: Path, algorithm: str) -> None:
    """RS256 (PEM file) / ES256 (JWKS file): the IdP's token logs in, forgeries do not."""
    if algorithm == "RS256":
        key_file = tmp_path / "idp.pem"
        key_file.write_text(public_pem(rsa_key()))
        settings = make_settings(tmp_path, jwt_algorithm=algorithm, jwt_public_key_file=key_file)
        valid = jwt.encode(good_claims(), private_pem(rsa_key()), "RS256")
        forged = [
            hmac_signed(public_pem(rsa_key()).encode(), good_claims()),
            jwt.encode(good_claims(), private_pem(rsa_key("attacker")), "RS256"),
        ]
    else:
        key_file = tmp_path / "jwks.json"
        key_file.write_text(jwks_text())
        settings = make_settings(tmp_path, jwt_algorithm=algorithm, jwt_jwks_file=key_file)
        valid = es256("k2", "k2")
        forged = [es256("k1", "k2"), jwt.encode(good_claims(), SECRET, "HS256")]
    async with running_server(settings) as running, app_client(running) as client:
        for token in forged:
            assert (await auth_failure(client, token))["error"]["code"] == AUTH_FAILED
        ok = await client.request("auth_request", {"token": valid})
        assert ok["data"]["success"] is True and ok["data"]["userId"] == "alice"


# ------------------------------------------------------- token expiry on a live connection
# The deadline rules themselves (expiry, warning, grace, SESSION_TIMEOUT cap, revival) are unit
# tests of the session object: tests/unit/test_app_session.py. One end-to-end test remains.


def wire_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def closed(client: AppClient, timeout: float = 10) -> tuple[int | None, str | None]:
    await asyncio.wait_for(client.ws.wait_closed(), timeout)
    return client.ws.close_code, client.ws.close_reason


async def test_session_expiring_comes_before_expiry_and_a_fresh_token_keeps_the_session(
    tmp_path: Path,
) -> None:
    """session_expiring precedes expiresAt; a refreshed session outlives the old token."""
    settings = make_settings(tmp_path, token_expiry_warning=2, token_expiry_grace=1)
    async with running_server(settings) as server:
        short = server.token("alice", expires_in=3)
        async with app_client(server) as kept, app_client(server) as lapsed:
            first = await kept.request("auth_request", {"token": short})
            await lapsed.request("auth_request", {"token": short})
            session_id = first["data"]["sessionId"]
            expires_at = wire_time(first["data"]["expiresAt"])
            warning = await kept.push(
                "session_expiring", where=lambda m: m["data"]["sessionId"] == session_id
            )
            assert dt.datetime.now(dt.UTC) < expires_at
            assert warning["data"]["expiresAt"] == first["data"]["expiresAt"]

            fresh = await kept.request("auth_request", {"token": server.token("alice")})
            assert fresh["data"]["success"] is True
            assert fresh["data"]["sessionId"] == session_id
            assert wire_time(fresh["data"]["expiresAt"]) > expires_at

            assert await closed(lapsed) == (1008, "token expired")
            state = await kept.request("get_state")
            assert state["type"] == "state" and "error" not in state


async def test_a_refresh_cannot_change_the_user_or_break_the_session(
    server: RunningServer,
) -> None:
    """auth_request with another user's token, or a bad one, fails and leaves the session as it was."""
    async with app_client(server, server.token("alice")) as client:
        other = await auth_failure(client, server.token("bob"))
        assert other["error"]["code"] == AUTH_FAILED
        bad = await auth_failure(client, forgeries()["wrong secret"][0])
        assert bad["error"]["code"] == AUTH_FAILED
        named = await client.request(
            "auth_request", {"token": server.token("alice"), "userId": "bob"}
        )
        assert named["error"]["code"] == AUTH_FAILED
        state = await client.request("get_state")
        assert state["type"] == "state" and "error" not in state
        again = await client.request("auth_request", {"token": server.token("alice")})
        assert again["data"]["userId"] == "alice"


async def test_connection_timeout_closes_only_the_idle_connection(tmp_path: Path) -> None:
    """CONNECTION_TIMEOUT (ms): a client that sends nothing is closed (1000), a talking one lives."""
    settings = make_settings(tmp_path, connection_timeout=2000)
    async with (
        running_server(settings) as server,
        app_client(server, server.token("alice")) as idle,
        app_client(server, server.token("bob")) as talking,
    ):
        idle_closed = asyncio.ensure_future(closed(idle))
        async with asyncio.timeout(15):
            while not idle_closed.done():
                assert (await talking.request("heartbeat"))["type"] == "heartbeat"
                await asyncio.wait([idle_closed], timeout=0.5)
        assert idle_closed.result() == (1000, "idle timeout")
        state = await talking.request("get_state")
        assert state["type"] == "state" and "error" not in state

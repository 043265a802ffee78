"""Settings: the seed's keys and units, one clear line per bad value, the production guard."""

from __future__ import annotations

import pytest

from charging_api.config import ConfigError, Environment, load_settings


def test_defaults_are_the_seeds() -> None:
    """Unset keys give the seed's defaults, with its milliseconds turned into seconds."""
    s = load_settings(_env_file=None)
    assert (s.ws_api_host, s.ws_api_port, s.ocpp_port) == ("localhost", 8082, 8081)
    assert (s.heartbeat_interval, s.session_timeout, s.connection_timeout) == (30.0, 3600.0, 300.0)
    assert s.jwt_expires_in == 24 * 3600
    assert s.max_connections == 1000
    assert s.frontend_url == ["http://localhost:3000"]


def test_seed_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Environment keys as the seed spells them, NODE_ENV included, in the seed's units."""
    monkeypatch.setenv("WS_API_PORT", "9000")
    monkeypatch.setenv("NODE_ENV", "test")
    monkeypatch.setenv("HEARTBEAT_INTERVAL", "15000")
    monkeypatch.setenv("JWT_EXPIRES_IN", "30m")
    monkeypatch.setenv("FRONTEND_URL", "https://a.example, https://b.example/")
    monkeypatch.setenv("DEBUG_WEBSOCKET", "true")
    s = load_settings(_env_file=None)
    assert s.ws_api_port == 9000
    assert s.app_env is Environment.TEST
    assert s.heartbeat_interval == 15.0
    assert s.jwt_expires_in == 1800
    assert s.frontend_url == ["https://a.example", "https://b.example"]
    assert s.debug_websocket is True


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("WS_API_PORT", "abc"),
        ("OCPP_PORT", "70000"),
        ("SESSION_TIMEOUT", "-5"),
        ("JWT_EXPIRES_IN", "soon"),
        ("LOG_LEVEL", "loud"),
        ("MAX_CONNECTIONS", "0"),
    ],
)
def test_a_bad_value_names_its_key(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    """A bad value stops start-up with one line that names the key."""
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert key in message and "\n" not in message


@pytest.mark.parametrize(
    "secret", ["your-super-secret-jwt-key", "change-me-dev-secret-not-for-production", "short"]
)
def test_production_refuses_example_or_weak_secrets(secret: str) -> None:
    """Production mode refuses the example secrets and short ones."""
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_settings(_env_file=None, app_env="production", jwt_secret=secret)


def test_production_accepts_a_real_secret() -> None:
    """A long random secret is fine in production."""
    s = load_settings(_env_file=None, app_env="production", jwt_secret="x" * 40)
    assert s.production

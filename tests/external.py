"""What some tests need from outside the repository, and what happens when it is absent.

The seed's README (its JavaScript client), a PostgreSQL server, Debian's Chromium and Node with
the ``ocpp-rpc`` package are not part of a clone. Outside CI a test whose input is absent is
skipped with one line saying what is missing and how to get it (``-ra`` lists it in the
summary); under ``CI=true`` it fails, so CI can never pass by skipping. ``.ci/run`` provides
all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The seed's README: ``SEED_README`` if set, else ``shared/seed/...`` beside the repository.
SEED_README = Path(
    os.environ.get("SEED_README")
    or REPO.parent / "shared" / "seed" / "charging-websocket-api-README.md"
)
#: Debian's Chromium (never downloaded): ``CHROMIUM`` if set, else ``/usr/bin/chromium``.
CHROMIUM = Path(os.environ.get("CHROMIUM") or "/usr/bin/chromium")


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``, as CI services and ``.ci/run`` set it)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def missing(what: str, how: str) -> NoReturn:
    """Skip (outside CI) or fail (in CI) the running test: ``what`` is absent, ``how`` gets it."""
    message = f"{what} is missing; {how}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)

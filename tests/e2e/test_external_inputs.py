"""Tests whose external input is absent: skipped with one line outside CI, failed under CI=true."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.external import REPO

BROWSER_TEST = "tests/e2e/test_browser_seed_client.py"
#: How many tests the browser file holds: every one of them must skip (or fail) alike.
BROWSER_TESTS = len(
    re.findall(r"^async def test_|^def test_", (REPO / BROWSER_TEST).read_text(), re.M)
)


def run_pytest(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """An inner pytest run over real test files with ``env`` on top of a CI-free environment."""
    base = {k: v for k, v in os.environ.items() if k not in {"CI", "SEED_README", "CHROMIUM"}}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env={**base, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_missing_seed_readme_is_a_one_line_skip_outside_ci(tmp_path: Path) -> None:
    """Without the seed README (a clone not beside shared/), the browser tests skip and say why."""
    absent = tmp_path / "no-seed.md"
    done = run_pytest(tmp_path, BROWSER_TEST, SEED_README=str(absent))
    assert done.returncode == 0, done.stdout + done.stderr
    (skipped,) = [
        line for line in done.stdout.splitlines() if line.startswith(f"SKIPPED [{BROWSER_TESTS}]")
    ]
    assert str(absent) in skipped and "SEED_README" in skipped, skipped
    assert f"{BROWSER_TESTS} skipped" in done.stdout and "failed" not in done.stdout


def test_a_missing_seed_readme_fails_under_ci(tmp_path: Path) -> None:
    """CI=true never passes by skipping: the same absence is a failure naming what is missing."""
    absent = tmp_path / "no-seed.md"
    done = run_pytest(tmp_path, BROWSER_TEST, SEED_README=str(absent), CI="true")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{BROWSER_TESTS} failed" in done.stdout, done.stdout
    assert f"the seed README ({absent}) is missing" in done.stdout


def test_a_missing_chromium_is_a_one_line_skip_outside_ci(tmp_path: Path) -> None:
    """Without Chromium the browser tests skip with how to install it."""
    done = run_pytest(tmp_path, BROWSER_TEST, CHROMIUM=str(tmp_path / "no-chromium"))
    assert done.returncode == 0, done.stdout + done.stderr
    (skipped,) = [
        line for line in done.stdout.splitlines() if line.startswith(f"SKIPPED [{BROWSER_TESTS}]")
    ]
    assert "apt-get install chromium" in skipped, skipped
    assert f"{BROWSER_TESTS} skipped" in done.stdout

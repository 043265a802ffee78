"""The operator console at ``/`` in Debian's Chromium (Playwright), against the real server
with a simulated charge point: sign in, a click starts a charge, live updates arrive."""

from __future__ import annotations

import re
from pathlib import Path

from charging_api.domain.models import IdTag
from tests.conftest import make_settings, running_server
from tests.e2e.test_browser_seed_client import chromium, simulated_charge_point

CP = "CP_CONSOLE_1"
TAG = "CONSOLE_TAG_1"
KEY = "stats-key-0123456789abcdef"


async def test_console_starts_a_charge_and_shows_live_updates(tmp_path: Path) -> None:
    """An admin signs in, clicks Start on a simulated charger's connector, and the page shows
    the session with energy from live meter values and the connector Charging; Reset is
    refused while it charges, and after Stop a Reset reboots the charger (its fresh
    status after the boot arrives live) and lands in the operations log. Screenshots are kept under tmp_path."""
    async with running_server(make_settings(tmp_path, stats_api_key=KEY)) as server:
        await server.app.store.put_id_tag(IdTag(TAG, "ops"))
        async with simulated_charge_point(server, CP), chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{server.http_url}/")
            await page.fill("#token", server.token("ops", id_tag=TAG, role="admin"))
            await page.click("#signin-button")
            await page.wait_for_selector("body[data-ready=true]", timeout=15_000)
            row = page.locator(f"tr[data-connector='{CP}/1']")
            await row.locator(".status").filter(has_text="Available").wait_for(timeout=15_000)
            await page.screenshot(path=str(tmp_path / "console-signed-in.png"))

            await row.locator("button.start").click()
            await row.locator(".status").filter(has_text="Charging").wait_for(timeout=15_000)
            session = page.locator("#sessions tbody tr").first
            await (
                session.locator(".energy")
                .filter(has_text=re.compile(r"\d"))
                .wait_for(timeout=15_000)
            )
            await page.screenshot(path=str(tmp_path / "console-charging.png"))

            await row.get_by_role("button", name="Reset").click()
            # A charge runs, so the core refuses the Reset without force, and the page says so.
            await page.locator("#message", has_text="TRANSACTION_RUNNING").wait_for(timeout=15_000)
            await session.get_by_role("button", name="Stop").click()
            await page.locator("#sessions tbody tr").wait_for(state="detached", timeout=15_000)
            # The stop's own Available is in (same handler as its event) before counting.
            await row.locator(".status").filter(has_text="Available").wait_for(timeout=15_000)
            available = page.locator("#events li[data-status=Available]")
            before = await available.count()
            await row.get_by_role("button", name="Reset").click()
            await page.locator("#message", has_text="Accepted").wait_for(timeout=15_000)
            # The charger reboots: it connects and boots again, and its connector's fresh
            # StatusNotification reaches the page as a new live event.
            await available.nth(before).wait_for(timeout=15_000)
            await page.locator("#operations tbody tr", has_text="Accepted").first.wait_for(
                timeout=15_000
            )
            await page.screenshot(path=str(tmp_path / "console-reset.png"), full_page=True)
    assert (tmp_path / "console-charging.png").stat().st_size > 0

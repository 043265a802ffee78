"""The operator console at ``/`` in Debian's Chromium (Playwright), against the real server
with a simulated charge point: sign in, a click starts a charge, live updates arrive."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import Browser, Page

from charging_api.domain.models import IdTag
from tests.conftest import RunningServer, make_settings, running_server
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
            # The session's energy, not the simulated meter's lifetime register (over 1000 kWh).
            shown = float(await session.locator(".energy").inner_text())
            assert 0 <= shown < 100, shown
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


async def _signed_in_admin(browser: Browser, server: RunningServer) -> Page:
    page = await browser.new_page()
    await page.goto(f"{server.http_url}/")
    await page.fill("#token", server.token("ops", id_tag=TAG, role="admin"))
    await page.click("#signin-button")
    await page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    return page


async def test_console_reserves_and_shows_configuration(tmp_path: Path) -> None:
    """A click on Reserve holds the connector (the reservation shows, the charger reports
    Reserved) and Cancel frees it; the configuration view shows the keys the charger reported,
    and a wanted value declared from the page is listed."""
    async with running_server(make_settings(tmp_path, stats_api_key=KEY)) as server:
        await server.app.store.put_id_tag(IdTag(TAG, "ops"))
        async with simulated_charge_point(server, CP), chromium() as browser:
            page = await _signed_in_admin(browser, server)
            row = page.locator(f"tr[data-connector='{CP}/1']")
            await row.locator(".status").filter(has_text="Available").wait_for(timeout=15_000)

            await page.fill("#reserve-tag", TAG)
            await row.locator("button.reserve").click()
            reservation = page.locator("#reservations tbody tr").first
            await (
                reservation.locator(".reservation-status")
                .filter(has_text="Active")
                .wait_for(timeout=15_000)
            )
            assert await reservation.locator("td").nth(3).inner_text() == TAG
            await row.locator(".status").filter(has_text="Reserved").wait_for(timeout=15_000)
            await page.screenshot(path=str(tmp_path / "console-reserved.png"), full_page=True)
            await reservation.get_by_role("button", name="Cancel").click()
            await (
                reservation.locator(".reservation-status")
                .filter(has_text="Cancelled")
                .wait_for(timeout=15_000)
            )
            await row.locator(".status").filter(has_text="Available").wait_for(timeout=15_000)

            await row.locator("button.configuration").click()
            await page.locator("#config-read").click()
            key = page.locator("#configuration tr[data-key=MeterValueSampleInterval]")
            await key.wait_for(timeout=15_000)
            await page.locator(
                "#configuration tr[data-key=SupportedFeatureProfiles]", has_text="yes"
            ).wait_for(timeout=15_000)
            await page.fill("#want-key", "MeterValueSampleInterval")
            await page.fill("#want-value", "15")
            await page.locator("#want-form button[type=submit]").click()
            await key.locator("td").nth(4).filter(has_text="15").wait_for(timeout=15_000)
            await page.screenshot(path=str(tmp_path / "console-configuration.png"), full_page=True)
    assert (tmp_path / "console-configuration.png").stat().st_size > 0


async def test_console_power_limit_lowers_power_on_the_chart(tmp_path: Path) -> None:
    """The power chart of a running session gains points as meter values arrive, and a power
    limit in A set from the session's row lowers the simulated charger's power the page shows."""
    async with running_server(make_settings(tmp_path, stats_api_key=KEY)) as server:
        await server.app.store.put_id_tag(IdTag(TAG, "ops"))
        async with simulated_charge_point(server, CP), chromium() as browser:
            page = await _signed_in_admin(browser, server)
            row = page.locator(f"tr[data-connector='{CP}/1']")
            await row.locator(".status").filter(has_text="Available").wait_for(timeout=15_000)
            await row.locator("button.start").click()
            await page.wait_for_function(
                "Number(document.getElementById('chart').dataset.points) >= 3", timeout=15_000
            )
            session = page.locator("#sessions tbody tr").first
            # Unlimited, the simulator draws its full 32 A (about 7 kW).
            await page.wait_for_function(
                "Number(document.querySelector('#sessions tbody tr .power').textContent) > 5",
                timeout=15_000,
            )
            await page.screenshot(path=str(tmp_path / "console-chart.png"), full_page=True)

            await session.locator("input.limit-value").fill("10")
            await session.locator("select.limit-unit").select_option("A")
            await session.get_by_role("button", name="Limit").click()
            await page.locator("#message", has_text="limited transaction").wait_for(timeout=15_000)
            # 10 A at 230 V: the next meter values report about 2.3 kW.
            await page.wait_for_function(
                "Number(document.querySelector('#sessions tbody tr .power').textContent) < 3",
                timeout=15_000,
            )
            points = int(await page.locator("#chart").get_attribute("data-points") or 0)
            line = await page.locator("#chart-line").get_attribute("points") or ""
            assert len(line.split()) == points >= 4
            await page.screenshot(path=str(tmp_path / "console-limited.png"), full_page=True)
    assert (tmp_path / "console-limited.png").stat().st_size > 0

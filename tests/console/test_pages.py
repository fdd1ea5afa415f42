"""The console's pages in headless Chromium on seeded stores (no stack runs): each page shows its data, the
Models page approves, the Alerts page acknowledges, the turbine chart zooms and explains on hover. Screenshots of
every page go to <data dir>/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks.console_seed import Seeded
from nacelle.local.runtime.console_server import ConsoleServer
from tests.console.browser import browser_page, needs_chromium, screenshot
from tests.console.conftest import active_deployment

pytestmark = [needs_chromium]


@pytest.fixture
def page(server: ConsoleServer) -> Iterator[Any]:
    with browser_page() as p:
        p.goto(server.url)  # the token once, then the cookie
        yield p


def test_every_page_shows_its_data(page: Any, server: ConsoleServer, seeded: Seeded) -> None:
    home = seeded.stack.paths.home
    assert "token" not in page.url  # traded for the cookie
    page.wait_for_selector(f"[data-testid=model-detail] >> text=v{seeded.pending}")
    assert page.locator("[data-testid=models-table] tbody tr").count() == 4
    screenshot(page, home, "models")
    page.click("nav >> text=Fleet")
    page.wait_for_selector("[data-testid=device-table] tr[data-key=turbine-01]")
    assert "OFFLINE" in page.inner_text(f"[data-testid=device-table] tr[data-key={seeded.things[-1]}]")
    assert "done" in page.inner_text("[data-testid=rollout-table]")
    screenshot(page, home, "fleet")
    page.click("nav >> text=Alerts")
    page.wait_for_selector(f"[data-testid=alerts-table] tr[data-key='{seeded.alert_ids[-1]}']")
    screenshot(page, home, "alerts")
    page.click("nav >> text=Data")
    page.wait_for_selector("[data-testid=new-hours]")
    screenshot(page, home, "data")
    page.goto(server.base_url + "turbines/turbine-01")
    page.wait_for_selector("[data-testid=timeline-chart] circle[data-kind=episode]")
    screenshot(page, home, "turbine")
    assert {p.name for p in (home / "screenshots").iterdir()} >= {f"{n}.png" for n in
                                                                  ("models", "fleet", "alerts", "data", "turbine")}


def test_approve_and_override_on_the_models_page(page: Any, seeded: Seeded) -> None:
    detail = "[data-testid=model-detail]"
    page.wait_for_selector(f"{detail} >> text=v{seeded.pending}")
    page.fill(f"{detail} [data-testid=reason]", "beats the champion")
    page.click(f"{detail} button:has-text('Approve')")
    page.wait_for_selector("[data-testid=history] >> text=beats the champion")
    assert seeded.stack.registry.get(seeded.stack.settings.group, seeded.pending).status == "Approved"
    page.click(f"[data-testid=models-table] tr[data-key=v{seeded.gate_rejected}]")
    page.wait_for_selector(f"{detail} [data-testid=override-gate]")
    page.click(f"{detail} button:has-text('Approve')")
    page.wait_for_selector(f"{detail} [role=alert] >> text=quality gate")  # refused without the override
    page.check(f"{detail} [data-testid=override-gate]")
    page.fill(f"{detail} [data-testid=reason]", "labels were late")
    page.click(f"{detail} button:has-text('Approve')")
    page.wait_for_selector("[data-testid=history] >> text=labels were late")


def test_cancel_an_active_deployment_on_the_fleet_page(server: ConsoleServer, seeded: Seeded) -> None:
    active = active_deployment(seeded, 9, "fleet")
    with browser_page() as page:  # opened after the deployment exists (the console reuses a read for a moment)
        page.goto(server.url)
        page.click("nav >> text=Fleet")
        row = f"[data-testid=deployment-table] tr[data-key='{active}']"
        page.click(f"{row} [data-testid=cancel-deployment]")
        page.wait_for_selector(f"{row} >> text=CANCELED")
        assert seeded.stack.greengrass.get_deployment(active).status == "CANCELED"
        assert page.locator(f"{row} [data-testid=cancel-deployment]").count() == 0  # nothing left to cancel


def test_acknowledge_on_the_alerts_page_keeps_the_history(page: Any, server: ConsoleServer, seeded: Seeded) -> None:
    alert_id = seeded.alert_ids[-1]
    page.goto(server.base_url + "alerts")
    page.select_option("[data-testid=filter-severity]", "high")
    page.wait_for_selector("[data-testid=alerts-table] >> text=3 alert(s)")
    assert page.is_disabled("[data-testid=older]") and page.is_disabled("[data-testid=newer]")  # one page
    page.select_option("[data-testid=filter-severity]", "")
    page.click(f"[data-testid=alerts-table] tr[data-key='{alert_id}']")
    for verdict, note in (("fault", "bearing"), ("false_alarm", "sensor glitch")):
        page.select_option("[data-testid=alert-detail] [data-testid=verdict]", verdict)
        page.fill("[data-testid=alert-detail] [data-testid=note]", note)
        page.click("[data-testid=alert-detail] button:has-text('Acknowledge')")
        page.wait_for_selector(f"[data-testid=ack-history] >> text={note}")
    assert page.locator("[data-testid=ack-history] tbody tr").count() == 2


def test_the_timeline_zooms_and_explains_on_hover(page: Any, server: ConsoleServer, seeded: Seeded) -> None:
    page.goto(server.base_url + "turbines/turbine-01")
    dot = page.wait_for_selector("[data-testid=timeline-chart] circle[data-kind=episode]")
    # the score band of every period, the captured files, and per feature its bands and the captured samples
    assert page.locator("[data-testid=timeline-chart] rect[data-kind=period]").count() == 24
    assert page.locator("[data-testid=timeline-chart] rect[data-kind=capture]").count() == len(seeded.captures)
    page.wait_for_selector("[data-testid=signal-charts] svg[data-feature=rps] path[data-kind=raw]")
    assert page.locator("[data-testid=signal-charts] svg[data-feature=rps] rect[data-kind=band]").count() == 24
    assert "captured samples: 3000 from 2 file(s)" in page.inner_text("[data-testid=signals-note]")
    screenshot(page, seeded.stack.paths.home, "turbine-signals")
    box = dot.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tip = page.wait_for_selector("[data-testid=timeline-chart] .tip", state="visible")
    assert "peak" in tip.inner_text() and "threshold" in tip.inner_text()
    before = page.locator("[data-testid=timeline-chart] text").all_text_contents()
    page.click("[data-testid=timeline-chart] button:has-text('+')")
    page.click("[data-testid=timeline-chart] button:has-text('+')")
    assert page.locator("[data-testid=timeline-chart] text").all_text_contents() != before  # other ticks: zoomed
    page.dblclick("[data-testid=timeline-chart] svg")
    assert page.locator("[data-testid=timeline-chart] text").all_text_contents() == before
    # zoomed far out of the captures: the samples go, the note says why
    for _ in range(8):
        page.click("[data-testid=timeline-chart] button:has-text('−')")
    page.wait_for_selector("[data-testid=signals-note] >> text=zoom in to at most 6 h")
    assert page.locator("[data-testid=signal-charts] path[data-kind=raw]").count() == 0

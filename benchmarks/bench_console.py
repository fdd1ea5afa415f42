"""The operator console under a fleet's worth of state: 100 devices, 50 model versions, 10,000 alerts and each
device's full history of detector periods (48) in the local stores, plus the first turbine's captured samples
(benchmarks/console_seed.py), served by the local console server (the Chalice app behind the stdlib HTTP
adapter, as `nacelle up` serves it).

console_api_p95_ms: the 95th percentile over every read route of the API (the signals route reading the two
captured files, 3000 samples) (each requested REPEAT times over
loopback HTTP with the access token; the first round is a warm-up). Goal <= 100 ms.
console_page_render_ms: for each page (Models, Fleet, Alerts, Data, a turbine's timeline), from the navigation's
first request to its data on screen in headless Chromium (/usr/bin/chromium), on the browser's clock, every page
loaded cold (no reused server-side read); the slowest page. Goal <= 1000 ms.

Run alone: `.venv/bin/python -m benchmarks.bench_console`.
"""

from __future__ import annotations

import http.client
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.console_seed import Seeded, seed
from nacelle.local.runtime.console_server import ConsoleServer
from shared.capture import CaptureName
from shared.jsonview import iso
from shared.usecases.turbine_periods import KEEP

DEVICES, VERSIONS, ALERTS = 100, 50, 10_000
REPEAT = 20
GOAL_API_P95_MS, GOAL_PAGE_MS = 100.0, 1000.0
CHROMIUM = Path("/usr/bin/chromium")


def _routes(alert_id: str, turbine: str, signals: str) -> list[str]:
    return ["/api/models", f"/api/models/{VERSIONS}", f"/api/models/1/compare/{VERSIONS}", "/api/fleet",
            "/api/fleet/deployments", "/api/alerts", f"/api/alerts?turbine={turbine}&severity=high",
            "/api/alerts?state=open", f"/api/alerts/{alert_id}", "/api/data", "/api/jobs",
            f"/api/turbines/{turbine}/timeline", f"/api/turbines/{turbine}/signals?{signals}"]


def _captured(seeded: Seeded) -> str:
    """The query of the range from the first captured file's start to the last one's end."""
    names = [CaptureName.parse(key.rsplit("/", 1)[-1]) for key in seeded.captures]
    start, end = min(n.start for n in names if n), max(n.end for n in names if n)
    return f"start={iso(start, precise=True)}&end={iso(end + 0.001, precise=True)}"


def api_latencies(server: ConsoleServer, routes: list[str]) -> dict[str, list[float]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Authorization": f"Bearer {server.token}"}
    out: dict[str, list[float]] = {r: [] for r in routes}
    try:
        for round_ in range(REPEAT + 1):
            for route in routes:
                started = time.perf_counter()
                conn.request("GET", route, headers=headers)
                resp = conn.getresponse()
                resp.read()
                took = (time.perf_counter() - started) * 1000
                if resp.status != 200:
                    raise RuntimeError(f"{route}: HTTP {resp.status}")
                if round_:  # the first round warms up
                    out[route].append(took)
    finally:
        conn.close()
    return out


# In every page: note when the page's data first shows (the browser's clock, from the navigation's start).
READY_SCRIPT = """
const selectors = %s;
const wanted = selectors[location.pathname.split("/")[1]];
if (wanted) new MutationObserver((_, observer) => {
  if (document.querySelector(wanted)) { window.__nacelleReady = performance.now(); observer.disconnect(); }
}).observe(document, {subtree: true, childList: true});
"""


def page_renders(server: ConsoleServer, turbine: str) -> dict[str, float]:
    """Per page: from the navigation's start (its first request) to its data on screen, in ms of the browser's own
    clock (performance.now() when a MutationObserver first sees the page's data)."""
    from playwright.sync_api import sync_playwright

    pages = {"models": "[data-testid=model-detail] h2", "fleet": "[data-testid=device-table] tbody tr[data-key]",
             "alerts": "[data-testid=alerts-table] tbody tr[data-key]", "data": "[data-testid=new-hours]",
             "turbines": "[data-testid=timeline-chart] circle"}
    paths = {"models": "models", "fleet": "fleet", "alerts": "alerts", "data": "data",
             "turbines": f"turbines/{turbine}"}
    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.add_init_script(READY_SCRIPT % json.dumps(pages))
            page.goto(server.url)  # the token becomes the cookie; not measured
            page.wait_for_selector(pages["models"])
            for name, path in paths.items():
                page.goto("about:blank")
                time.sleep(1.5)  # past the server's reuse of whole-table reads: every page starts cold
                page.goto(server.base_url + path)
                page.wait_for_function("() => window.__nacelleReady !== undefined", timeout=30_000)
                out[name] = float(page.evaluate("() => window.__nacelleReady"))
        finally:
            browser.close()
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        seeded = seed(Path(tmp) / "home", devices=DEVICES, versions=VERSIONS, alerts=ALERTS, stale=5, periods=KEEP)
        print(f"# seeded {DEVICES} devices, {VERSIONS} versions, {ALERTS} alerts in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        server = ConsoleServer(seeded.stack.paths.home, seeded.stack.operator_deps(), "bench", 0).start()
        try:
            latencies = api_latencies(server, _routes(seeded.alert_ids[0], seeded.things[0], _captured(seeded)))
            renders = page_renders(server, seeded.things[0]) if CHROMIUM.is_file() else {}
        finally:
            server.stop()
    for route, values in latencies.items():
        print(f"# {route}: p50 {np.percentile(values, 50):.1f} ms, p95 {np.percentile(values, 95):.1f} ms")
    p95 = float(np.percentile([v for values in latencies.values() for v in values], 95))
    print(f"console_api_p95_ms={p95:.1f}")
    print(f"console_api_goal_p95_ms={GOAL_API_P95_MS:g}")
    if not renders:
        print(f"# {CHROMIUM} is missing (`make chromium`): page render not measured", file=sys.stderr)
        return 0 if p95 <= GOAL_API_P95_MS else 1
    for name, took in renders.items():
        print(f"# page {name}: {took:.0f} ms")
    slowest = max(renders.values())
    print(f"console_page_render_ms={slowest:.0f}")
    print(f"console_page_render_goal_ms={GOAL_PAGE_MS:g}", flush=True)
    return 0 if p95 <= GOAL_API_P95_MS and slowest <= GOAL_PAGE_MS else 1


if __name__ == "__main__":
    sys.exit(main())

"""The Voila live page in a real headless Chromium: the charts render, new points arrive
without a reload, and a screenshot is kept in ``test-artifacts/voila.png``; a page opened
after a paced replay has ended still shows the replay.

Live mode (producer, consumer and Voila) runs as ``marketstream live --no-api`` on the
session's broker; Chromium is Debian's, driven by Debian's chromedriver through Selenium.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import psutil
import pytest

from marketstream import store
from marketstream.processes import free_port
from marketstream.settings import PROJECT_ROOT
from marketstream.ticks import generate_ticks, write_csv
from support.live import live_cli
from support.processes import GRACE_S, alive, kill_all
from support.waiting import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium "
    "chromium-driver; .ci/run installs them)",
)

#: How long live mode, Voila and the page may take on a loaded machine (each wait ends
#: as soon as what it waits for is there; a refresh normally comes every couple of s).
START_S = 120
REFRESH_S = 90

#: The traces of the page's plotly figure (tagged by ``meta``): point count, last x, cells.
READ_TRACES_JS = """
const gd = document.querySelector('.js-plotly-plot');
if (!gd || !gd.data) return null;
return gd.data.map(t => ({
  meta: t.meta || null,
  name: t.name || null,
  n: t.x ? t.x.length : 0,
  last_x: t.x && t.x.length ? String(t.x[t.x.length - 1]) : null,
  cells: t.cells ? t.cells.values : null,
}));
"""

STATUS_JS = "const s = document.querySelector('.ms-status'); return s ? s.innerText : null;"


@pytest.fixture
def browser(tmp_path) -> Iterator[object]:
    """Headless Chromium with a fresh profile; chromedriver and every browser process end after."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        # Only the local Voila server resolves: Voila's template also links a web font
        # from a CDN, and this test must never reach beyond the machine.
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
        "--window-size=1300,2100",
    ):
        options.add_argument(arg)
    service = Service(CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    driver_proc = psutil.Process(service.process.pid)
    try:
        yield driver
    finally:
        family = [driver_proc, *driver_proc.children(recursive=True)]
        with suppress(Exception):
            driver.quit()
        _, still = psutil.wait_procs(alive(family), timeout=GRACE_S)
        kill_all(still)


def read_traces(driver, meta: str) -> list[dict]:
    """The page figure's traces tagged ``meta`` (price, volume, freshness, stats)."""
    traces = driver.execute_script(READ_TRACES_JS) or []
    return [t for t in traces if t["meta"] == meta]


def test_voila_live_page_updates_in_place(fresh, browser):
    settings = fresh.with_(voila_port=free_port())
    with live_cli(settings, "--no-api") as live:
        wait_until(
            lambda: "Ctrl-C stops everything" in live.output(),
            START_S,
            "Voila",
            died=live.gone,
            context=live.output,
        )
        wait_until(
            lambda: store.tick_count(settings.db_path) > 0,
            START_S,
            "first ticks",
            died=live.gone,
            context=live.output,
        )
        requested = time.monotonic()
        browser.get(f"http://127.0.0.1:{settings.voila_port}/")

        def prices_with_data() -> list[dict] | None:
            prices = read_traces(browser, "price")
            return prices if prices and all(t["n"] > 0 for t in prices) else None

        prices = wait_until(
            prices_with_data, START_S, "the Voila page's price chart to show data", interval_s=0.1
        )
        # printed, not asserted (a loaded machine is slower): the README quotes it
        first_chart_s = time.monotonic() - requested
        assert [t["name"] for t in prices] == list(settings.symbols)
        marker = browser.execute_script("window.__sameDocument = 42; return window.__sameDocument")

        def newer_points() -> list[dict] | None:
            now = read_traces(browser, "price")
            advanced = all(
                b["last_x"] is not None and b["last_x"] > a["last_x"]
                for a, b in zip(prices, now, strict=True)
            )
            return now if advanced else None

        later = wait_until(
            newer_points, REFRESH_S, "a refresh to bring newer points", interval_s=0.5
        )
        assert browser.execute_script("return window.__sameDocument") == marker  # no reload
        volumes = read_traces(browser, "volume")
        assert [t["name"] for t in volumes] == list(settings.symbols)
        assert all(t["n"] > 0 for t in volumes)
        (freshness,) = wait_until(
            lambda: [t for t in read_traces(browser, "freshness") if t["n"] >= 2],
            REFRESH_S,
            "two freshness samples",
            interval_s=0.5,
        )
        (table,) = read_traces(browser, "stats")
        assert sorted(table["cells"][0]) == sorted(settings.symbols)
        status = browser.execute_script(STATUS_JS)
        assert status and "live" in status and "freshness" in status, status

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "voila.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
    assert not live.leftovers, f"still running after Ctrl-C: {live.leftovers}"
    print(
        f"\nfirst chart {first_chart_s:.1f} s after the request; "
        f"price points per symbol: {[t['n'] for t in prices]} -> "
        f"{[t['n'] for t in later]}; freshness samples {freshness['n']}; status: {status}; "
        f"screenshot {Path(shot)}"
    )


def test_a_page_opened_after_a_replay_ended_shows_it(fresh, browser):
    """``live --csv --pace`` stays up after the file's last tick; a page opened then must
    show the replay. It used to keep empty charts: its first refreshes ran before the
    page's view existed, and with no new tick nothing was sent again (see
    ``LivePage._on_view_count``)."""
    ticks = generate_ticks(fresh.symbols, 20, seed=fresh.seed)  # 19 s of event time
    write_csv(ticks, fresh.csv_path)
    settings = fresh.with_(voila_port=free_port())
    with live_cli(settings, "--no-api", "--pace", "--speed", "20") as live:
        wait_until(
            lambda: "replay of" in live.output() and "Ctrl-C stops everything" in live.output(),
            START_S,
            "the replay to end with Voila up",
            died=live.gone,
            context=live.output,
        )
        wait_until(
            lambda: store.tick_count(settings.db_path) == len(ticks),
            START_S,
            "every tick of the replay in DuckDB",
            died=live.gone,
            context=live.output,
        )
        browser.get(f"http://127.0.0.1:{settings.voila_port}/")
        prices = wait_until(
            lambda: [t for t in read_traces(browser, "price") if t["n"] > 0],
            START_S,
            "the price chart to show the ended replay",
            interval_s=0.5,
        )
        assert sorted(t["name"] for t in prices) == sorted(settings.symbols)
        (table,) = read_traces(browser, "stats")
        assert sorted(table["cells"][0]) == sorted(settings.symbols)
        assert [int(n) for n in table["cells"][1]] == [20] * len(settings.symbols)
    assert not live.leftovers, f"still running after Ctrl-C: {live.leftovers}"

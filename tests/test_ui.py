"""The web console at ``/ui``: a real headless Chromium drives the page served by the real
program (``-target=all``, real nats-server), as an operator would use it.

Must show: a 30-day async aggregation submitted from the page, its progress bar advancing
to 100% and "done", the chart (one SVG path per series), a log query as a table newest
first with label chips, Cancel deleting a ticket, and a bad query's 400 message.
Screenshots go to ``$LOKI_ASYNC_SCREENSHOTS`` (default ``tests/screenshots/``).
"""

from __future__ import annotations

import asyncio
import http.client
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from loki_async.logproto import PushStream
from tests.conftest import REPO, Loki
from tests.lokiclient import client, push
from tests.test_async_queries import DAY, HOUR, METRIC, NS, TICKETS, A, _config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 60_000
LAST_30_DAYS = "Last 30 days"


def shot(page: Page, name: str) -> None:
    """A full-page screenshot, transitions finished (the progress bar animates)."""
    out = Path(os.environ.get("LOKI_ASYNC_SCREENSHOTS") or REPO / "tests" / "screenshots")
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=out / name, full_page=True, animations="disabled")


def http_get(url: str, path: str, tenant: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET without following redirects: (status, headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("GET", path, headers={"X-Scope-OrgID": tenant} if tenant else {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def streams(now: int) -> list[PushStream]:
    """30 days of ``{app="web", level=...}``: a daily wave of info lines, warnings in
    working hours, an error an hour (two at 14:00) carrying a ``trace_id`` as structured
    metadata."""
    first = (now - 30 * DAY) // HOUR * HOUR
    hours = range(first, now - 60 * NS, HOUR)
    out = []
    for level in ("info", "warn", "error"):
        ts: list[int] = []
        for i, hour in enumerate(hours):
            h = i % 24
            n = {
                "info": 12 + round(8 * math.sin(2 * math.pi * h / 24)),
                "warn": 2 + 3 * (9 <= h <= 17),
                "error": 1 + (h == 14),
            }[level]
            ts.extend(hour + k * HOUR // n for k in range(n))
        ts = [t for t in ts if t < now - 60 * NS]
        lines = [
            f"level={level} method=GET path=/api/items/{i % 97} status="
            f"{500 if level == 'error' else 200} duration={i % 250}ms".encode()
            for i in range(len(ts))
        ]
        meta = [[("trace_id", f"{i:016x}")] for i in range(len(ts))] if level == "error" else None
        out.append(PushStream([("app", "web"), ("level", level)], ts, lines, meta))
    return out


async def load(url: str, now: int) -> None:
    async with client() as s:
        status, body = await push(s, url, streams(now), tenant=A)
        assert status == 204, body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loki]:
    """The program with :func:`streams` pushed as tenant A; auth is on."""
    workdir = tmp_path_factory.mktemp("ui")
    loki = Loki(workdir, _config(workdir)).start()
    asyncio.run(load(loki.url, time.time_ns()))
    yield loki
    loki.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium: apt-get install chromium",
            pytrace=False,
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(server: Loki, browser: Browser) -> Iterator[Page]:
    """The console as tenant A; fails the test on a script error or a request elsewhere."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    errors: list[str] = []
    foreign: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    local = (server.url, "blob:", "about:")
    pg.on("request", lambda r: None if r.url.startswith(local) else foreign.append(r.url))
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(f"{server.url}/ui")
    pg.fill("#tenant", A)
    pg.dispatch_event("#tenant", "change")
    yield pg
    context.close()
    assert not errors, errors
    assert not foreign, f"the console requested other hosts: {foreign}"


def fill_query(
    page: Page, query: str, range_label: str, step: str = "", limit: str = "100"
) -> None:
    page.fill("#logql", query)
    page.select_option("#range", label=range_label)
    page.fill("#step", step)
    page.fill("#limit", limit)


def submit_async(page: Page, query: str) -> Locator:
    """Submit from the page; the ticket's row, once the list shows it."""
    fill_query(page, query, LAST_30_DAYS, step="1h")
    page.click("#submit-async")
    row = page.locator("li.ticket", has=page.locator("code", has_text=query))
    expect(row).to_have_count(1)
    return row


def test_static_files_are_served_with_their_types_and_nothing_else(server: Loki) -> None:
    status, headers, _ = http_get(server.url, "/ui")
    assert status == 302 and headers["Location"] == "ui/"
    for path, ctype in (
        ("/ui/", "text/html"),
        ("/ui/index.html", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ):
        status, headers, body = http_get(server.url, path)
        assert status == 200 and headers["Content-Type"].startswith(ctype), (path, headers)
        assert body
    for path in ("/ui/missing.js", "/ui/..", "/ui/%2e%2e%2fapi.py", "/ui/__init__.py"):
        assert http_get(server.url, path)[0] == 404, path
    # Self-contained: nothing is loaded from another host.
    for name in ("index.html", "app.js", "style.css"):
        text = (REPO / "loki_async" / "ui" / name).read_text()
        assert not re.search(r"""(src|href)=["']?(https?:)?//|@import|url\(""", text), name


def test_async_aggregation_shows_progress_then_a_chart_per_level(server: Loki, page: Page) -> None:
    row = submit_async(page, METRIC)
    ticket = row.get_attribute("data-ticket")
    bar = row.locator(".progress")
    # Record what the bar shows while the query runs (the page polls every second).
    seen: list[int] = []
    shown = False
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        state = row.get_attribute("data-state")
        pct = int(bar.get_attribute("aria-valuenow") or 0)
        if not seen or seen[-1] != pct:
            seen.append(pct)
        if not shown and 0 < pct < 100:
            shot(page, "ui-progress.png")
            shown = True
        if state == "done":
            break
        page.wait_for_timeout(100)
    expect(row.locator(".badge")).to_have_text("done")
    assert seen[0] < 100 and seen[-1] == 100 and seen == sorted(seen), seen
    assert bar.get_attribute("aria-valuenow") == "100"
    done, total = map(int, re.search(r"(\d+)/(\d+) splits", row.inner_text()).groups())
    assert done == total >= 720  # 30 days of 1 h splits, none skipped
    if not shown:  # too fast to catch half-way: show the finished bar
        shot(page, "ui-progress.png")

    # The page shows the result of the ticket it submitted once it is done.
    series = page.locator("svg.chart path.series")
    expect(series).to_have_count(3)
    names = sorted(series.nth(i).get_attribute("data-series") for i in range(3))
    assert names == ['{level="error"}', '{level="info"}', '{level="warn"}']
    for i in range(3):  # a line through every hour of the 30 days
        assert series.nth(i).get_attribute("d").count("L") > 700
    expect(page.locator("#legend li")).to_have_count(3)
    assert page.locator("svg.chart .axis text").count() > 4
    assert page.get_attribute("#raw-link", "href") == f"{server.url}{TICKETS}/{ticket}"
    expect(page.locator("#result-meta")).to_contain_text("matrix")
    shot(page, "ui-chart.png")


def test_log_query_is_a_table_newest_first_with_label_chips(server: Loki, page: Page) -> None:
    fill_query(page, '{app="web"}', "Last 24 hours", limit="50")
    page.click("#submit-sync")
    rows = page.locator("table.logs tbody tr")
    expect(rows).to_have_count(50)
    stamps = [int(ts) for ts in rows.evaluate_all("rs => rs.map(r => r.dataset.ts)")]
    assert stamps == sorted(stamps, reverse=True)
    assert stamps[0] > time.time_ns() - 3600 * 10**9  # the newest entries of the range
    chips = rows.first.locator(".chip").all_inner_texts()
    assert "app=web" in chips and any(c.startswith("level=") for c in chips), chips
    assert "method=GET" in rows.first.locator("td.line").inner_text()
    # Structured metadata is a chip of its own kind.
    errors = rows.filter(has=page.locator(".chip", has_text="level=error"))
    assert errors.count() > 0
    assert errors.first.locator(".chip.meta").inner_text().startswith("trace_id=")
    assert "/loki/api/v1/query_range?" in page.get_attribute("#raw-link", "href")
    shot(page, "ui-logs.png")


def test_cancel_deletes_the_ticket(server: Loki, page: Page) -> None:
    query = 'sum by (level) (count_over_time({app="web"} |= "status=200" [1h]))'
    row = submit_async(page, query)
    ticket = row.get_attribute("data-ticket")
    row.locator("button.cancel").click()
    expect(page.locator(f'li.ticket[data-ticket="{ticket}"]')).to_have_count(0)
    expect(page.locator("#status")).to_contain_text("cancelled")
    expect(page.locator("#error")).to_be_hidden()
    shot(page, "ui-cancel.png")
    assert http_get(server.url, f"{TICKETS}/{ticket}", tenant=A)[0] == 404
    # The next poll of the list does not bring it back.
    page.wait_for_timeout(1500)
    expect(page.locator(f'li.ticket[data-ticket="{ticket}"]')).to_have_count(0)


def test_bad_query_shows_the_400_message(server: Loki, page: Page) -> None:
    fill_query(page, 'sum(count_over_time({app="web"}[1h])', "Last 1 hour")
    page.click("#submit-sync")
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("400")
    expect(error).to_contain_text("parse error")

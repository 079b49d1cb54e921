"""The status page in a real browser (Playwright driving Debian's Chromium) against ``ringlb dev``.

Chromium is installed with apt-get when missing (as ``make bench`` installs nginx); when that is
not possible the tests FAIL with the command to run. They never skip.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from ringlb_harness.local import LocalMode
from ringlb_harness.net import wait_until
from ringlb_harness.proc import pids_listening

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("RINGLB_CHROMIUM", "/usr/bin/chromium")
PACKAGES = ("chromium", "chromium-driver")
INSTALL_HINT = f"sudo apt-get install -y {' '.join(PACKAGES)}  (or set RINGLB_CHROMIUM to a Chromium binary)"
# The README's picture is this test's page: RINGLB_SCREENSHOT=docs/status-page.png redraws it.
SCREENSHOT = os.environ.get("RINGLB_SCREENSHOT")
WAIT = 30.0  # a deadline for what comes: generous, it costs nothing when things are fast
WAIT_MS = int(WAIT * 1000)  # the same for Playwright's expect


def ensure_chromium() -> str:
    """The Chromium binary, installed with apt-get if missing; pytest.fail if that fails."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if CHROMIUM != "/usr/bin/chromium":
        pytest.fail(f"RINGLB_CHROMIUM={CHROMIUM} does not exist; install Chromium: {INSTALL_HINT}")
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if prefix and not shutil.which("sudo"):
        pytest.fail(f"Chromium is missing at {CHROMIUM} and this user cannot install it; run: {INSTALL_HINT}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*prefix, "apt-get", "install", "-y", "-qq", *PACKAGES]
    try:
        if subprocess.run(install, env=env).returncode:
            subprocess.run([*prefix, "apt-get", "update", "-qq"], env=env)  # a new machine's lists are empty
            subprocess.run(install, env=env)
    except OSError as exc:
        pytest.fail(f"could not run apt-get ({exc}); install Chromium: {INSTALL_HINT}")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"apt-get did not install Chromium at {CHROMIUM}; run: {INSTALL_HINT}")
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    executable = ensure_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMode]:
    """``ringlb dev`` with the seed's three replicas and light background traffic (so the charts
    have something to draw); the tests below run in file order and change the ring."""
    mode = LocalMode(tmp_path_factory.mktemp("status"))
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        mode.wait_replicas(3)
        wait_until(lambda: len(status_data(mode)["members"]) == 3, 2 * WAIT, what="/status/data with 3 members")

        def traffic() -> None:
            with requests.Session() as session:
                while not stop.wait(0.05):
                    try:
                        session.get(
                            f"{mode.url}/home",
                            timeout=2,
                            headers={"X-Request-ID": str(random.randint(100_000, 999_999))},
                        )
                    except requests.RequestException:
                        pass

        threads = [threading.Thread(target=traffic, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        yield mode
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        leftovers = mode.stop()
        assert not leftovers, f"processes outlived ringlb dev: {leftovers}"


@pytest.fixture
def page(browser: Browser, local: LocalMode) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1440, "height": 820})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{local.url}/status")
    expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def status_data(local: LocalMode) -> dict:
    reply = requests.get(f"{local.url}/status/data", timeout=WAIT)
    reply.raise_for_status()
    return reply.json()


def reached(local: LocalMode, key: str) -> str:
    """The replica a real request with this key reached."""
    body = requests.get(f"{local.url}/home", headers={"X-Request-ID": key}, timeout=WAIT).json()
    prefix = "Hello from Server: "
    assert body["message"].startswith(prefix), body
    return body["message"][len(prefix) :]


def shares_on_page(page: Page) -> dict[str, float]:
    rows = page.locator("#members tbody tr")
    return {
        rows.nth(i).get_attribute("data-name"): float(rows.nth(i).locator("td.share").get_attribute("data-share"))
        for i in range(rows.count())
    }


def look_up(page: Page, key: str) -> tuple[str, str]:
    """Type ``key`` into the lookup box; (owner, where a request goes now) as the page shows."""
    page.fill("#lookup-key", key)
    page.click("#lookup button")
    expect(page.locator("#lookup-result")).to_have_attribute("data-key", key, timeout=WAIT_MS)
    return page.locator("#lookup-owner").inner_text(), page.locator("#lookup-route").inner_text()


def test_three_members_with_shares_summing_to_100_percent(page: Page) -> None:
    rows = page.locator("#members tbody tr")
    expect(rows).to_have_count(3)
    shares = shares_on_page(page)
    assert list(shares) == ["Server 1", "Server 2", "Server 3"]
    assert abs(sum(shares.values()) - 1.0) < 1e-9, shares
    assert all(0.2 < s < 0.45 for s in shares.values()), f"maglev spreads evenly: {shares}"
    expect(page.locator("#share-total")).to_have_text("100.0 %")
    expect(page.locator("#members td.health[data-health=healthy]")).to_have_count(3)
    expect(page.locator("#strategy")).to_contain_text("maglev")
    expect(page.locator("#key")).to_have_text("header X-Request-ID")


def test_lookup_names_the_replica_a_real_request_reached(page: Page, local: LocalMode) -> None:
    seen = set()
    for key in ["424242", "100001", "user-17", "order/9f3a", "a b&c=d?e"]:
        real = reached(local, key)
        owner, route = look_up(page, key)
        assert (owner, route) == (real, real), f"key {key!r}: page says {owner}/{route}, request reached {real}"
        seen.add(real)
    assert len(seen) > 1, "the keys should not all land on one replica"


def test_added_replica_appears_with_the_moved_keys_figure(page: Page, local: LocalMode) -> None:
    """The page polls once a second (status.js POLL_MS): the new member shows up without a
    reload. How soon is not asserted: wall time on a loaded machine says nothing certain."""
    before = local.rep()["replicas"]
    reply = requests.post(f"{local.url}/add", json={"n": 1}, timeout=60)
    assert reply.status_code == 200, reply.text
    (new,) = set(reply.json()["message"]["replicas"]) - set(before)
    row = page.locator(f'#members tbody tr[data-name="{new}"]')
    expect(row).to_have_count(1, timeout=WAIT_MS)
    entry = page.locator("#changes li").filter(has_text=f"+{new}").first
    expect(entry).to_be_visible(timeout=WAIT_MS)
    moved = float(entry.locator(".moved").get_attribute("data-moved"))
    text = entry.locator(".moved").inner_text()
    assert f"{100 * moved:.1f} %" in text, text
    # adding a 4th member to 3 under maglev takes about a quarter of the keys (a bit more: maglev
    # also reshuffles some entries between the others)
    assert 0.2 < moved < 0.4, moved
    shares = shares_on_page(page)
    assert len(shares) == 4 and abs(sum(shares.values()) - 1.0) < 1e-9, shares


def test_frozen_replica_is_marked_ejected_and_lookup_follows_the_balancer(page: Page, local: LocalMode) -> None:
    """A replica that stops answering (SIGSTOP: alive but hung, so the supervisor keeps it in the
    ring) is ejected by the heartbeats; the page marks it, and the lookup box then names the
    member a real request reaches instead of it."""
    victim = next(m for m in status_data(local)["members"] if m["name"] == "Server 2")
    port = int(victim["address"].rsplit(":", 1)[1])
    key = next(k for k in (f"key-{i}" for i in itertools.count()) if owner_of(local, k) == "Server 2")
    pids = pids_listening(port)
    assert pids, "the replica should be listening"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        health = page.locator('#members tbody tr[data-name="Server 2"] td.health')
        expect(health).to_have_attribute("data-health", "ejected", timeout=2 * WAIT_MS)
        expect(health).to_contain_text("ejected")
        owner, route = look_up(page, key)
        assert owner == "Server 2" and route != "Server 2"
        assert reached(local, key) == route
        expect(page.locator("#lookup-result")).to_contain_text("owner ejected")
        if SCREENSHOT:
            time.sleep(1.5)  # let the charts draw a few more points for the picture
            page.screenshot(path=SCREENSHOT, full_page=True)
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    expect(page.locator('#members tbody tr[data-name="Server 2"] td.health')).to_have_attribute(
        "data-health", "healthy", timeout=2 * WAIT_MS
    )


def test_killed_replica_leaves_the_ring_and_comes_back_in_the_change_log(page: Page, local: LocalMode) -> None:
    """SIGKILL a replica (gunicorn master and worker): in local mode the supervisor pushes a
    membership without it at once and respawns it on the same port, so the page logs its
    removal, then its return, each with the fraction of keys moved."""
    victim = next(m for m in status_data(local)["members"] if m["name"] == "Server 3")
    port = int(victim["address"].rsplit(":", 1)[1])
    revision = status_data(local)["revision"]
    for pid in pids_listening(port):
        os.kill(pid, signal.SIGKILL)

    def logged(sign: str) -> list[tuple[int, float]]:
        return [(r, m) for r, text, m in change_log(page) if r > revision and f"{sign}Server 3" in text]

    removed = wait_until(lambda: logged("−"), 2 * WAIT, what="the removal of Server 3 in the change log")
    back = wait_until(lambda: logged("+"), 2 * WAIT, what="Server 3 back in the change log")
    assert back[0][0] > removed[0][0]
    for _, moved in removed + back:
        assert 0.1 < moved < 0.5, moved  # about its quarter of the keys, each way
    expect(page.locator('#members tbody tr[data-name="Server 3"] td.health')).to_have_attribute(
        "data-health", "healthy", timeout=2 * WAIT_MS
    )


def change_log(page: Page) -> list[tuple[int, str, float]]:
    """(revision, text, moved fraction) of each change-log entry on the page, newest first."""
    return page.eval_on_selector_all(
        "#changes li[data-revision]",
        "items => items.map(li => [Number(li.dataset.revision), li.textContent,"
        " Number(li.querySelector('.moved').dataset.moved)])",
    )


def owner_of(local: LocalMode, key: str) -> str:
    reply = requests.get(f"{local.url}/status/lookup", params={"key": key}, timeout=WAIT)
    reply.raise_for_status()
    return json.loads(reply.content)["owner"]


def test_a_warm_up_shows_its_ramp_then_ends(browser: Browser, tmp_path: Path) -> None:
    """``ringlb dev --warmup``: after ``/add`` the page shows the joining member, how far the
    keys have moved and each member's share once the warm-up ends; when the final table is in
    force the panel goes and the shares are the final ones."""
    local = LocalMode(tmp_path, "--warmup", "20")
    page = browser.new_page(viewport={"width": 1440, "height": 820})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        local.wait_replicas(3)
        page.goto(f"{local.url}/status")
        expect(page.locator("#state")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
        expect(page.locator("#warmup")).to_be_hidden()
        reply = requests.post(f"{local.url}/add", json={"n": 1}, timeout=60)
        assert reply.status_code == 200, reply.text
        expect(page.locator("#warmup")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator("#warmup-text")).to_contain_text("joining Server 4")
        fraction = float(page.locator("#warmup-progress").get_attribute("data-fraction"))
        assert 0.0 < fraction < 1.0, fraction
        final = page.locator('#members tbody tr[data-name="Server 4"] td.share .final')
        expect(final).to_have_count(1)
        final_share = float(final.get_attribute("data-final"))
        assert 0.2 < final_share < 0.3, final_share  # a quarter of the keys, once the warm-up ends
        expect(page.locator("#warmup")).to_be_hidden(timeout=4 * WAIT_MS)  # the 20 s ramp, then the final table
        expect(page.locator("#members td.share .final")).to_have_count(0)
        shares = shares_on_page(page)
        assert len(shares) == 4 and math.isclose(shares["Server 4"], final_share, rel_tol=1e-9), shares
        assert not errors, f"JavaScript errors on the page: {errors}"
    finally:
        page.close()
        leftovers = local.stop()
        assert not leftovers, f"processes outlived ringlb dev: {leftovers}"

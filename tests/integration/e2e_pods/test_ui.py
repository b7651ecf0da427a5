"""The Airflow UI, in Debian's headless chromium: log in through the
SimpleAuthManager's login form and open a finished run of an e2e DAG in the
grid; the grid shows the run as success. The screenshot is kept as a test
artifact (ui-grid.png).

Chromium runs offline (tests/headless_chromium.py: every name resolves to
nothing, every proxied request goes nowhere), and its network log must show
connections to loopback only: the port-forward to the api-server.

Real-node suite (see conftest.py).
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from conftest import wait_for
from headless_chromium import CHROMIUM, Browser, destinations, sent_off_host

DAG = "e2e_hello"  # one task that returns at once (its conf "path" is optional)
CACHE = os.environ.get("ELASTIC_AIRFLOW_CACHE", os.path.expanduser("~/.cache/elastic-airflow"))
ARTIFACTS = os.environ.get("ELASTIC_AIRFLOW_ARTIFACTS") or os.path.join(CACHE, "artifacts")

pytestmark = pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium (make deps); no browser build is "
                                                     "ever downloaded")


def log_in(browser, base, username, password, path):
    """Open path; the UI sends the browser to the login form, which, filled in, sends it back to path."""
    browser.navigate(base + path)
    browser.wait("location.pathname.endsWith('/auth/login') && !!document.querySelector('input[name=password]')",
                 "the login form", timeout=60)
    browser.type("input[name=username]", username)
    browser.type("input[name=password]", password)
    browser.click("button[type=submit]:not([disabled])")
    browser.wait("location.pathname.replace(/\\/$/, '') === %s" % json.dumps(path.rstrip("/")),
                 "the login to lead back to %s" % path, timeout=60)


def run_shown_in_grid(browser, dag_id, run_id):
    """On the run's page: the state its header badge shows, and the grid's tooltip for the run's bar.

    The grid draws each run as a bar (a link to the run) in a column
    div[data-run-id=<run id>], its colour the state; hovering it shows a tooltip
    (data-testid=basic-tooltip) with "Run ID: <run id>" and "State: <State>".
    The header of the run's page names the run (h2) next to its
    data-testid=state-badge.
    """
    run = json.dumps(run_id)
    # the header names the run, and its badge shows a text (not an i18n key, "state.success", still loading)
    header = browser.wait(
        "(() => { const h = Array.from(document.querySelectorAll('h2')).find(e => e.textContent.trim() === %s);"
        " const b = h && h.parentElement.querySelector('[data-testid=state-badge]');"
        " const t = b && b.textContent.trim(); return t && !t.includes('.') ? t : null; })()" % run,
        "the header of run %s of %s" % (run_id, dag_id), timeout=60)
    x, y = browser.element_center("div[data-run-id=%s] a" % run)  # the bar, the height of the run's duration
    tooltip, tries = None, 5
    while tooltip is None and tries:  # a tooltip opens on the pointer's entering the bar: leave it, enter again
        tries -= 1
        browser.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": 1, "y": 1})
        browser.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        try:
            tooltip = browser.wait(
                "(() => { const t = Array.from(document.querySelectorAll('[data-testid=basic-tooltip]'))"
                ".map(e => e.innerText).find(s => s.includes('Run ID: ' + %s)); return t || null; })()" % run,
                "the grid's tooltip of run %s" % run_id, timeout=5)
        except AssertionError:
            pass
    grid = None
    for line in (tooltip or "").splitlines():
        if line.startswith("State: "):
            grid = line[len("State: "):].strip()
    return {"header": header, "grid": grid}


def test_ui_login_shows_the_sample_dag_run_as_success(airflow):
    airflow.unpause(DAG)
    run_id = "ui-" + os.urandom(3).hex()
    airflow.trigger(DAG, {}, run_id)
    state = wait_for(lambda: airflow.run(DAG, run_id)["state"] in ("success", "failed")
                     and airflow.run(DAG, run_id)["state"], 300, f"run {run_id} of {DAG} to finish", interval=2)
    assert state == "success", airflow.tries(DAG, run_id)

    shot = os.path.join(ARTIFACTS, "ui-grid.png")
    path = f"/dags/{DAG}/runs/{urllib.parse.quote(run_id)}"
    with Browser() as browser:
        try:
            log_in(browser, airflow.base, airflow.username, airflow.password, path)
            shown = run_shown_in_grid(browser, DAG, run_id)
        finally:
            browser.screenshot(shot)  # with the tooltip open when it did
            print(f"\nscreenshot of the grid: {shot}")
    assert shown == {"header": "Success", "grid": "Success"}, shown

    port = urllib.parse.urlsplit(airflow.base).port
    assert sent_off_host(browser.netlog) == []
    assert f"127.0.0.1:{port}" in destinations(browser.netlog), destinations(browser.netlog)

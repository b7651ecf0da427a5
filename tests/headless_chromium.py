# -*- coding: utf-8 -*-
# Copyright: elastic_airflow developers
# Apache License 2.0 (see LICENSE)
"""Debian's chromium, headless and offline, for the tests.

Test files import this from the parent of their directory (they put `tests/`
on sys.path). Chromium runs with name resolution and proxying pointed at
nothing (OFFLINE), so it reaches nothing but loopback, and writes a network
log in which `sent_off_host` finds any connection or datagram that went
elsewhere. `Browser` drives one page over the Chrome DevTools Protocol
(websocket-client, a dependency of the kubernetes client); no browser build
is ever downloaded.
"""
import base64
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import websocket

CHROMIUM = shutil.which("chromium")
# Chromium's own services (updates, accounts) try to go out in the
# background; with these every name resolves to nothing and every request
# goes to a proxy on 127.0.0.1:9 that does not exist. Loopback addresses
# bypass the proxy (Chromium's implicit bypass rules).
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--no-first-run", "--no-pings", "--disable-domain-reliability"]
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu"]
LOOPBACK = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]):\d+$")


def destinations(netlog):
    """Where the network log shows Chromium connecting (TCP, "ip:port") or sending datagrams ("UDP ip:port")."""
    names = {number: name for name, number in netlog["constants"]["logEventTypes"].items()}
    out = []
    for event in netlog["events"]:
        name, params = names.get(event["type"]), event.get("params") or {}
        if name == "TCP_CONNECT":
            out += params.get("address_list", []) + [params[k] for k in ("remote_address",) if k in params]
        elif name == "UDP_BYTES_SENT":
            out.append("UDP %s" % params.get("address", "?"))
    return out


def sent_off_host(netlog):
    """Connections and datagrams the network log shows going anywhere but loopback."""
    return [a for a in destinations(netlog) if not LOOPBACK.match(a)]


def load_netlog(path):
    """A network log; one Chromium could not finish (killed) is closed here (its last event may be cut)."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        return json.loads(text)
    except ValueError:
        head = text.rpartition("},")[0]
        return json.loads(head + "}]}")


class CDPError(AssertionError):
    pass


class Browser:
    """One headless Chromium with one page, driven over the DevTools Protocol.

    Use as a context manager; after it exits, `netlog` holds the network log.
    """

    def __init__(self, width=1600, height=1000, timeout=30.0):
        if not CHROMIUM:
            raise RuntimeError("needs Debian's chromium (make deps)")
        self.timeout = timeout
        self.netlog = None
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        self.netlog_path = os.path.join(self.profile, "net.json")
        self.stderr = open(os.path.join(self.profile, "stderr.log"), "w+b")  # closed in close()
        self.proc = subprocess.Popen(
            [CHROMIUM, *HEADLESS, "--user-data-dir=" + self.profile, *OFFLINE, "--log-net-log=" + self.netlog_path,
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             "--window-size=%d,%d" % (width, height), "--hide-scrollbars", "--lang=en-US", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr, start_new_session=True)
        self.ids = itertools.count(1)
        self.session = None
        try:
            self.ws = websocket.create_connection(self.devtools_url(), timeout=timeout, suppress_origin=True)
            target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                     page=False)["sessionId"]
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def devtools_url(self):
        """The browser's DevTools websocket: Chromium writes its port and path to DevToolsActivePort."""
        active = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("chromium exited with %s: %s" % (self.proc.returncode, self.stderr_tail()))
            try:
                with open(active, encoding="utf-8") as fh:
                    lines = fh.read().split()
                if len(lines) == 2:
                    return "ws://127.0.0.1:%s%s" % (lines[0], lines[1])
            except FileNotFoundError:
                pass
            time.sleep(0.1)
        raise RuntimeError("chromium wrote no DevToolsActivePort in %.0f s: %s" % (self.timeout, self.stderr_tail()))

    def stderr_tail(self):
        self.stderr.seek(0)
        return self.stderr.read()[-2000:].decode(errors="replace")

    def call(self, method, params=None, page=True):
        """Send one command (to the page's session unless page=False) and return its result."""
        number = next(self.ids)
        message = {"id": number, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:  # events (none are enabled but the target's own) are dropped
            reply = json.loads(self.ws.recv())
            if reply.get("id") == number:
                if "error" in reply:
                    raise CDPError("%s: %s" % (method, reply["error"]))
                return reply.get("result", {})

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise CDPError("%s: %s" % (expression[:200], details.get("exception", {}).get("description")
                                       or details.get("text")))
        return result["result"].get("value")

    def wait(self, expression, what, timeout=None, interval=0.25):
        """Wait until the expression is truthy; return its value (an error evaluating it counts as false).

        The value comes back as JSON: return a string, number or flag, not a DOM node (`!!node`).
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        last = None
        while True:
            try:
                last = self.evaluate(expression)
                if last:
                    return last
            except CDPError as exc:
                last = exc
            if time.monotonic() > deadline:
                raise AssertionError("timed out after %.0f s waiting for %s at %s (last: %r)"
                                     % (timeout or self.timeout, what, self.location(), last))
            time.sleep(interval)

    def location(self):
        try:
            return self.evaluate("location.href")
        except CDPError:
            return "?"

    def navigate(self, url):
        """Open a URL and wait until its document has loaded."""
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CDPError("%s: %s" % (url, result["errorText"]))
        self.wait("document.readyState === 'complete' && location.href !== 'about:blank'", "%s to load" % url)

    def element_center(self, selector):
        """Scroll the first element matching the CSS selector into view; the centre of its box, in CSS pixels."""
        box = self.wait("(() => { const e = document.querySelector(%s); if (!e) return null;"
                        " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
                        " return r.width && r.height ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()"
                        % json.dumps(selector), "a visible %s" % selector)
        return box[0], box[1]

    def click(self, selector):
        """A left click with the mouse, at the centre of the element."""
        x, y = self.element_center(selector)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1})

    def type(self, selector, text):
        """Focus the input, clear it and type the text as the keyboard would (React sees the input events)."""
        self.click(selector)
        self.evaluate("(() => { const e = document.querySelector(%s); e.focus(); e.select(); })()"
                      % json.dumps(selector))
        self.call("Input.insertText", {"text": text})

    def screenshot(self, path):
        """A PNG of the viewport, written to path."""
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(base64.b64decode(data))
        return path

    def close(self):
        """Stop Chromium (asked first, then its process group killed), read its network log, remove the profile."""
        try:
            if getattr(self, "ws", None) is not None:
                try:
                    self.call("Browser.close", page=False)
                except (CDPError, OSError, websocket.WebSocketException):
                    pass
                self.ws.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(15)
            if os.path.exists(self.netlog_path):
                self.netlog = load_netlog(self.netlog_path)
        finally:
            self.stderr.close()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

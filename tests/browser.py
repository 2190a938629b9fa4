"""A small headless-Chromium driver for tests, over the DevTools protocol (websocket-client).

Starts Debian's ``chromium`` with a fresh profile and a DevTools port on 127.0.0.1, opens a page,
and collects what the console and the browser log report while it loads. Every wait is bounded
and the browser is always stopped, even when a test fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # the browser picks a free port and writes it to DevToolsActivePort
    "--window-size=1400,1000",
]


class BrowserError(RuntimeError):
    pass


class Chromium:
    """``with Chromium() as b: b.open(url); b.evaluate("...")``; ``b.errors`` lists console errors."""

    def __init__(self, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.errors: list[str] = []
        self._id = 0
        self._proc: subprocess.Popen | None = None
        self._ws: Any = None
        self._profile = tempfile.mkdtemp(prefix="bench-chromium-")

    def __enter__(self) -> Chromium:
        import websocket  # websocket-client

        if CHROMIUM is None:
            raise BrowserError("chromium is not installed")
        self._proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self._profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port = self._wait_for_port()
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], timeout=self.timeout, suppress_origin=True
        )
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._ws is not None:
                self._ws.close()
        finally:
            if self._proc is not None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=10)
            shutil.rmtree(self._profile, ignore_errors=True)

    def _wait_for_port(self) -> int:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserError(f"chromium exited with {self._proc.returncode}")
            if marker.exists():
                lines = marker.read_text().split()
                if lines:
                    return int(lines[0])
            time.sleep(0.1)
        raise BrowserError("chromium did not open its DevTools port")

    # ---- protocol
    def _recv(self, deadline: float) -> dict:
        self._ws.settimeout(max(0.1, deadline - time.monotonic()))
        msg = json.loads(self._ws.recv())
        self._note(msg)
        return msg

    def _note(self, msg: dict) -> None:
        """Keep every error the page or the browser reports."""
        method, p = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            self.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
            )
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            self.errors.append("exception: " + d.get("exception", {}).get("description", d.get("text", "")))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            self.errors.append(f"log ({p['entry']['source']}): {p['entry']['text']}")

    def call(self, method: str, **params: Any) -> dict:
        self._id += 1
        self._ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            msg = self._recv(deadline)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise BrowserError(f"{method}: {msg['error']}")
                return msg.get("result", {})
        raise BrowserError(f"{method}: no answer")

    def open(self, url: str) -> None:
        """Navigate and wait for the load event (every image decoded or failed), then let scripts settle."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._recv(deadline).get("method") == "Page.loadEventFired":
                break
        else:
            raise BrowserError(f"{url} did not finish loading")
        self.evaluate("new Promise(r => setTimeout(r, 200))", await_promise=True)

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        r = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise
        )
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression!r} raised {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def screenshot(self, path: Path) -> None:
        import base64

        r = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(r["data"]))

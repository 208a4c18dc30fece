"""Headless Chromium over the DevTools protocol on a pipe (``--remote-debugging-pipe``): open a
page, ask it what is visible, take a screenshot. Standard library only, no driver.

The protocol's messages are JSON objects separated by NUL bytes; Chromium reads commands on its
fd 3 and writes replies and events on fd 4.

    python tests/browser.py report.html shot.png     # the screenshot kept in docs/
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]
# A hang guard, not a performance assertion: a page that never answers fails instead of blocking CI.
REPLY_TIMEOUT_S = 120.0


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless browser with one page (a flattened session on a new target)."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.mkdtemp(prefix="hpcllm-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_pipes() -> None:  # in the child: the protocol's fds 3 (commands) and 4 (replies)
            commands, replies = os.dup(to_child_r), os.dup(from_child_w)  # above 4, so no clash below
            os.dup2(commands, 3)  # dup2 leaves 3 and 4 inheritable
            os.dup2(replies, 4)

        # close_fds=False: subprocess would close fds 3 and 4 after preexec_fn. Python's own fds are
        # close-on-exec, so the browser inherits only these two (dup2 makes them inheritable).
        self._proc = subprocess.Popen(
            [executable, *FLAGS, f"--user-data-dir={self._profile}"],
            close_fds=False,
            preexec_fn=wire_pipes,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    # --- the protocol ----------------------------------------------------------------------------
    def _send(self, message: dict[str, Any]) -> None:
        os.write(self._to_child, json.dumps(message).encode() + b"\0")

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_child], [], [], max(remaining, 0))
            if not ready:
                raise TimeoutError(f"chromium sent nothing for {REPLY_TIMEOUT_S:.0f} s")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"chromium closed the protocol pipe (exit {self._proc.poll()}): {err[-2000:]}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict[str, Any] | None = None, *, page: bool = False) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if page:
            message["sessionId"] = self._session
        self._send(message)
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_for_event(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            for i, event in enumerate(self._events):
                if event.get("method") == method:
                    return self._events.pop(i)
            self._events.append(self._receive(deadline))

    # --- what the tests use ----------------------------------------------------------------------
    def open(self, path: Path, width: int = 1400, height: int = 900) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            page=True,
        )
        self.call("Page.enable", page=True)
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, page=True)
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, page=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, output: Path, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics", page=True)["cssContentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
        data = self.call("Page.captureScreenshot", params, page=True)["data"]
        output = Path(output)
        output.write_bytes(base64.b64decode(data))
        return output

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_child, self._from_child):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self._proc.stderr:
            self._proc.stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    exe = find_chromium()
    if exe is None:
        raise SystemExit("no chromium on PATH (scripts/install-browser.sh installs it)")
    with Browser(exe) as browser:
        browser.open(Path(sys.argv[1]))
        print(browser.screenshot(Path(sys.argv[2])))

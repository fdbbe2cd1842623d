"""A real browser for tests: Debian's Chromium, headless, driven over the DevTools
protocol on a pipe (`--remote-debugging-pipe`: JSON messages ended by NUL on fds 3
and 4), so it needs nothing beyond the standard library and stays on one page while
the page changes by itself (live views over server-sent events never "finish
loading", which `--dump-dom` waits for). Skipped without Chromium (a failure under
CI=true)."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import pytest

from helpers import wait_until

# A page's own work (scripts, streams) is quick; a loaded 2-core CI machine is not.
COMMAND_TIMEOUT = 60.0


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "Chromium is not installed (scripts/setup.sh installs Debian's as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(f"\nskipping the browser tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return path


def _above_nine(fd: int) -> int:
    """`fd` moved to a number above 9 (the original closed)."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium with one tab; close() (or `with`) ends it and its profile."""

    def __init__(self) -> None:
        binary = chromium()
        self._profile = tempfile.mkdtemp(prefix="hpfaas-chromium-")
        # A file, not a pipe: nobody reads Chromium's chatter until something fails.
        self._log = tempfile.TemporaryFile()
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # The ends Chromium gets go above 9 first, so moving them to 3 and 4
        # cannot overwrite one with the other.
        to_browser_r, from_browser_w = (_above_nine(to_browser_r), _above_nine(from_browser_w))
        move = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        self._proc = subprocess.Popen(
            [
                "bash",
                "-c",
                move,
                binary,
                "--headless=new",
                "--no-sandbox",  # tests run as root, which Chromium's sandbox refuses
                "--disable-gpu",
                "--no-first-run",
                "--remote-debugging-pipe",
                f"--user-data-dir={self._profile}",
                "--window-size=1200,800",
                "about:blank",
            ],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: Dict[int, dict] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            target = self._call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self._session = self._call("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _read(self) -> None:
        buffered = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                break
            buffered += chunk
            *messages, buffered = buffered.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    with self._cond:
                        self._answers[message["id"]] = message
                        self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _call(self, method: str, params: Optional[dict] = None, session: Optional[str] = None) -> dict:
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: Dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        with self._cond:
            ok = self._cond.wait_for(lambda: ident in self._answers or self._closed, COMMAND_TIMEOUT)
            if ident not in self._answers:
                stderr = self._log_tail() if self._closed else ""
                raise AssertionError(f"Chromium did not answer {method} ({'closed' if ok else 'timeout'}) {stderr}")
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise AssertionError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def _log_tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:]

    def call(self, method: str, params: Optional[dict] = None) -> dict:
        """A DevTools command in the tab."""
        return self._call(method, params, self._session)

    def open(self, url: str) -> None:
        """Navigates the tab to `url` (its scripts then run by themselves)."""
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return answer.get("result", {}).get("value")

    def text(self) -> str:
        """What the page shows, as text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def html(self) -> str:
        """The page's DOM, serialized."""
        return self.evaluate("document.documentElement.outerHTML") or ""

    def wait_for(self, pred: Callable[[str], bool], what: str, timeout: float = 60.0, html: bool = False) -> str:
        """The page's text (or HTML) once `pred` holds for it, the page changing by itself."""
        last = [""]

        def probe() -> bool:
            last[0] = self.html() if html else self.text()
            return pred(last[0])

        try:
            wait_until(probe, timeout, what)
        except AssertionError as e:
            raise AssertionError(f"{e}; the page shows:\n{last[0][-3000:]}") from None
        return last[0]

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self._call("Browser.close")
        except AssertionError:
            pass
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

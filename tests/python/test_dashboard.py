"""The web dashboard in a real browser: Debian's Chromium, headless, logs in with a
one-time link from `hpfaas dashboard` (and the one `hpfaas up` wrote to up.json), sees the
running endpoint and a failed task's traceback, and takes screenshots (written to
$HPFAAS_SCREENSHOTS when set; docs/images/ holds the ones the docs show). Nothing is
downloaded: the page's assets are in the binary. Skipped without Chromium (a failure
under CI=true)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

BROWSER_TIMEOUT = 90


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "Chromium is not installed (scripts/setup.sh installs Debian's as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(f"\nskipping the dashboard tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    return path


def browse(url: str, screenshot: Path | None = None) -> str:
    """The page's DOM once its script has run (and a screenshot), in a fresh profile."""
    with tempfile.TemporaryDirectory(prefix="hpfaas-chromium-") as profile:
        args = [
            chromium(),
            "--headless=new",
            "--no-sandbox",  # tests run as root, which Chromium's sandbox refuses
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=8000",
            "--window-size=1200,800",
        ]
        if screenshot is not None:
            done = subprocess.run(
                args + [f"--screenshot={screenshot}", url],
                capture_output=True,
                text=True,
                timeout=BROWSER_TIMEOUT,
            )
            assert screenshot.exists(), done.stderr[-2000:]
            return ""
        done = subprocess.run(args + ["--dump-dom", url], capture_output=True, text=True, timeout=BROWSER_TIMEOUT)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout


def login_link(service, page: str = "") -> str:
    """A fresh one-time link from `hpfaas dashboard`, opening `page` (`#/...`)."""
    done = subprocess.run(
        [str(service.binary), "--output", "json", "dashboard", "--ttl", "120"],
        env={**os.environ, "HPFAAS_URL": service.url, "HPFAAS_TOKEN": service.token},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    url = json.loads(done.stdout)["url"]
    return url + (f"&next={page.replace('#', '%23')}" if page else "")


def boom(x):
    raise ValueError(f"bad value {x} <b>not markup</b>")


def shots_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("HPFAAS_SCREENSHOTS") or tmp_path)


def test_the_link_from_up_json_shows_the_running_endpoint(service, tmp_path):
    chromium()
    up = json.loads((service.home / "up.json").read_text())
    link = up.get("dashboard_url")
    assert link and link.startswith(service.url + "/ui/login?key="), up
    dom = browse(link)
    assert "endpoints online" in dom, dom[-3000:]
    assert service.endpoint_id in dom and "state-online" in dom, dom[-3000:]
    # The link worked once: opened again, it says how to get another.
    again = browse(link)
    assert "hpfaas dashboard" in again and service.endpoint_id not in again, again[-2000:]


def test_a_failed_task_shows_its_traceback_as_text(service, tmp_path):
    chromium()
    from hpfaas import Client, Executor

    with Executor(endpoint_id=service.endpoint_id, client=Client(service.url, service.token)) as ex:
        future = ex.submit(boom, 7)
        with pytest.raises(Exception):
            future.result(timeout=60)
        task_id = future.task_id
    dom = browse(login_link(service, f"#/task/{task_id}"))
    assert "ValueError" in dom and "bad value 7" in dom, dom[-3000:]
    # The exception's text is shown as text, never run as markup.
    assert "&lt;b&gt;not markup&lt;/b&gt;" in dom and "<b>not markup</b>" not in dom, dom[-3000:]
    browse(login_link(service, f"#/task/{task_id}"), shots_dir(tmp_path) / "dashboard-task.png")
    # The overview once tasks have run: the hour's bars and the recent tasks.
    overview = browse(login_link(service))
    assert "tasks/s now" in overview and task_id in overview, overview[-3000:]
    browse(login_link(service), shots_dir(tmp_path) / "dashboard-overview.png")


def test_without_a_session_the_page_says_how_to_log_in(service):
    chromium()
    dom = browse(service.url + "/ui/")
    assert "hpfaas dashboard" in dom and service.endpoint_id not in dom, dom[-2000:]

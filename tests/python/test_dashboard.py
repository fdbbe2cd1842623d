"""The web dashboard in a real browser: Debian's Chromium, headless, driven over the
DevTools protocol (browser.py), logs in with a one-time link from `hpfaas dashboard` (and
the one `hpfaas up` wrote to up.json), sees the running endpoint, a failed task's
traceback, the overview's counts move and a Slurm block's refusal appear while the page
stays open (live views over server-sent events), and takes screenshots (written to
$HPFAAS_SCREENSHOTS when set; docs/images/ holds the ones the docs show). Nothing is
downloaded: the page's assets are in the binary. Skipped without Chromium (a failure
under CI=true)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from browser import Browser
from cluster import User, slurm_jobs, slurm_or_skip

PAGE_TIMEOUT = 90.0
# Set once a page has loaded; a reload would lose it, so a page that still has it
# changed by itself.
MARK = "window.__hpfaasTestMark = 1"
MARKED = "window.__hpfaasTestMark === 1"


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


def double(x):
    return 2 * x


def shots_dir(tmp_path: Path) -> Path:
    return Path(os.environ.get("HPFAAS_SCREENSHOTS") or tmp_path)


def finished_card(text: str) -> int:
    """The overview's "tasks finished in the last hour" figure."""
    m = re.search(r"(\d+)\s*tasks finished in the last hour", text)
    return int(m.group(1)) if m else -1


def test_the_link_from_up_json_shows_the_running_endpoint(service):
    up = json.loads((service.home / "up.json").read_text())
    link = up.get("dashboard_url")
    assert link and link.startswith(service.url + "/ui/login?key="), up
    with Browser() as browser:
        browser.open(link)
        browser.wait_for(
            lambda html: service.endpoint_id in html and "state-online" in html and "endpoints online" in html,
            "the running endpoint on the overview",
            PAGE_TIMEOUT,
            html=True,
        )
    # The link worked once: opened again (another browser, no cookie), it says how to
    # get another.
    with Browser() as browser:
        browser.open(link)
        text = browser.wait_for(lambda t: "hpfaas dashboard" in t, "the way to log in", PAGE_TIMEOUT)
        assert service.endpoint_id not in text, text


def test_a_failed_task_shows_its_traceback_as_text(service, tmp_path):
    from hpfaas import Client, Executor

    with Executor(endpoint_id=service.endpoint_id, client=Client(service.url, service.token)) as ex:
        future = ex.submit(boom, 7)
        with pytest.raises(Exception):
            future.result(timeout=60)
        task_id = future.task_id
    with Browser() as browser:
        browser.open(login_link(service, f"#/task/{task_id}"))
        html = browser.wait_for(lambda h: "bad value 7" in h, "the traceback", PAGE_TIMEOUT, html=True)
        assert "ValueError" in html, html[-3000:]
        # The exception's text is shown as text, never run as markup.
        assert "&lt;b&gt;not markup&lt;/b&gt;" in html and "<b>not markup</b>" not in html, html[-3000:]
        browser.screenshot(shots_dir(tmp_path) / "dashboard-task.png")


def test_the_overview_counts_tasks_while_it_is_open(service, tmp_path):
    from hpfaas import Client, Executor

    with Browser() as browser:
        browser.open(login_link(service))
        text = browser.wait_for(lambda t: finished_card(t) >= 0, "the overview", PAGE_TIMEOUT)
        before = finished_card(text)
        browser.evaluate(MARK)
        with Executor(endpoint_id=service.endpoint_id, client=Client(service.url, service.token)) as ex:
            assert list(ex.map(double, range(25))) == [2 * x for x in range(25)]
            last = ex.submit(double, 100)
            assert last.result(timeout=60) == 200
            task_id = last.task_id
        text = browser.wait_for(
            lambda t: finished_card(t) >= before + 26 and task_id in t,
            "the overview to count the new tasks and list the last one",
            PAGE_TIMEOUT,
        )
        assert browser.evaluate(MARKED), "the page was reloaded, not updated"
        assert "tasks/s now" in text, text
        browser.screenshot(shots_dir(tmp_path) / "dashboard-overview.png")


def test_a_block_slurm_refuses_shows_its_message_on_the_open_endpoint_page(service, tmp_path):
    """The issue's check: a block that fails to submit (a bad partition) shows the
    scheduler's own message on the endpoint's page, arriving while the page is open."""
    slurm_or_skip()
    from hpfaas import Client, Executor

    name = "dash-bad-partition"
    with tempfile.TemporaryDirectory(prefix="hpfaas-dash-") as tmp:
        user = User(service, Path(tmp), emulated=False)
        config = Path(tmp) / "endpoints" / name / "config.toml"
        config.parent.mkdir(parents=True)
        # No block until there is work: the refusal comes after the page opened.
        config.write_text(
            '[provider]\ntype = "slurm"\npartition = "no-such-partition"\nwalltime = "00:05:00"\n'
            "init_blocks = 0\nmin_blocks = 0\nmax_blocks = 1\n"
        )
        try:
            endpoint_id = json.loads(user.ok("--output", "json", "endpoint", "start", name))["endpoint_id"]
            with Browser() as browser:
                browser.open(login_link(service, f"#/endpoint/{endpoint_id}"))
                browser.wait_for(lambda t: "agent_connected" in t, "the endpoint's first event", PAGE_TIMEOUT)
                browser.evaluate(MARK)
                with Executor(endpoint_id=endpoint_id, client=Client(service.url, service.token)) as ex:
                    future = ex.submit(double, 1)
                    text = browser.wait_for(
                        lambda t: "block_failed" in t and "invalid partition" in t,
                        "sbatch's refusal on the open page",
                        PAGE_TIMEOUT,
                    )
                    assert browser.evaluate(MARKED), "the page was reloaded, not updated"
                    assert "online" in text, text
                    browser.screenshot(shots_dir(tmp_path) / "dashboard-endpoint.png")
                    future.cancel()
        finally:
            user.run("endpoint", "stop", name)
            for job in slurm_jobs(f"hpfaas-{name}"):
                subprocess.run(["scancel", job], capture_output=True, timeout=30)


def test_without_a_session_the_page_says_how_to_log_in(service):
    with Browser() as browser:
        browser.open(service.url + "/ui/")
        text = browser.wait_for(lambda t: "hpfaas dashboard" in t, "the way to log in", PAGE_TIMEOUT)
        assert service.endpoint_id not in text, text

"""Shared fixtures: the working tree's SDK on sys.path, a real `hpfaas up` for every test
that needs a service, a second user of it, a TCP relay to it, and a gate tasks wait at."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Test the working tree, not whatever hpfaas happens to be installed.
sys.path.insert(0, str(REPO / "python"))

from helpers import wait_until  # noqa: E402  (after the path is set)

ENGINE_CONFIG = "[engine]\nheartbeat_period = 0.2\nheartbeat_threshold = 10.0\n"
STARTUP_TIMEOUT = 30.0
SHUTDOWN_TIMEOUT = 10.0


@dataclass
class Service:
    """A running `hpfaas up`: where it listens, how to authenticate, its endpoint."""

    url: str
    token: str
    endpoint_id: str
    home: Path
    log: Path
    binary: Path


def _read_up_json(path: Path, proc: subprocess.Popen) -> dict:
    """up.json's content once complete; fails at once if `hpfaas up` exits first."""
    if proc.poll() is not None:
        raise AssertionError(f"hpfaas up exited with status {proc.returncode}")
    try:
        up = json.loads(path.read_text())
    except (OSError, ValueError):  # not written yet, or half written
        return {}
    return up if {"url", "token", "endpoint_id"} <= up.keys() else {}


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        return "".join(log.read_text(errors="replace").splitlines(keepends=True)[-lines:])
    except OSError:
        return "(no log)"


def hpfaas_binary() -> Path:
    """The `hpfaas` under test: `$HPFAAS_BIN`, or the debug build of this tree."""
    return Path(os.environ.get("HPFAAS_BIN") or REPO / "target" / "debug" / "hpfaas")


@contextmanager
def running_up(binary: Path, prefix: str, extra_config: str = "", strict_shutdown: bool = True):
    """A fresh `hpfaas up --workers 2` in a temporary HPFAAS_HOME, stopped with SIGINT on exit.

    With `strict_shutdown`, the test fails if it ignores SIGINT or leaves up.json behind."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        home = Path(tmp)
        config = home / "engine.toml"
        config.write_text(ENGINE_CONFIG + extra_config)
        log = home / "hpfaas-up.log"
        up_json = home / "up.json"
        env = {k: v for k, v in os.environ.items() if k not in ("HPFAAS_URL", "HPFAAS_TOKEN")}
        env["HPFAAS_HOME"] = str(home)
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                [str(binary), "up", "--workers", "2", "--listen", "127.0.0.1:0"]
                + ["--config", str(config)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            try:
                up = wait_until(lambda: _read_up_json(up_json, proc), STARTUP_TIMEOUT, f"{up_json}")
            except AssertionError as exc:
                pytest.fail(f"hpfaas up did not start: {exc}; log:\n{_log_tail(log)}")
            yield Service(up["url"], up["token"], up["endpoint_id"], home, log, binary)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(SHUTDOWN_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                if strict_shutdown:
                    pytest.fail(f"hpfaas up ignored SIGINT for {SHUTDOWN_TIMEOUT} s")
        if strict_shutdown:
            assert not up_json.exists(), "hpfaas up left up.json behind after SIGINT"


@pytest.fixture(scope="session")
def service():
    """A fresh `hpfaas up --workers 2` in a temporary HPFAAS_HOME, stopped at the end."""
    binary = hpfaas_binary()
    if not binary.exists():
        reason = f"hpfaas binary not found at {binary} (build it, or set HPFAAS_BIN)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(f"\nskipping end-to-end tests: {reason}", file=sys.stderr)
        pytest.skip(reason)
    with running_up(binary, "hpfaas-e2e-") as up:
        yield up


@pytest.fixture(scope="session")
def other_user_token(service):
    """A token of a second user of the same service, who owns none of its endpoints."""
    done = subprocess.run(
        [str(service.binary), "token", "create", "--user", "other"]
        + ["--data-dir", str(service.home / "up")],  # where `hpfaas up` keeps its database
        env={**os.environ, "HPFAAS_HOME": str(service.home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STARTUP_TIMEOUT,
    )
    assert done.returncode == 0, f"hpfaas token create failed: {done.stderr}"
    return done.stdout.strip()


@pytest.fixture
def relay(service):
    """A TCP relay to the service (tests/python/relay.py), for network faults."""
    from relay import Relay

    proxy = Relay(service.url)
    yield proxy
    proxy.close()


@pytest.fixture
def gate():
    """A `helpers.Gate` that tasks running `helpers.gated` wait at; opened at teardown."""
    from helpers import Gate

    barrier = Gate()
    yield barrier
    barrier.close()

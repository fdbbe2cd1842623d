"""Workers and shell tasks in containers (`engine.container_type`), through a real
`hpfaas up`: bubblewrap with this machine's root, and Podman with an image the test
builds itself (a root filesystem holding only a Python, imported from a tarball, or run
from its directory) — nothing is pulled from a registry. Each task proves where it ran;
bad images and runtimes fail tasks with the runtime's own words.

Podman here needs runc and no default ulimits (Debian's crun refuses this machine's
cgroup v1 hierarchy, and raising RLIMIT_NOFILE needs a capability the sandbox lacks):
the test gives it a containers.conf of its own, and a private storage directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from helpers import wait_until
from conftest import hpfaas_binary, running_up

MARKER = "/hpfaas-test-image"
# The system's Python (not a pyenv or venv shim), whose files make the test image.
SYSTEM_PYTHON = "/usr/bin/python3"
# Parts of the standard library no worker imports, left out of the test image.
UNUSED_STDLIB = {"test", "site-packages", "dist-packages", "idlelib", "tkinter", "turtledemo", "ensurepip"}


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        reason = f"{tool} is not installed (scripts/setup.sh installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        print(f"\nskipping: {reason}", file=sys.stderr)
        pytest.skip(reason)


def where():
    """Where a task runs: its pid, the image marker, the container marker, a file only
    the node has, and the host name (a Podman container's own)."""
    import os
    import socket

    return {
        "pid": os.getpid(),
        "image": open("/hpfaas-test-image").read().strip() if os.path.exists("/hpfaas-test-image") else None,
        "containerenv": os.path.exists("/run/.containerenv"),
        "node_file": os.path.exists(os.environ.get("NODE_FILE", "/nonexistent")),
        "pid1": open("/proc/1/cmdline").read().split("\0")[0],
        "host": socket.gethostname(),
        "usr_writable": os.access("/usr", os.W_OK),
    }


def _libraries(binaries):
    """Every shared library the binaries load, as `ldd` finds them on this machine."""
    libs = set()
    for binary in binaries:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            parts = line.split()
            path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0] if parts else ""
            if path.startswith("/"):
                libs.add(path)
    return libs


def build_rootfs(tar_path: Path) -> None:
    """A root filesystem with this machine's Python and `/bin/sh` and nothing else of
    it, plus a marker file, as a tarball."""
    python = Path(os.path.realpath(SYSTEM_PYTHON))
    sh = Path(os.path.realpath("/bin/sh"))
    stdlib = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['stdlib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    version = stdlib.name  # python3.11
    dynload = list((stdlib / "lib-dynload").glob("*.so"))
    with tarfile.open(tar_path, "w") as tar:

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)

        def add_link(name: str, target: str) -> None:
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)

        for d in ["usr", "usr/bin", "usr/lib", "usr/lib64", "tmp", "proc", "dev", "sys", "run", "etc", "root"]:
            add_dir(d)
        for name, target in [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")]:
            add_link(name, target)
        tar.add(python, arcname=f"usr/bin/{version}")
        add_link("usr/bin/python3", version)
        tar.add(sh, arcname="usr/bin/sh")
        for lib in sorted(_libraries([python, sh, *dynload])):
            real = os.path.realpath(lib)
            # Where the loader looks: the path ldd printed, with /lib as /usr/lib.
            arc = lib.lstrip("/")
            if arc.startswith(("lib/", "lib64/")):
                arc = "usr/" + arc
            tar.add(real, arcname=arc)
        tar.add(
            stdlib,
            arcname=f"usr/lib/{version}",
            filter=lambda i: None if Path(i.name).name in UNUSED_STDLIB else i,
        )
        marker = tar_path.parent / "marker"
        marker.write_text("made by test_containers\n")
        tar.add(marker, arcname=MARKER.lstrip("/"))


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    """Podman set up for this sandbox, with private storage; the test image as a
    tarball and as a directory. Storage is reset at the end."""
    need("podman")
    need("runc")
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.skip(f"no {SYSTEM_PYTHON} to build the test image from")
    work = tmp_path_factory.mktemp("podman")
    (work / "containers.conf").write_text(
        '[containers]\ndefault_ulimits = []\npids_limit = 0\n[engine]\nruntime = "runc"\n'
    )
    (work / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\ngraphroot = "{work}/storage"\nrunroot = "{work}/run"\n'
    )
    env = {
        "CONTAINERS_CONF": str(work / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(work / "storage.conf"),
    }
    archive = work / "image.tar"
    build_rootfs(archive)
    rootfs = work / "rootfs"
    rootfs.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(rootfs, filter="tar")
    yield env, archive, rootfs
    subprocess.run(["podman", "system", "reset", "--force"], env={**os.environ, **env}, capture_output=True)


@pytest.fixture
def node_file(tmp_path, monkeypatch):
    """A file in the node's /tmp that no container should see."""
    path = Path("/tmp") / f"hpfaas-node-only-{os.getpid()}-{tmp_path.name}"
    path.write_text("node")
    monkeypatch.setenv("NODE_FILE", str(path))
    yield path
    path.unlink(missing_ok=True)


def run_where(service, n: int = 1):
    from hpfaas import Client, Executor

    with Executor(endpoint_id=service.endpoint_id, client=Client(service.url, service.token)) as ex:
        return [f.result(timeout=120) for f in [ex.submit(where) for _ in range(n)]]


def shell(service, cmd: str):
    from hpfaas import Client, Executor, ShellFunction

    with Executor(endpoint_id=service.endpoint_id, client=Client(service.url, service.token)) as ex:
        return ex.submit(ShellFunction(cmd)).result(timeout=120)


def test_bwrap_runs_workers_and_shell_tasks_in_namespaces_of_their_own(node_file):
    need("bwrap")
    config = 'container_type = "bwrap"\n'
    with running_up(hpfaas_binary(), "hpfaas-bwrap-", config) as up:
        seen = run_where(up, 4)
        for s in seen:
            # A pid namespace of its own (bwrap is its pid 1), the node's files
            # read-only, and a private /tmp without the node's.
            assert s["pid1"] == "bwrap" and s["pid"] < 10, s
            assert not s["usr_writable"] and not s["node_file"], s
        done = shell(up, "tr '\\0' ' ' < /proc/1/cmdline; echo; ls /tmp | wc -l")
        assert done.returncode == 0, done
        first, count = done.stdout.splitlines()
        assert first.startswith("bwrap ") and count.strip() == "0", done.stdout


def test_podman_runs_an_imported_image_archive_warm(podman, node_file, monkeypatch):
    env, archive, _ = podman
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = f'container_type = "podman"\ncontainer_uri = "{archive}"\n'
    with running_up(hpfaas_binary(), "hpfaas-podman-", config) as up:
        seen = run_where(up, 8)
        for s in seen:
            assert s["image"] == "made by test_containers", s
            assert s["containerenv"] and not s["node_file"] and s["pid"] == 1, s
        # Warm: the two workers' containers ran all eight tasks.
        assert 1 <= len({s["host"] for s in seen}) <= 2, seen
        done = shell(up, f"read line < {MARKER}; echo $line; [ -e /run/.containerenv ] && echo contained")
        assert done.stdout.split("\n")[:2] == ["made by test_containers", "contained"], done
    # Stopping the endpoint left no container behind.
    ps = subprocess.run(
        ["podman", "ps", "--all", "--format", "{{.Names}}"], capture_output=True, text=True, env=os.environ
    )
    assert "hpfaas-" not in ps.stdout, ps.stdout


def test_a_manager_removes_the_containers_a_killed_manager_left(podman, monkeypatch):
    env, archive, _ = podman
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    image = subprocess.run(
        ["podman", "import", "--quiet", str(archive)], capture_output=True, text=True, check=True
    ).stdout.strip()
    # A pid no process has (beyond pid_max), this test's own (alive), and another user's.
    uid = os.getuid()
    names = {
        "dead": f"hpfaas-{uid}-4194305-w0-0",
        "alive": f"hpfaas-{uid}-{os.getpid()}-w0-0",
        "other user": f"hpfaas-{uid + 1}-4194305-w0-0",
    }
    try:
        for name in names.values():
            subprocess.run(
                ["podman", "run", "--detach", "--name", name, image, SYSTEM_PYTHON, "-c", "import time; time.sleep(600)"],
                capture_output=True,
                text=True,
                check=True,
            )

        def listed():
            ps = subprocess.run(["podman", "ps", "--all", "--format", "{{.Names}}"], capture_output=True, text=True)
            return set(ps.stdout.split())

        config = f'container_type = "podman"\ncontainer_uri = "{archive}"\n'
        with running_up(hpfaas_binary(), "hpfaas-sweep-", config) as up:
            (s,) = run_where(up)
            assert s["containerenv"], s
            wait_until(lambda: names["dead"] not in listed(), 120, "the dead manager's container to go")
        left = listed()
        assert names["alive"] in left and names["other user"] in left, left
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "0", *names.values()], capture_output=True)


def test_podman_runs_a_root_filesystem_directory(podman, monkeypatch):
    env, _, rootfs = podman
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    config = f'container_type = "podman"\ncontainer_uri = "{rootfs}"\n'
    with running_up(hpfaas_binary(), "hpfaas-rootfs-", config) as up:
        (s,) = run_where(up)
        assert s["image"] == "made by test_containers" and s["containerenv"], s
    # The directory is under an overlay: tasks did not change it.
    assert sorted(p.name for p in (rootfs / "tmp").iterdir()) == []


def test_a_missing_image_fails_tasks_with_podmans_words(podman, monkeypatch):
    env, _, _ = podman
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    from hpfaas.errors import TaskExecutionFailed

    image = "localhost/hpfaas-no-such-image:1"
    config = f'container_type = "podman"\ncontainer_uri = "{image}"\ncontainer_cmd_options = "--pull never"\n'
    with running_up(hpfaas_binary(), "hpfaas-noimage-", config) as up:
        with pytest.raises(TaskExecutionFailed) as failed:
            run_where(up)
        message = str(failed.value)
        assert image in message and "podman" in message, message
        assert "image not known" in message, message


def test_a_runtime_that_is_not_installed_is_named(monkeypatch):
    from hpfaas.errors import TaskExecutionFailed

    if shutil.which("apptainer"):
        pytest.skip("apptainer is installed here; this test needs a runtime that is not")
    config = 'container_type = "apptainer"\ncontainer_uri = "/images/science.sif"\n'
    with running_up(hpfaas_binary(), "hpfaas-noruntime-", config) as up:
        with pytest.raises(TaskExecutionFailed) as failed:
            run_where(up)
        assert "apptainer is not installed on this node" in str(failed.value), failed.value
        with pytest.raises(TaskExecutionFailed) as failed:
            shell(up, "true")
        assert "apptainer is not installed" in str(failed.value), failed.value


def test_a_container_that_dies_at_start_fails_tasks_with_its_words():
    need("bwrap")
    config = 'container_type = "bwrap"\ncontainer_cmd_options = "--bind /nonexistent-hpfaas-src /mnt"\n'
    from hpfaas.errors import TaskExecutionFailed

    with running_up(hpfaas_binary(), "hpfaas-deadstart-", config) as up:
        with pytest.raises(TaskExecutionFailed) as failed:
            run_where(up)
        message = str(failed.value)
        assert "bwrap container" in message and "nonexistent-hpfaas-src" in message, message
        # The shell task fails too, saying the same; the endpoint goes on.
        done = shell(up, "true")
        assert done.returncode != 0 and "nonexistent-hpfaas-src" in done.stderr, done

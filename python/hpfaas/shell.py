"""Shell commands as functions: `ShellFunction` and the `ShellResult` it returns.

On an endpoint the manager runs a shell function itself, without Python; calling
one locally runs the same command through `subprocess`, which is handy in tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Optional

#: Exit status of a command killed for exceeding its walltime (as `timeout(1)` uses).
WALLTIME_EXIT_CODE = 124


@dataclass(frozen=True)
class ShellResult:
    """What a shell command did: exit status, the tail of its output, the command line."""

    returncode: int
    stdout: str
    stderr: str
    cmd: str


class ShellFunction:
    """A shell command line whose `{name}` placeholders are filled from keyword arguments."""

    #: The class name the default `__name__` and the repr show.
    _kind = "ShellFunction"

    def __init__(
        self,
        cmd: str,
        walltime: Optional[float] = None,
        snippet_lines: int = 1000,
        name: Optional[str] = None,
    ):
        self.cmd = cmd
        self.walltime = walltime
        self.snippet_lines = snippet_lines
        # Registration names the function after `__name__`, like a Python function.
        self.__name__ = name or f"{self._kind}: {cmd}"

    def to_dict(self) -> dict:
        """The wire form the manager reads (`sh\\n` strategy)."""
        return {"cmd": self.cmd, "walltime": self.walltime, "snippet_lines": self.snippet_lines}

    def __repr__(self) -> str:
        return f"{self._kind}({self.cmd!r}, walltime={self.walltime!r})"

    def __call__(self, **kwargs) -> ShellResult:
        """Run the command here with `/bin/sh`, as the manager would on an endpoint."""
        return self.run_line(self.cmd.format(**kwargs))

    def run_line(self, cmd: str) -> ShellResult:
        """Run a filled-in command line with `/bin/sh`, under this function's walltime."""
        # A session of its own lets a walltime kill reach the command's children too.
        proc = subprocess.Popen(
            cmd,
            shell=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=self.walltime)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:  # the whole group exited meanwhile
                pass
            stdout, stderr = proc.communicate()
            returncode = WALLTIME_EXIT_CODE
            stderr += f"hpfaas: command killed after exceeding its walltime of {self.walltime} s\n"
        return ShellResult(returncode, self._tail(stdout), self._tail(stderr), cmd)

    def _tail(self, text: str) -> str:
        lines = text.splitlines(keepends=True)
        return "".join(lines[max(len(lines) - self.snippet_lines, 0) :])

"""Shell commands as functions: `ShellFunction` and the `ShellResult` it returns.

On an endpoint the manager runs a shell function itself, without Python; calling
one locally runs the same command through `subprocess`, which is handy in tests.

Keyword arguments fill the command's `{name}` placeholders each quoted as one
shell word (`shlex.quote`), so a caller cannot add commands of their own; unlike
Globus Compute, which pastes them as they are. The function's author may ask for
that with `quote_arguments=False`; a caller cannot.
"""

from __future__ import annotations

import json
import os
import shlex
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
    #: Bytes of output beyond what `stdout` / `stderr` show (over the endpoint's
    #: `shell_output_limit` or `snippet_lines`); 0 when whole.
    stdout_dropped: int = 0
    stderr_dropped: int = 0


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
        quote_arguments: bool = True,
    ):
        self.cmd = cmd
        self.walltime = walltime
        self.snippet_lines = snippet_lines
        self.quote_arguments = quote_arguments
        # Registration names the function after `__name__`, like a Python function.
        self.__name__ = name or f"{self._kind}: {cmd}"

    def to_dict(self) -> dict:
        """The wire form the manager reads (`sh\\n` strategy)."""
        doc = {"cmd": self.cmd, "walltime": self.walltime, "snippet_lines": self.snippet_lines}
        if not self.quote_arguments:
            doc["quote_arguments"] = False
        return doc

    def __repr__(self) -> str:
        return f"{self._kind}({self.cmd!r}, walltime={self.walltime!r})"

    def __call__(self, **kwargs) -> ShellResult:
        """Run the command here with `/bin/sh`, as the manager would on an endpoint."""
        return self.run_line(self.render(**kwargs))

    def render(self, **kwargs) -> str:
        """The command line with placeholders filled as the manager fills them."""
        if not self.quote_arguments:
            return self.cmd.format(**kwargs)
        return self.cmd.format(**{k: shlex.quote(_text(v)) for k, v in kwargs.items()})

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


def _text(value) -> str:
    """A keyword argument as the manager writes it: strings as they are, the rest as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))

"""The payload codec shared by the SDK and the worker runtime (docs/api.md, "Payload format").

Buffers are framed as Globus Compute frames them, `f"{len(b)}\\n{b}"` with lengths
in characters, and each buffer opens with a 3-character strategy id. Only the
standard library is needed; dill or cloudpickle are used when importable, for
objects plain pickle cannot carry (lambdas, closures).
"""

from __future__ import annotations

import ast
import base64
import builtins
import functools
import importlib
import inspect
import json
import linecache
import pickle
import textwrap
from typing import Any, Callable, List, Optional

from hpfaas.shell import ShellFunction, ShellResult

PICKLE = "00\n"
BY_VALUE_PICKLE = "01\n"
JSON = "11\n"
SOURCE = "st\n"
SOURCE_DILL = "sd\n"
SHELL_FUNCTION = "sh\n"
SHELL_RESULT = "sr\n"

PICKLE_PROTOCOL = 4

# What pickle raises for objects it cannot carry: PicklingError for lambdas,
# TypeError for locks and sockets, AttributeError for local objects (before 3.14).
_UNPICKLABLE = (pickle.PicklingError, TypeError, AttributeError)


def pack(buffers: List[str]) -> str:
    """Join buffers as Globus Compute does: `f"{len(b)}\\n{b}"` each."""
    return "".join(f"{len(b)}\n{b}" for b in buffers)


def unpack(packed: str) -> List[str]:
    """Split a packed string back into its buffers; `ValueError` names a bad offset."""
    buffers = []
    pos = 0
    while pos < len(packed):
        newline = packed.find("\n", pos)
        digits = packed[pos:newline]
        if newline < 0 or not (digits.isascii() and digits.isdigit()):
            raise ValueError(f"malformed buffer framing at offset {pos}: expected '<length>\\n'")
        start = newline + 1
        end = start + int(digits)
        if end > len(packed):
            raise ValueError(
                f"truncated buffer at offset {pos}: {int(digits)} characters announced,"
                f" {len(packed) - start} left"
            )
        buffers.append(packed[start:end])
        pos = end
    return buffers


@functools.cache
def _by_value_dumps() -> Optional[Callable[[Any], bytes]]:
    """dill's or cloudpickle's `dumps` (protocol 4), or None when neither is installed."""
    for name in ("dill", "cloudpickle"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return functools.partial(module.dumps, protocol=PICKLE_PROTOCOL)
    return None


@functools.cache
def _loads() -> Callable[[bytes], Any]:
    """`dill.loads` when dill is importable, else `pickle.loads`."""
    try:
        import dill
    except ImportError:
        return pickle.loads
    return dill.loads


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def serialize(obj: Any) -> str:
    """Encode data as `00\\n` + base64 pickle; dill/cloudpickle take what pickle cannot."""
    try:
        data = pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    except _UNPICKLABLE:
        dumps = _by_value_dumps()
        if dumps is None:
            raise
        data = dumps(obj)
    return PICKLE + _b64(data)


def serialize_json(obj: Any) -> str:
    """Encode JSON-compatible data as `11\\n` + JSON text."""
    return JSON + json.dumps(obj)


def serialize_function(fn: Callable) -> str:
    """Encode a function: source text for a module-level `def`, else dill/cloudpickle."""
    if isinstance(fn, ShellFunction):
        return SHELL_FUNCTION + json.dumps(fn.to_dict())
    if not callable(fn):
        raise TypeError(f"cannot register {fn!r}: it is not callable")
    source = _module_level_source(fn)
    if source is not None:
        return f"{SOURCE}{fn.__name__}:{source}"
    dumps = _by_value_dumps()
    if dumps is None:
        raise TypeError(
            f"cannot serialize {fn!r}: without cloudpickle or dill only functions defined"
            " with `def` at module level (with their source file available) can be sent;"
            " define it at module level, or `pip install cloudpickle` (or dill)"
        )
    return BY_VALUE_PICKLE + _b64(dumps(fn))


def _module_level_source(fn: Callable) -> Optional[str]:
    """The `def` of a plain module-level function without its decorators, or None."""
    if (
        not inspect.isfunction(fn)
        or fn.__name__ == "<lambda>"
        or fn.__qualname__ != fn.__name__  # nested in a function or a class
        or fn.__closure__
        # A wrapping decorator's source is the inner function's: sending that
        # would silently drop the decorator, so such functions go by value.
        or hasattr(fn, "__wrapped__")
    ):
        return None
    try:
        source = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):
        return None
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.FunctionDef) or node.name != fn.__name__:
        return None
    # The node's line is the `def` itself; the lines above it are decorators,
    # which need not exist where the function runs.
    return "".join(source.splitlines(keepends=True)[node.lineno - 1 :])


def _load_pickle(body: str) -> Any:
    return _loads()(base64.b64decode(body))


def _load_source(body: str) -> Any:
    # Globus Compute 2.x sends `name:source` as is; later versions base64 it.
    # Base64 has no ':' while `name:source` always has one.
    if ":" not in body:
        body = base64.b64decode(body).decode("utf-8")
    name, source = body.split(":", 1)
    # Registering the source with linecache puts its lines into remote tracebacks.
    filename = f"<hpfaas function {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


def _load_shell_function(body: str) -> ShellFunction:
    spec = json.loads(body)
    # Imported here: a worker decoding ordinary functions never needs it.
    from hpfaas.mpi import MPIFunction

    kind = MPIFunction if spec.get("mpi") else ShellFunction
    return kind(spec["cmd"], spec.get("walltime"), spec.get("snippet_lines", 1000))


def _load_shell_result(body: str) -> ShellResult:
    doc = json.loads(body)
    return ShellResult(doc["returncode"], doc["stdout"], doc["stderr"], doc["cmd"])


_DECODERS = {
    PICKLE: _load_pickle,
    BY_VALUE_PICKLE: _load_pickle,
    JSON: json.loads,
    SOURCE: _load_source,
    SOURCE_DILL: _load_source,
    SHELL_FUNCTION: _load_shell_function,
    SHELL_RESULT: _load_shell_result,
}


def deserialize(buffer: str) -> Any:
    """Decode one serialized buffer according to its 3-character strategy id."""
    decoder = _DECODERS.get(buffer[:3])
    if decoder is None:
        raise ValueError(f"unknown serialization strategy {buffer[:3]!r}")
    return decoder(buffer[3:])

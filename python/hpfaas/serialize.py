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
from typing import Any, Callable, List, Optional, Tuple

from hpfaas.shell import ShellFunction, ShellResult

PICKLE = "00\n"
BY_VALUE_PICKLE = "01\n"
JSON = "11\n"
SOURCE = "st\n"
SOURCE_DILL = "sd\n"
SHELL_FUNCTION = "sh\n"
# Globus Compute's other strategies, decoded (never produced) here: see docs/globus-compute.md.
GC_PICKLE_CODE = "02\n"  # PickleCode (deprecated): base64 of a plain pickle of a function
GC_DILL_TEXT_INSPECT = "03\n"  # DillCodeTextInspect: base64 pickle of (name, source)
GC_DILL_SOURCE = "04\n"  # DillCodeSource: the same layout as 03
GC_COMBINED_CODE = "10\n"  # CombinedCode (deprecated): "id:body" chunks joined by ':'
ALL_CODE = "12\n"  # AllCodeStrategies: pack() of whole buffers, each with its own id
ALL_DATA = "13\n"  # AllDataStrategies: the same layout, for data
SHELL_RESULT = "sr\n"
# hpfaas: an args buffer whose pickle travels raw beside the payload text (the
# task's blob); the buffer holds the blob's length in bytes (docs/api.md).
PICKLE_BLOB = "pb\n"
# hpfaas: the third buffer of a dependent task's payload, appended by the
# service when the task is released: its parents' results, packed, in the
# order the args' references number them (docs/api.md, "Dependencies").
PARENT_RESULTS = "dr\n"
_PARENT_TAG = "hpfaas-parent"

PICKLE_PROTOCOL = 4

# What pickle raises for objects it cannot carry: PicklingError for lambdas,
# TypeError for locks and sockets, AttributeError for local objects (before 3.14).
_UNPICKLABLE = (pickle.PicklingError, TypeError, AttributeError)


def pack(buffers: List[str]) -> str:
    """Join buffers as Globus Compute does: `f"{len(b)}\\n{b}"` each."""
    return "".join([f"{len(b)}\n{b}" for b in buffers])


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


class MissingDill(ImportError):
    """A dill pickle reached a Python without dill (a Globus Compute client's default)."""


def _pickle_loads(data: bytes) -> Any:
    """Load a pickle; a dill pickle without dill installed becomes `MissingDill`."""
    try:
        return _loads()(data)
    except ModuleNotFoundError as exc:
        if exc.name != "dill" and not str(exc).startswith("No module named 'dill"):
            raise
        raise MissingDill(
            "this payload was pickled with dill (Globus Compute's default strategies),"
            " but dill is not installed in the worker's Python: install dill there"
            " (`pip install dill`, the same version as the client's), or serialize"
            " with a source strategy (PureSourceTextInspect for code, JSONData for data)"
        ) from exc


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _pickle_bytes(obj: Any) -> bytes:
    """A pickle of `obj`; dill/cloudpickle take what pickle cannot."""
    try:
        return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)
    except _UNPICKLABLE:
        dumps = _by_value_dumps()
        if dumps is None:
            raise
        return dumps(obj)


def serialize(obj: Any) -> str:
    """Encode data as `00\\n` + base64 pickle; dill/cloudpickle take what pickle cannot."""
    return PICKLE + _b64(_pickle_bytes(obj))


def serialize_or_blob(obj: Any, blob_min: Optional[int]) -> Tuple[str, Optional[bytes]]:
    """`(serialize(obj), None)`, but a pickle over `blob_min` bytes (if given)
    is not base64-encoded: `(f"pb\\n{len(pickle)}", pickle)`, sent raw."""
    data = _pickle_bytes(obj)
    if blob_min is not None and len(data) > blob_min:
        return f"{PICKLE_BLOB}{len(data)}", data
    return PICKLE + _b64(data), None


class RefPickler(pickle.Pickler):
    """A pickler that writes each object `is_ref` accepts as a numbered
    reference (a persistent id), collecting them in `refs` in order; the
    worker puts the referenced task's result in its place."""

    def __init__(self, file: Any, is_ref: Callable[[Any], bool], refs: List[Any]) -> None:
        super().__init__(file, protocol=PICKLE_PROTOCOL)
        self._is_ref = is_ref
        self.refs = refs
        # By identity: `refs` keeps each object alive, so its id stays its own.
        self._numbers = {id(ref): i for i, ref in enumerate(refs)}

    def persistent_id(self, obj: Any) -> Any:
        if not self._is_ref(obj):
            return None
        number = self._numbers.get(id(obj))
        if number is None:
            number = self._numbers[id(obj)] = len(self.refs)
            self.refs.append(obj)
        return (_PARENT_TAG, number)


def serialize_with_refs(obj: Any, is_ref: Callable[[Any], bool], refs: List[Any]) -> str:
    """`00\n` + base64 of a pickle of `obj` with its references numbered
    (`RefPickler`), appended to `refs`."""
    import io

    buffer = io.BytesIO()
    RefPickler(buffer, is_ref, refs).dump(obj)
    return PICKLE + _b64(buffer.getvalue())


def deserialize_with_parents(buffer: str, results: List[Any]) -> Any:
    """Decode a buffer whose references (`serialize_with_refs`) become the
    parents' results, by number."""
    if buffer[:3] != PICKLE:
        return deserialize(buffer)
    import io

    class _Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            if (
                isinstance(pid, tuple)
                and len(pid) == 2
                and pid[0] == _PARENT_TAG
                and isinstance(pid[1], int)
                and 0 <= pid[1] < len(results)
            ):
                return results[pid[1]]
            raise pickle.UnpicklingError(
                f"the arguments name parent result {pid!r}; the task received {len(results)}"
            )

    return _Unpickler(io.BytesIO(base64.b64decode(buffer[3:]))).load()


def deserialize_blob(buffer: str, blob: Optional[memoryview]) -> Any:
    """Decode a `pb\\n<length>` buffer's object from the blob it names."""
    length = buffer[len(PICKLE_BLOB) :]
    if blob is None:
        raise ValueError("the args name a blob (pb\\n) but the task came without one")
    if not (length.isascii() and length.isdigit()) or int(length) != len(blob):
        raise ValueError(f"the args name a blob of {length!r} bytes; the task's blob has {len(blob)}")
    return _pickle_loads(blob)


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
    # Globus Compute's base64 carries a newline every 76 characters; b64decode skips them.
    return _pickle_loads(base64.b64decode(body))


def _exec_source(name: str, source: str) -> Any:
    # Registering the source with linecache puts its lines into remote tracebacks.
    filename = f"<hpfaas function {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


def _load_pickled_source(body: str) -> Any:
    """`03\\n`/`04\\n`: base64 of a pickle of the tuple (name, source text)."""
    name, source = _pickle_loads(base64.b64decode(body))
    return _exec_source(name, source)


def _load_combo(body: str) -> Any:
    """`12\\n`/`13\\n`: packed whole buffers, each of another strategy; the first that decodes wins.

    A source strategy usually comes first, so a worker without dill still runs
    what the client's default combination sent."""
    return _first_decodable(unpack(body))


def _load_combined_code(body: str) -> Any:
    """`10\\n`: ":"-joined pairs of strategy id and body (ids keep their newline).

    A source body holds ':' itself, so the chunks are found by their ids rather
    than by splitting: each chunk starts at ':' + a known id, or at the start."""
    ids = (GC_DILL_SOURCE, BY_VALUE_PICKLE, GC_DILL_TEXT_INSPECT, SOURCE_DILL, SOURCE)
    starts = [0] if body[:3] in ids else []
    for ident in ids:
        pos = body.find(":" + ident)
        while pos >= 0:
            starts.append(pos + 1)
            pos = body.find(":" + ident, pos + 1)
    starts.sort()
    chunks = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 1 if i + 1 < len(starts) else len(body)
        ident, rest = body[start : start + 3], body[start + 4 : end]
        chunks.append(ident + rest)  # the ':' after the id is dropped
    return _first_decodable(chunks)


def _first_decodable(buffers: List[str]) -> Any:
    errors = []
    for buffer in buffers:
        try:
            return deserialize(buffer)
        except Exception as exc:  # try the next strategy, as Globus Compute does
            errors.append(f"{buffer[:2]!r}: {type(exc).__name__}: {exc}")
    detail = "; ".join(errors) or "it is empty"
    if any(": MissingDill: " in e for e in errors):
        raise MissingDill(f"no strategy of this combined buffer decodes: {detail}")
    raise ValueError(f"no strategy of this combined buffer decodes: {detail}")


def _load_source(body: str) -> Any:
    # Globus Compute 2.x sends `name:source` as is; later versions base64 it.
    # Base64 has no ':' while `name:source` always has one.
    if ":" not in body:
        body = base64.b64decode(body).decode("utf-8")
    name, source = body.split(":", 1)
    return _exec_source(name, source)


def _load_shell_function(body: str) -> ShellFunction:
    spec = json.loads(body)
    # Imported here: a worker decoding ordinary functions never needs it.
    from hpfaas.mpi import MPIFunction

    kind = MPIFunction if spec.get("mpi") else ShellFunction
    return kind(
        spec["cmd"],
        spec.get("walltime"),
        spec.get("snippet_lines", 1000),
        quote_arguments=spec.get("quote_arguments", True),
    )


def _load_shell_result(body: str) -> ShellResult:
    doc = json.loads(body)
    return ShellResult(
        doc["returncode"],
        doc["stdout"],
        doc["stderr"],
        doc["cmd"],
        doc.get("stdout_dropped", 0),
        doc.get("stderr_dropped", 0),
    )


_DECODERS = {
    PICKLE: _load_pickle,
    BY_VALUE_PICKLE: _load_pickle,
    JSON: json.loads,
    SOURCE: _load_source,
    SOURCE_DILL: _load_source,
    SHELL_FUNCTION: _load_shell_function,
    SHELL_RESULT: _load_shell_result,
    GC_PICKLE_CODE: _load_pickle,
    GC_DILL_TEXT_INSPECT: _load_pickled_source,
    GC_DILL_SOURCE: _load_pickled_source,
    GC_COMBINED_CODE: _load_combined_code,
    ALL_CODE: _load_combo,
    ALL_DATA: _load_combo,
}

# Globus Compute's `result_serializers` name strategies by import path
# (`globus_compute_sdk.serialize.DillDataBase64`, or `...concretes.JSONData`):
# the class name picks the strategy id.
GC_RESULT_STRATEGIES = {
    "DillDataBase64": PICKLE,
    "JSONData": JSON,
    "AllDataStrategies": ALL_DATA,
}


def result_strategy(name: str) -> Optional[str]:
    """The strategy id a `result_serializers` entry names (an id or a GC import path), or None."""
    if name in (PICKLE, JSON, ALL_DATA):
        return name
    if name.startswith("globus_compute_sdk."):
        return GC_RESULT_STRATEGIES.get(name.rpartition(".")[2])
    return None


def serialize_all_data(obj: Any) -> str:
    """`13\\n`: JSON (when the value is JSON data) then pickle, packed, as Globus Compute does."""
    buffers = []
    try:
        buffers.append(serialize_json(obj))
    except (TypeError, ValueError):
        pass
    buffers.append(serialize(obj))
    return ALL_DATA + pack(buffers)


def deserialize(buffer: str) -> Any:
    """Decode one serialized buffer according to its 3-character strategy id."""
    decoder = _DECODERS.get(buffer[:3])
    if decoder is None:
        raise ValueError(f"unknown serialization strategy {buffer[:3]!r}")
    return decoder(buffer[3:])

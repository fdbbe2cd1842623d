"""The payload codec: framing, every strategy, and how functions are sent."""

from __future__ import annotations

import base64
import functools
import json
import pickle
import threading
import traceback

import pytest

from hpfaas import ShellFunction, ShellResult
from hpfaas import serialize as codec
from hpfaas.serialize import (
    deserialize,
    pack,
    serialize,
    serialize_function,
    serialize_json,
    unpack,
)


def registered(fn):
    """A decorator that returns the function itself, as registries do."""
    return fn


def tagged(**tags):
    """A decorator factory that marks the function and returns it."""

    def apply(fn):
        fn.tags = tags
        return fn

    return apply


def add(a, b=10):
    return a + b


def labelled(fn):
    """A wrapping decorator: sending `fn`'s source alone would lose it."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return ("labelled", fn(*args, **kwargs))

    return wrapper


@labelled
def labelled_add(a, b=10):
    return a + b


@registered
@tagged(
    kind="spans lines",
)
def decorated_twice(x):
    return x * 3


def by_value_library():
    for name in ("dill", "cloudpickle"):
        try:
            return __import__(name)
        except ImportError:
            pass
    return None


# -- framing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "buffers",
    [
        [],
        [""],
        ["00\nabc", "11\n{}"],
        ["ééé", "x"],
        ["line\nbreaks\n", "3\nlooks framed"],
    ],
)
def test_pack_unpack_round_trip(buffers):
    assert unpack(pack(buffers)) == buffers


def test_lengths_count_characters_not_bytes():
    # The same framing as the Rust side (protocol/src/payload.rs).
    assert pack(["ééé", "x"]) == "3\nééé1\nx"
    assert pack(["00\nabc", '11\n{"a": "é\\n"}', ""]) == '6\n00\nabc15\n11\n{"a": "é\\n"}0\n'


@pytest.mark.parametrize(
    ("packed", "message"),
    [
        ("abc", "malformed buffer framing at offset 0"),
        ("x\nabc", "malformed buffer framing at offset 0"),
        ("-1\nabc", "malformed buffer framing at offset 0"),
        ("3\nab", "truncated buffer at offset 0: 3 characters announced, 2 left"),
        ("1\na5\nab", "truncated buffer at offset 3"),
        ("1\naz", "malformed buffer framing at offset 3"),
    ],
)
def test_malformed_framing_names_the_offset(packed, message):
    with pytest.raises(ValueError, match=message):
        unpack(packed)


# -- data strategies ------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        1.5,
        "é€",
        b"\x00\xff",
        (1, [2, {"k": {3}}]),
        ShellResult(0, "o", "e", "c"),
    ],
)
def test_pickle_round_trip(value):
    buf = serialize(value)
    assert buf.startswith("00\n")
    assert deserialize(buf) == value


def test_pickle_is_protocol_4_base64():
    body = serialize({"a": 1})[3:]
    assert base64.b64decode(body)[:2] == b"\x80\x04"


def test_pickle_with_line_wrapped_base64_as_globus_compute_writes_it():
    # Globus Compute encodes with codecs' base64, which wraps lines every 76 characters.
    data = pickle.dumps(list(range(100)))
    wrapped = base64.encodebytes(data).decode()
    assert "\n" in wrapped
    assert deserialize("00\n" + wrapped) == list(range(100))
    assert deserialize("01\n" + wrapped) == list(range(100))


def test_unpicklable_without_dill_or_cloudpickle_raises(monkeypatch):
    monkeypatch.setattr(codec, "_by_value_dumps", lambda: None)
    with pytest.raises(TypeError):
        serialize(threading.Lock())


def test_json_round_trip():
    buf = serialize_json({"a": [1, "é"], "b": None})
    assert buf == '11\n{"a": [1, "\\u00e9"], "b": null}'
    assert deserialize(buf) == {"a": [1, "é"], "b": None}


def test_shell_result():
    buf = 'sr\n{"returncode": 3, "stdout": "o\\n", "stderr": "", "cmd": "false"}'
    assert deserialize(buf) == ShellResult(3, "o\n", "", "false")


def test_unknown_strategy():
    with pytest.raises(ValueError, match=r"unknown serialization strategy 'zz\\n'"):
        deserialize("zz\nwhatever")


# -- functions ------------------------------------------------------------------


def test_module_level_function_is_sent_as_source():
    buf = serialize_function(add)
    assert buf.startswith("st\nadd:def add(a, b=10):\n")
    fn = deserialize(buf)
    assert fn(1) == 11
    assert fn.__module__ == "__main__"


def test_decorators_are_stripped_from_the_source():
    buf = serialize_function(decorated_twice)
    assert buf.startswith("st\ndecorated_twice:def decorated_twice(x):")
    assert "@" not in buf
    assert deserialize(buf)(2) == 6


def test_wrapping_decorator_is_not_dropped():
    if by_value_library() is None:
        with pytest.raises(TypeError):
            serialize_function(labelled_add)
    else:
        buf = serialize_function(labelled_add)
        assert buf.startswith("01\n")
        assert deserialize(buf)(1) == ("labelled", 11)


@pytest.mark.parametrize("source_strategy", ["st\n", "sd\n"])
def test_globus_compute_source_encodings(source_strategy):
    source = "def triple(x):\n    return 3 * x\n"
    plain = f"triple:{source}"
    encoded = base64.b64encode(plain.encode()).decode()
    for body in (plain, encoded):
        assert deserialize(source_strategy + body)(2) == 6


def test_source_function_traceback_shows_its_lines():
    fn = deserialize("st\nboom:def boom():\n    raise ValueError('no')\n")
    with pytest.raises(ValueError) as info:
        fn()
    text = "".join(traceback.format_exception(info.type, info.value, info.tb))
    assert 'File "<hpfaas function boom>", line 2, in boom' in text
    assert "raise ValueError('no')" in text


def test_lambda_needs_dill_or_cloudpickle(capsys):
    square = lambda x: x * x  # noqa: E731
    library = by_value_library()
    if library is None:
        with capsys.disabled():
            print("\nneither cloudpickle nor dill is installed: lambda round trip not checked")
        pytest.skip("neither cloudpickle nor dill is installed")
    buf = serialize_function(square)
    assert buf.startswith("01\n")
    assert deserialize(buf)(7) == 49


def test_closure_without_dill_or_cloudpickle_is_a_clear_type_error(monkeypatch):
    factor = 3

    def scaled(x):
        return factor * x

    monkeypatch.setattr(codec, "_by_value_dumps", lambda: None)
    with pytest.raises(TypeError, match="define it at module level.*cloudpickle"):
        serialize_function(scaled)


def test_shell_function():
    buf = serialize_function(ShellFunction("echo {msg}", walltime=2.5, snippet_lines=7))
    assert buf == 'sh\n{"cmd": "echo {msg}", "walltime": 2.5, "snippet_lines": 7}'
    fn = deserialize(buf)
    assert (fn.cmd, fn.walltime, fn.snippet_lines) == ("echo {msg}", 2.5, 7)


def test_shell_function_quoting_is_kept_by_the_definition():
    raw = deserialize(serialize_function(ShellFunction("echo {msg}", quote_arguments=False)))
    assert raw.quote_arguments is False
    assert deserialize(serialize_function(ShellFunction("echo {msg}"))).quote_arguments is True


def test_shell_arguments_are_quoted_locally_too(tmp_path):
    marker = tmp_path / "pwned"
    attack = f"x; touch {marker}"
    result = ShellFunction("printf %s {msg}")(msg=attack)
    assert (result.returncode, result.stdout) == (0, attack)
    assert not marker.exists()
    assert ShellFunction("echo {msg}", quote_arguments=False).render(msg="a; b") == "echo a; b"


def test_shell_result_reads_dropped_counts():
    doc = {"returncode": 0, "stdout": "y\n", "stderr": "", "cmd": "yes", "stdout_dropped": 99}
    result = deserialize("sr\n" + json.dumps(doc))
    assert (result.stdout_dropped, result.stderr_dropped) == (99, 0)


def test_not_callable():
    with pytest.raises(TypeError, match="not callable"):
        serialize_function(42)

"""The function bodies every benchmark runs, shared by hpfaas and Parsl's HTEX.

hpfaas ships a function as its source text and Parsl by reference to this
module, so each function stays at module level and imports what it needs
inside its body. The Parsl workers import this module: `benches/` must be on
their PYTHONPATH (benches/compare.py sets it).
"""


def ident(x):
    """Returns its argument: the no-op task."""
    return x


def sleep_10ms(x):
    """Sleeps 10 ms, then returns its argument."""
    import time

    time.sleep(0.01)
    return x


def length(data):
    """The length of its argument (a 1 MiB `bytes` in the payload workload)."""
    return len(data)


def true_cmd():
    """The command line `true`, for Parsl's `bash_app` (hpfaas runs `ShellFunction("true")`)."""
    return "true"


def inc(x):
    """Its argument plus one: each link of the chain workload."""
    return x + 1


def count_args(*xs):
    """How many arguments it got (the fan-in workload's last task: the
    results of every parent)."""
    return len(xs)

"""The soak benchmark's arithmetic (benches/soak.py): rows per whole
minute, the throughput summary and the purge figures read from the log."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benches"))

import soak  # noqa: E402


def samples(times, rate=1000):
    return [{"t": t, "tasks": int(t * rate)} for t in times]


def test_a_trailing_part_minute_gets_no_row():
    rows = soak.minutes(samples(range(5, 606, 5)))
    assert [m for m, _, _ in rows] == list(range(1, 11))
    assert all(abs(rate - 1000) < 1e-6 for _, _, rate in rows)


def test_the_rate_uses_the_samples_real_times():
    # The last sample of minute 2 is at 100 s, not 120 s.
    points = [{"t": 60, "tasks": 60_000}, {"t": 100, "tasks": 100_000},
              {"t": 180, "tasks": 180_000}]
    rates = [rate for _, _, rate in soak.minutes(points)]
    assert rates == [1000, 1000, 1000]


def test_the_throughput_line_compares_the_last_minute_with_the_first():
    rows = [(1, {}, 4000.0), (2, {}, 2000.0), (3, {}, 3000.0)]
    line = soak.throughput_line(rows)
    assert "minute 1 4,000, minute 3 3,000 (75 % of minute 1)" in line
    assert "lowest 2,000 (minute 2)" in line
    assert "+1,000 tasks/s per minute" in line


def test_purges_are_read_from_the_log(tmp_path):
    log = tmp_path / "up.log"
    line = ("2026-12-08T03:00:00Z  INFO hpfaas_registry::purge: purged expired results and"
            " old records expired=0 tasks={n} fetched={n} keys=0 groups=0 payload_files=0"
            " pages=0{extra}\n")
    log.write_text(line.format(n=1000, extra=" writer_seconds=0.5")
                   + line.format(n=500, extra=" writer_seconds=0.25")
                   + "some other line that purged tasks=7\n")
    assert soak.purges(log) == {"log_lines": 2, "tasks": 1500, "writer_seconds": 0.75}
    log.write_text(line.format(n=1000, extra=""))
    assert soak.purges(log)["writer_seconds"] is None, "no writer time is invented"

"""Unit tests of bench/report.py's fixed-rate table and its relay floor (run by scripts/test.sh:
python3 -m unittest discover bench)."""

import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "report.py")


def oha(p50_ms, p99_ms, n=6000):
    """An oha JSON summary (the fields report.py reads) of a fixed-rate run."""
    return {"summary": {"requestsPerSec": n / 6, "successRate": 1.0},
            "latencyPercentiles": {"p50": p50_ms / 1e3, "p99": p99_ms / 1e3},
            "statusCodeDistribution": {"200": n}, "errorDistribution": {}}


def report(rates, cpu_lines=()):
    """report.py's output for one round holding `rate-NAME.json` for each NAME in `rates`."""
    with tempfile.TemporaryDirectory() as d:
        r = os.path.join(d, "round1")
        os.mkdir(r)
        for name, (p50, p99) in rates.items():
            with open(os.path.join(r, f"rate-{name}.json"), "w", encoding="utf-8") as f:
                json.dump(oha(p50, p99), f)
        with open(os.path.join(r, "cpu.txt"), "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in cpu_lines)
        out = subprocess.run([sys.executable, SCRIPT, d], capture_output=True, text=True, check=True)
        return out.stdout


def row(out, first_cell, section="###"):
    """The cells of the one row starting with `first_cell` in the first table after `section`."""
    out = out[out.index(section):]
    rows = [l for l in out.splitlines() if l.startswith(f"| {first_cell} |")]
    if len(rows) != 1:
        raise AssertionError(f"{len(rows)} rows start with {first_cell!r} in:\n{out}")
    return [c.strip() for c in rows[0].strip("|").split("|")]


class RelayFloor(unittest.TestCase):
    def test_the_relay_floor_is_a_row_of_the_added_latency_table(self):
        out = report({"direct": (0.080, 0.400), "warden": (0.250, 1.700), "relay": (0.200, 0.900)})
        relay = row(out, "relay floor (2 plaintext TCP relays)")
        self.assertEqual(relay[1:5], ["200 µs", "900 µs", "120 µs", "500 µs"])
        self.assertEqual(row(out, "warden", "### Added latency")[3], "170 µs")

    def test_the_added_latency_aim_names_the_floor_beside_the_pair(self):
        out = report({"direct": (0.080, 0.400), "warden": (0.250, 1.700), "relay": (0.200, 0.900)})
        aim = row(out, "< 100 µs added p50 at a fixed 1,000 req/s (pair vs direct)")
        self.assertEqual(aim[1:], ["170 µs (relay floor 120 µs)", "missed"])

    def test_a_run_without_the_floor_says_so_and_judges_the_aim_alone(self):
        out = report({"direct": (0.080, 0.400), "warden": (0.150, 1.700)})
        self.assertEqual(row(out, "relay floor (2 plaintext TCP relays)")[1], "not measured")
        aim = row(out, "< 100 µs added p50 at a fixed 1,000 req/s (pair vs direct)")
        self.assertEqual(aim[1:], ["70 µs", "met"])

    def test_cpu_per_request_of_the_relays(self):
        # 6,000 requests; 60 ticks at 100 Hz = 0.6 s: 100 µs per request.
        out = report({"direct": (0.080, 0.400), "haproxy": (0.3, 1.0), "relay": (0.2, 0.9)},
                     ["direct 12 100", "haproxy 120 100", "relay 60 100"])
        self.assertEqual(row(out, "relay floor (two plaintext TCP relays)")[1:3], ["100", "0.50×"])


if __name__ == "__main__":
    unittest.main()

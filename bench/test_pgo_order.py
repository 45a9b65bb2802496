"""Unit tests of bench/pgo_order.py (run by scripts/test.sh: python3 -m unittest discover bench)."""

import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "pgo_order.py")

# The shape of `llvm-profdata show --all-functions --counts` (LLVM 22, IR instrumentation).
SIDECARS = """Counters:
  warden.10ded76c1865902e-cgu.0;_ZN4h2x5warm17h01E:
    Hash: 0x0a4d0ad3efffffff
    Counters: 3
    Block counts: [0, 7, 2]
  _ZN4h2x3hot17h02E:
    Hash: 0x012fddfb883b29cd
    Counters: 2
    Block counts: [900, 12]
  _ZN4cold5never17h03E:
    Hash: 0x012fddfb883b29ce
    Counters: 1
    Block counts: [0]
Instrumentation level: IR  entry_first = 0  instrument_loop_entries = 0
Functions shown: 3
Total functions: 3
Maximum function count: 900
Maximum internal block count: 12
"""

EVERYONE = SIDECARS.replace(
    "Instrumentation level",
    """  _ZN2ca5serve17h04E:
    Hash: 0x1
    Counters: 1
    Block counts: [40]
  _ZN3cli4init17h05E:
    Hash: 0x2
    Counters: 1
    Block counts: [3]
Instrumentation level""",
)


def run(*texts):
    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, text in enumerate(texts):
            p = os.path.join(d, f"{i}.show")
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
            paths.append(p)
        return subprocess.run([sys.executable, SCRIPT, *paths], capture_output=True, text=True)


class PgoOrder(unittest.TestCase):
    def test_sidecar_functions_come_first_hottest_first_then_the_other_processes(self):
        r = run(SIDECARS, EVERYONE)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(
            r.stdout.split(),
            ["_ZN4h2x3hot17h02E", "_ZN4h2x5warm17h01E", "_ZN2ca5serve17h04E", "_ZN3cli4init17h05E"],
        )
        self.assertIn("2 functions the sidecars ran, then 2 others", r.stderr)

    def test_a_function_that_never_ran_is_left_to_the_compiler(self):
        r = run(SIDECARS, EVERYONE)
        self.assertNotIn("_ZN4cold5never17h03E", r.stdout)

    def test_a_local_functions_unit_prefix_is_dropped(self):
        r = run(SIDECARS, EVERYONE)
        self.assertNotIn(";", r.stdout)
        self.assertNotIn("cgu", r.stdout)

    def test_input_that_is_not_a_counts_listing_is_refused_by_name(self):
        r = run("Instrumentation level: IR\nTotal functions: 0\n", EVERYONE)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("0.show: no function with a count above zero", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_wrong_argument_count_is_refused_with_usage(self):
        r = run(SIDECARS)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("usage: pgo_order.py", r.stderr)

    def test_a_missing_file_is_named(self):
        r = subprocess.run(
            [sys.executable, SCRIPT, "/nonexistent/s.show", "/nonexistent/a.show"], capture_output=True, text=True
        )
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("/nonexistent/s.show", r.stderr)
        self.assertNotIn("Traceback", r.stderr)


if __name__ == "__main__":
    unittest.main()

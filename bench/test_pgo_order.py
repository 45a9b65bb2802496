"""Unit tests of bench/pgo_order.py (run by scripts/test.sh: python3 -m unittest discover bench)."""

import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "pgo_order.py")


def show(*functions):
    """The shape of `llvm-profdata show --all-functions --counts` (LLVM 22, IR instrumentation)
    for (profile name, block counts) pairs."""
    out = ["Counters:"]
    for i, (name, counts) in enumerate(functions):
        out += [f"  {name}:", f"    Hash: 0x{i:016x}", f"    Counters: {len(counts)}",
                f"    Block counts: [{', '.join(str(c) for c in counts)}]"]
    out += ["Instrumentation level: IR  entry_first = 0  instrument_loop_entries = 0",
            f"Functions shown: {len(functions)}", f"Total functions: {len(functions)}"]
    return "\n".join(out) + "\n"


# A local function's profile name carries its unit before a `;`.
WARM = ("warden.10ded76c1865902e-cgu.0;_ZN4h2x5warm17h01E", [0, 7, 2])
HOT = ("_ZN4h2x3hot17h02E", [900, 12])
NEVER = ("_ZN4cold5never17h03E", [0])
EVAL = ("_ZN5cedar4eval17h06E", [50])
INBOUND = show(WARM, HOT, EVAL, NEVER)
OUTBOUND = show((WARM[0], [0, 1, 0]), ("_ZN8outbound7connect17h07E", [5]), NEVER)
EVERYONE = show(WARM, HOT, EVAL, NEVER, ("_ZN2ca5serve17h04E", [40]), ("_ZN3cli4init17h05E", [3]))


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
    def test_shared_then_inbound_then_outbound_then_other_processes_each_hottest_first(self):
        r = run(INBOUND, OUTBOUND, EVERYONE)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(
            r.stdout.split(),
            [
                "_ZN4h2x5warm17h01E",  # both sidecars
                "_ZN4h2x3hot17h02E",  # the inbound alone, hottest first
                "_ZN5cedar4eval17h06E",
                "_ZN8outbound7connect17h07E",  # the outbound alone
                "_ZN2ca5serve17h04E",  # other processes, hottest first
                "_ZN3cli4init17h05E",
            ],
        )
        self.assertIn("1 functions both sidecars ran, 2 only the inbound, 1 only the outbound, then 2 others",
                      r.stderr)

    def test_a_function_that_never_ran_is_left_to_the_compiler(self):
        r = run(INBOUND, OUTBOUND, EVERYONE)
        self.assertNotIn("_ZN4cold5never17h03E", r.stdout)

    def test_a_local_functions_unit_prefix_is_dropped(self):
        r = run(INBOUND, OUTBOUND, EVERYONE)
        self.assertNotIn(";", r.stdout)
        self.assertNotIn("cgu", r.stdout)

    def test_input_that_is_not_a_counts_listing_is_refused_by_name(self):
        r = run(INBOUND, "Instrumentation level: IR\nTotal functions: 0\n", EVERYONE)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("1.show: no function with a count above zero", r.stderr)
        self.assertEqual(r.stdout, "")

    def test_wrong_argument_count_is_refused_with_usage(self):
        r = run(INBOUND, EVERYONE)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("usage: pgo_order.py", r.stderr)

    def test_a_missing_file_is_named(self):
        r = subprocess.run(
            [sys.executable, SCRIPT, "/nonexistent/i.show", "/nonexistent/o.show", "/nonexistent/a.show"],
            capture_output=True,
            text=True,
        )
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("/nonexistent/i.show", r.stderr)
        self.assertNotIn("Traceback", r.stderr)


if __name__ == "__main__":
    unittest.main()
